"""The web process: uvicorn bounded against hostile clients (server, protocol), the app
and the services it hands its endpoints (app), the webhook endpoint (ingest), messages
passed through to the team's server (passthrough), and /health and /metrics (health)."""
