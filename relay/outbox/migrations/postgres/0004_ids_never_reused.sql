-- A delivery id names one webhook for good: operators replay by id, logs and the admin
-- API's cursor refer to it. The identity column draws from a sequence, which never
-- hands out a value twice unless it may cycle; NO CYCLE is the default, stated here so
-- the schema itself carries the guarantee SQLite's 0004 gives its table.
ALTER TABLE deliveries ALTER COLUMN id SET NO CYCLE;
