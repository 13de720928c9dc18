-- The dunning engine: versioned policies, one case per customer and currency holding the
-- customer's open invoices (items), a timer per item step, consolidated notices and charges.

CREATE TABLE policies (
    tenant_id      text NOT NULL,  -- '*': shipped as a file, for every tenant without its own
    name           text NOT NULL,
    version        int NOT NULL CHECK (version > 0),
    segment        text NOT NULL,
    customer_group text,
    document       jsonb NOT NULL,  -- the validated policy
    source         text NOT NULL,   -- the YAML as it was given
    status         text NOT NULL CHECK (status IN ('draft', 'active', 'retired')),
    created_at     timestamptz NOT NULL,
    created_by     text NOT NULL,
    activated_at   timestamptz,
    PRIMARY KEY (tenant_id, name, version)
);
-- One active version per name, and one active policy per (segment, group) slot of a tenant.
CREATE UNIQUE INDEX policies_active_name ON policies (tenant_id, name) WHERE status = 'active';
CREATE UNIQUE INDEX policies_active_slot ON policies (tenant_id, segment, coalesce(customer_group, ''))
    WHERE status = 'active';

ALTER TABLE dunning_customers ADD COLUMN customer_group text;
ALTER TABLE dunning_customers ADD COLUMN do_not_chase_reason text;
ALTER TABLE dunning_customers ADD COLUMN do_not_chase_by text;
ALTER TABLE dunning_customers ADD COLUMN do_not_chase_at timestamptz;

ALTER TABLE cases RENAME TO legacy_invoice_cases;
ALTER TABLE case_steps RENAME TO legacy_invoice_case_steps;
DROP TRIGGER case_steps_inserted ON legacy_invoice_case_steps;
ALTER INDEX cases_by_customer RENAME TO legacy_invoice_cases_by_customer;
ALTER INDEX case_steps_due RENAME TO legacy_invoice_case_steps_due;

CREATE TABLE cases (
    tenant_id     text NOT NULL,
    case_id       uuid NOT NULL,
    customer_id   text NOT NULL,
    currency      char(3) NOT NULL,
    status        text NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'closed', 'legal')),
    closed_reason text,
    opened_at     timestamptz NOT NULL,
    closed_at     timestamptz,
    -- the timer the claim loop reads: the earliest due step of an item that is not paused
    next_due_at   timestamptz,
    notices       int NOT NULL DEFAULT 0,  -- notices sent: numbers each one's idempotency key
    PRIMARY KEY (tenant_id, case_id)
);
CREATE UNIQUE INDEX cases_one_open ON cases (tenant_id, customer_id, currency) WHERE status = 'open';
CREATE INDEX cases_due ON cases (next_due_at) WHERE status = 'open';
CREATE INDEX cases_by_customer ON cases (tenant_id, customer_id);

CREATE TABLE case_items (
    tenant_id      text NOT NULL,
    invoice_id     uuid NOT NULL,
    case_id        uuid NOT NULL,
    customer_id    text NOT NULL,
    number         text NOT NULL,
    currency       char(3) NOT NULL,
    amount_minor   bigint NOT NULL,
    open_minor     bigint NOT NULL CHECK (open_minor >= 0),
    due_date       date NOT NULL,
    policy_tenant  text NOT NULL,
    policy_name    text NOT NULL,
    policy_version int NOT NULL,
    round          int NOT NULL DEFAULT 0,  -- a re-opened invoice is dunned again in a new round
    status         text NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'settled', 'cancelled')),
    closed_reason  text,
    overdue_since  timestamptz,
    joined_at      timestamptz NOT NULL,
    closed_at      timestamptz,
    hold_reason    text,
    hold_by        text,
    hold_at        timestamptz,
    PRIMARY KEY (tenant_id, invoice_id),
    FOREIGN KEY (tenant_id, case_id) REFERENCES cases (tenant_id, case_id)
);
CREATE INDEX case_items_by_case ON case_items (tenant_id, case_id);
CREATE INDEX case_items_by_customer ON case_items (tenant_id, customer_id) WHERE status = 'open';

