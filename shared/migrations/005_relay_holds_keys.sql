-- Rows that failed to publish (attempts > 0) hold back the later rows of their key: the relay
-- looks them up through this small index on every claim.
CREATE INDEX outbox_troubled ON outbox (topic, key, id) WHERE attempts > 0;

-- What a person discarded from the outbox (an event no broker would take), kept for the record.
CREATE TABLE outbox_discarded (
    id           bigint PRIMARY KEY,
    event_id     uuid NOT NULL,
    tenant_id    text NOT NULL,
    event_type   text NOT NULL,
    topic        text NOT NULL,
    key          text NOT NULL,
    envelope     json NOT NULL,
    created_at   timestamptz NOT NULL,
    attempts     int NOT NULL,
    last_error   text,
    discarded_at timestamptz NOT NULL DEFAULT now(),
    discarded_by text NOT NULL,
    reason       text NOT NULL
);

-- The inbox is pruned by age; rows arrive in time order, so a BRIN index finds old ones for
-- almost nothing on insert.
CREATE INDEX inbox_processed_at ON inbox USING brin (processed_at);
