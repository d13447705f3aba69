"""What every other part of the relay builds on, and which imports none of them: the error
hierarchy, how a setting is declared, the JSON policy, logging, metrics, redaction, time
formats, the HTTP transport for talking to others, and process tuning."""
