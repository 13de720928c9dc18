-- Early warnings (services/risk/domain/warnings.py). What every decision rests on is here, so a
-- lost or reset faust table (the stream's live view, a cache) changes no warning.

-- Every fact a signal looks at, one row per (event, kind), in the order they were recorded:
-- `seq` orders a customer's facts the way its events were consumed, so a decision sees exactly
-- what was recorded before its event, however the events were batched.
CREATE TABLE risk_signal_observations (
    seq          bigint GENERATED ALWAYS AS IDENTITY,
    tenant_id    text NOT NULL,
    customer_id  text NOT NULL,
    kind         text NOT NULL CHECK (kind IN ('invoiced', 'payment', 'paid_late', 'reversal', 'broken_promise',
                                               'bounce')),
    event_id     uuid NOT NULL,
    at           timestamptz NOT NULL,      -- event time (the envelope's time)
    ref          text NOT NULL,             -- the invoice, payment, promise or notification
    currency     text,
    amount_minor bigint NOT NULL DEFAULT 0,
    days_late    int NOT NULL DEFAULT 0,
    detail       text NOT NULL DEFAULT '',  -- a bounce's code
    PRIMARY KEY (tenant_id, event_id, kind)
);
CREATE INDEX risk_signal_observations_lookup ON risk_signal_observations (tenant_id, customer_id, kind, at);

-- Each warning raised, once per customer, signal, scope and window: EarlyWarningRaised goes to the
-- outbox only when this row was inserted. `scope` tells apart the warnings of one signal and
-- window: the currency (exposure) or the broken promise (orders after it); '' otherwise.
CREATE TABLE risk_early_warnings (
    tenant_id      text NOT NULL,
    customer_id    text NOT NULL,
    signal         text NOT NULL,
    scope          text NOT NULL DEFAULT '',
    window_start   timestamptz NOT NULL,
    window_end     timestamptz NOT NULL,
    warning_id     uuid NOT NULL,
    event_id       uuid NOT NULL,           -- the EarlyWarningRaised event's id (derived from its cause)
    cause_event_id uuid NOT NULL,           -- the event that completed the signal
    group_id       text,                    -- the dealer group (parent customer) it rolls up to
    evidence       jsonb NOT NULL,
    explanation    text NOT NULL,
    raised_at      timestamptz NOT NULL,    -- the cause's event time
    stream_view    jsonb,                   -- what the faust windowed tables showed then: diagnostics, never decided on
    recorded_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, customer_id, signal, scope, window_start),
    UNIQUE (tenant_id, warning_id)
);
CREATE INDEX risk_early_warnings_by_customer ON risk_early_warnings (tenant_id, customer_id, raised_at DESC);
CREATE INDEX risk_early_warnings_by_group ON risk_early_warnings (tenant_id, group_id, raised_at DESC)
    WHERE group_id IS NOT NULL;
