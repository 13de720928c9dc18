-- A customer's events come on three topics (invoicing, dunning, notifier). To fold them in the
-- same order on every run, a rebuild from the topics included, risk first stages each event here
-- and folds it only once no partition can still deliver an event that sorts before it
-- (services/risk/service_layer/handlers.py, "event order").

-- Each source partition: the latest event time staged from it (event times within a partition
-- can go back, a back-dated payment, so an event sorts at its partition's running maximum), the
-- next offset to stage, and the log end the consumer last saw (NULL: not fetched yet).
CREATE TABLE risk_stream_partitions (
    topic       text NOT NULL,
    partition   int NOT NULL,
    max_time    timestamptz NOT NULL DEFAULT '-infinity',
    next_offset bigint NOT NULL DEFAULT 0,
    highwater   bigint,
    PRIMARY KEY (topic, partition)
);

-- Events staged and not folded yet, in their fold order (sort_time, topic, partition, offset).
CREATE TABLE risk_pending_events (
    topic       text NOT NULL,
    partition   int NOT NULL,
    "offset"    bigint NOT NULL,
    tenant_id   text NOT NULL,
    customer_id text NOT NULL,
    event_time  timestamptz NOT NULL,
    sort_time   timestamptz,               -- set when the batch that staged it ends
    envelope    text NOT NULL,             -- the record's value, as consumed
    failed      text,                      -- why folding it failed: it holds back only its customer
    PRIMARY KEY (topic, partition, "offset")
);
CREATE INDEX risk_pending_events_order ON risk_pending_events (sort_time, topic, partition, "offset");
CREATE INDEX risk_pending_events_customer ON risk_pending_events (tenant_id, customer_id);
