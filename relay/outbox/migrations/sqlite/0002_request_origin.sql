-- Where a webhook came from: its request id (sent on to Roark) and the properties
-- its URL asked for (relay.sources), as a JSON object.
ALTER TABLE deliveries ADD COLUMN request_id TEXT;
ALTER TABLE deliveries ADD COLUMN properties TEXT;
