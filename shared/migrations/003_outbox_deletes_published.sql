-- The relay deletes what it has published (Kafka keeps it), so nothing is published here any more.
DELETE FROM outbox WHERE published_at IS NOT NULL;
DROP INDEX outbox_published;
