-- The status page's traffic charts count events in a window of time (relay/outbox/traffic.py):
-- deliveries by when they were delivered (with when they came, for the latency), attempts by
-- when they started. These indexes let each count read the window alone, however much older
-- history the outbox keeps. Deliveries by when they came use deliveries_state_received.
CREATE INDEX deliveries_delivered ON deliveries (delivered_at, received_at);
CREATE INDEX delivery_attempts_started ON delivery_attempts (started_at, outcome);
