-- Since the relay deletes what it publishes, every outbox row is pending: the published_at column
-- is always NULL and the partial index on pending rows repeats the primary key (one more write
-- per event). The relay claims by the primary key.
DROP INDEX outbox_pending;
ALTER TABLE outbox DROP COLUMN published_at;
