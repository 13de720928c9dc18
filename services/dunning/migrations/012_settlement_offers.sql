-- Settlement offers: a discount for paying the whole overdue amount of a case by a date, within
-- the limits of the policy. Open: the covered invoices are not dunned until the pay-by day ends.
-- Accepted (the payments arrived in time): the discount is credited by invoicing, and the
-- invoices stay paused until that credit note arrives (or pause_until passes).
CREATE TABLE settlement_offers (
    tenant_id         text NOT NULL,
    offer_id          uuid NOT NULL,
    customer_id       text NOT NULL,
    case_id           uuid NOT NULL,
    currency          char(3) NOT NULL,
    invoice_ids       uuid[] NOT NULL,
    owed_minor        bigint NOT NULL CHECK (owed_minor > 0),
    discount_percent  numeric(5, 2) NOT NULL CHECK (discount_percent > 0),
    discount_minor    bigint NOT NULL CHECK (discount_minor > 0),
    pay_minor         bigint NOT NULL CHECK (pay_minor > 0),
    pay_by            date NOT NULL,
    deadline          timestamptz NOT NULL,  -- the end of the pay-by day, customer's time
    offered_by        text NOT NULL,
    note              text,
    status            text NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'accepted', 'expired', 'withdrawn')),
    paid_minor        bigint NOT NULL DEFAULT 0,
    credit_minor      bigint,
    pause_until       timestamptz,
    credit_applied_at timestamptz,
    created_at        timestamptz NOT NULL,
    resolved_at       timestamptz,
    resolved_by       text,
    PRIMARY KEY (tenant_id, offer_id)
);
CREATE INDEX settlement_offers_by_customer ON settlement_offers (tenant_id, customer_id);
CREATE INDEX settlement_offers_deadline ON settlement_offers (deadline) WHERE status = 'open';
-- one open offer per case: a second one would leave the customer unsure which holds
CREATE UNIQUE INDEX settlement_offers_one_open ON settlement_offers (tenant_id, case_id) WHERE status = 'open';
