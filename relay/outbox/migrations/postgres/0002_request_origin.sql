-- Where a webhook came from: its request id (sent on to Roark) and the properties
-- its URL asked for (relay.sources), as JSON text (the same as in SQLite).
ALTER TABLE deliveries ADD COLUMN request_id TEXT, ADD COLUMN properties TEXT;
