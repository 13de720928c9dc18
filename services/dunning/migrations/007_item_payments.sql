-- What was paid on each invoice and when (allocations of payments, credits and credit notes;
-- reversals negative): what a backtest and the collection reports measure a step's effect by.
CREATE TABLE item_payments (
    tenant_id    text NOT NULL,
    invoice_id   uuid NOT NULL,
    payment_ref  text NOT NULL,  -- payment, credit note or reversal id
    amount_minor bigint NOT NULL,
    paid_at      timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, invoice_id, payment_ref)
);
CREATE INDEX item_payments_paid_at ON item_payments (tenant_id, paid_at);
