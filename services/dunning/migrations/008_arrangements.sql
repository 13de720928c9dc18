-- What customers agree with collectors: promises to pay and payment plans; disputes with reason
-- codes and outcomes. Each pauses the invoices it covers (see adapters/cases.PAUSED_UNTIL).

CREATE TABLE promises (
    tenant_id     text NOT NULL,
    promise_id    uuid NOT NULL,
    customer_id   text NOT NULL,
    case_id       uuid NOT NULL,
    currency      char(3) NOT NULL,
    invoice_ids   uuid[] NOT NULL,
    amount_minor  bigint NOT NULL CHECK (amount_minor > 0),
    promised_date date NOT NULL,
    grace_days    int NOT NULL CHECK (grace_days >= 0),
    deadline      timestamptz NOT NULL,  -- the end of the promised day plus grace, customer's time
    channel       text NOT NULL,
    taken_by      text NOT NULL,
    note          text,
    status        text NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'kept', 'broken', 'cancelled')),
    paid_minor    bigint NOT NULL DEFAULT 0,
    created_at    timestamptz NOT NULL,
    resolved_at   timestamptz,
    PRIMARY KEY (tenant_id, promise_id)
);
CREATE INDEX promises_open ON promises (tenant_id, customer_id) WHERE status = 'open';
CREATE INDEX promises_deadline ON promises (deadline) WHERE status = 'open';

CREATE TABLE payment_plans (
    tenant_id       text NOT NULL,
    plan_id         uuid NOT NULL,
    customer_id     text NOT NULL,
    case_id         uuid NOT NULL,
    currency        char(3) NOT NULL,
    invoice_ids     uuid[] NOT NULL,
    total_minor     bigint NOT NULL CHECK (total_minor > 0),
    grace_days      int NOT NULL CHECK (grace_days >= 0),
    status          text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'completed', 'broken', 'cancelled')),
    paid_minor      bigint NOT NULL DEFAULT 0,
    missed_sequence int,
    next_check_at   timestamptz,  -- the deadline of the next instalment not yet covered
    agreed_by       text NOT NULL,
    created_at      timestamptz NOT NULL,
    resolved_at     timestamptz,
    PRIMARY KEY (tenant_id, plan_id)
);
CREATE INDEX payment_plans_active ON payment_plans (tenant_id, customer_id) WHERE status = 'active';
CREATE INDEX payment_plans_check ON payment_plans (next_check_at) WHERE status = 'active';

CREATE TABLE plan_instalments (
    tenant_id    text NOT NULL,
    plan_id      uuid NOT NULL,
    sequence     int NOT NULL,
    due_date     date NOT NULL,
    amount_minor bigint NOT NULL CHECK (amount_minor > 0),
    remind_at    timestamptz NOT NULL,
    reminded_at  timestamptz,
    PRIMARY KEY (tenant_id, plan_id, sequence),
    FOREIGN KEY (tenant_id, plan_id) REFERENCES payment_plans (tenant_id, plan_id)
);
CREATE INDEX plan_instalments_remind ON plan_instalments (remind_at) WHERE reminded_at IS NULL;

ALTER TABLE disputes ADD COLUMN reason_code text NOT NULL DEFAULT 'other'
    CHECK (reason_code IN ('price', 'quantity', 'quality', 'not_received', 'duplicate', 'already_paid', 'other'));
ALTER TABLE disputes ADD COLUMN currency char(3);
ALTER TABLE disputes ADD COLUMN disputed_minor bigint;
ALTER TABLE disputes ADD COLUMN opened_by text;
ALTER TABLE disputes ADD COLUMN outcome text CHECK (outcome IN ('accepted', 'rejected'));
ALTER TABLE disputes ADD COLUMN credit_minor bigint;
ALTER TABLE disputes ADD COLUMN alerted_at timestamptz;
-- accepted: the invoice stays paused until invoicing's credit note for it arrives
ALTER TABLE disputes ADD COLUMN credit_applied_at timestamptz;
ALTER TABLE disputes DROP CONSTRAINT disputes_status_check;
ALTER TABLE disputes ADD CONSTRAINT disputes_status_check CHECK (status IN ('open', 'resolved'));
CREATE INDEX disputes_unalerted ON disputes (opened_at) WHERE status = 'open' AND alerted_at IS NULL;

ALTER TABLE item_payments ADD COLUMN recorded_at timestamptz;
UPDATE item_payments SET recorded_at = paid_at;
ALTER TABLE item_payments ALTER COLUMN recorded_at SET NOT NULL;
