-- Billing sources registered per tenant; each has its own API key and default currency.
CREATE TABLE billing_sources (
    tenant_id        text NOT NULL,
    name             text NOT NULL,
    default_currency char(3) NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, name)
);

ALTER TABLE invoices ADD COLUMN version int NOT NULL DEFAULT 1;
ALTER TABLE invoices ADD COLUMN cancelled_at timestamptz;

-- The customer's account, entry by entry: what statements, balances and aging are made of.
-- amount_minor is signed: positive = the customer owes more, negative = in the customer's favour.
CREATE TABLE ledger_entries (
    entry_id     bigserial PRIMARY KEY,
    tenant_id    text NOT NULL,
    customer_id  text NOT NULL,
    currency     char(3) NOT NULL,
    kind         text NOT NULL CHECK (kind IN ('invoice', 'adjustment', 'cancellation', 'credit_note', 'payment',
                                               'payment_reversal', 'fee')),
    ref_id       text NOT NULL,
    amount_minor bigint NOT NULL,
    booked_on    date NOT NULL,
    recorded_at  timestamptz NOT NULL,
    description  text NOT NULL DEFAULT ''
);
CREATE INDEX ledger_by_customer ON ledger_entries (tenant_id, customer_id, currency, booked_on);

-- Backfill the ledger for invoices and payments recorded before it existed.
INSERT INTO ledger_entries (tenant_id, customer_id, currency, kind, ref_id, amount_minor, booked_on, recorded_at, description)
SELECT tenant_id, customer_id, currency, 'invoice', invoice_id::text, amount_minor, issue_date, issued_at, 'invoice ' || number
FROM invoices;
INSERT INTO ledger_entries (tenant_id, customer_id, currency, kind, ref_id, amount_minor, booked_on, recorded_at, description)
SELECT tenant_id, customer_id, currency, 'payment', payment_id::text, -amount_minor, (received_at AT TIME ZONE 'UTC')::date,
       recorded_at, 'payment ' || external_id
FROM payments;
