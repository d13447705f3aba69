-- How a webhook reached the outbox: "webhook" (the provider sent it) or
-- "reconciliation" (the relay found the ended call in the provider's API instead).
ALTER TABLE deliveries ADD COLUMN origin TEXT NOT NULL DEFAULT 'webhook';