-- Durable timers: one row per item, round and policy step; claimed through the case row.
CREATE TABLE item_steps (
    tenant_id   text NOT NULL,
    invoice_id  uuid NOT NULL,
    round       int NOT NULL,
    step        text NOT NULL,
    position    int NOT NULL,
    channel     text NOT NULL,
    template    text,
    offset_days int NOT NULL,
    due_at      timestamptz NOT NULL,
    status      text NOT NULL CHECK (status IN ('scheduled', 'executed', 'skipped', 'cancelled')),
    reason      text,  -- why skipped or cancelled (stale, below_minimum, settled, replanned)
    executed_at timestamptz,
    notice_id   uuid,
    PRIMARY KEY (tenant_id, invoice_id, round, step)
);
CREATE INDEX item_steps_scheduled ON item_steps (tenant_id, invoice_id, due_at) WHERE status = 'scheduled';

CREATE TABLE notices (
    tenant_id        text NOT NULL,
    notice_id        uuid NOT NULL,
    case_id          uuid NOT NULL,
    customer_id      text NOT NULL,
    sequence         int NOT NULL,
    step             text NOT NULL,
    channel          text NOT NULL,
    template         text,
    notification_key text NOT NULL,
    currency         char(3) NOT NULL,
    items            jsonb NOT NULL,
    total_minor      bigint NOT NULL,
    created_at       timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, notice_id),
    UNIQUE (tenant_id, notification_key)
);
CREATE INDEX notices_by_case ON notices (tenant_id, case_id, sequence);

-- Fees, compensation and interest: each charge once, by its key, whatever is retried.
CREATE TABLE charges (
    tenant_id    text NOT NULL,
    charge_id    text NOT NULL,
    kind         text NOT NULL CHECK (kind IN ('fee', 'compensation', 'interest')),
    case_id      uuid NOT NULL,
    invoice_id   uuid NOT NULL,
    customer_id  text NOT NULL,
    currency     char(3) NOT NULL,
    amount_minor bigint NOT NULL CHECK (amount_minor > 0),
    period_start date,
    period_end   date,  -- interest: the days [start, end) it covers
    detail       jsonb NOT NULL DEFAULT '{}',
    assessed_at  timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, charge_id)
);
CREATE INDEX charges_by_invoice ON charges (tenant_id, invoice_id);

-- New timers may be due at once (an invoice opened late, a re-opened one): wake the claim loop.
CREATE TRIGGER item_steps_inserted AFTER INSERT ON item_steps
    FOR EACH STATEMENT EXECUTE FUNCTION dunning_steps_notify();

-- The open per-invoice cases move into per-customer cases, their steps into item timers; the
-- old rows stay in the legacy tables for reference.
INSERT INTO cases (tenant_id, case_id, customer_id, currency, opened_at)
SELECT tenant_id, md5(tenant_id || '|' || customer_id || '|' || currency)::uuid, customer_id, currency, min(opened_at)
FROM legacy_invoice_cases WHERE status = 'open' GROUP BY tenant_id, customer_id, currency;

INSERT INTO case_items (tenant_id, invoice_id, case_id, customer_id, number, currency, amount_minor, open_minor,
                        due_date, policy_tenant, policy_name, policy_version, round, overdue_since, joined_at)
SELECT tenant_id, invoice_id, md5(tenant_id || '|' || customer_id || '|' || currency)::uuid, customer_id, number,
       currency, amount_minor, open_minor, due_date, '*', policy, 1, round, overdue_since, opened_at
FROM legacy_invoice_cases WHERE status = 'open';

INSERT INTO item_steps (tenant_id, invoice_id, round, step, position, channel, template, offset_days, due_at, status,
                        executed_at)
SELECT s.tenant_id, c.invoice_id, s.round,
       CASE WHEN s.channel = 'sms' AND s.step NOT IN ('pre_due_sms', 'overdue_3') THEN s.step || '_sms' ELSE s.step END,
       row_number() OVER (PARTITION BY s.tenant_id, s.case_id, s.round ORDER BY s.offset_days, s.channel) - 1,
       s.channel, s.template, s.offset_days, s.due_at, s.status, s.executed_at
FROM legacy_invoice_case_steps s JOIN legacy_invoice_cases c USING (tenant_id, case_id)
WHERE c.status = 'open' AND s.round = c.round;

UPDATE cases c SET next_due_at = (
    SELECT min(s.due_at) FROM case_items i JOIN item_steps s USING (tenant_id, invoice_id)
    WHERE i.tenant_id = c.tenant_id AND i.case_id = c.case_id AND s.status = 'scheduled');
