CREATE TABLE contacts (
    tenant_id         text NOT NULL,
    customer_id       text NOT NULL,
    name              text NOT NULL,
    language          text NOT NULL DEFAULT 'en',
    timezone          text NOT NULL DEFAULT 'UTC',
    email             text,
    phone             text,
    email_opt_out     boolean NOT NULL DEFAULT false,
    sms_opt_out       boolean NOT NULL DEFAULT false,
    unsubscribe_token text NOT NULL UNIQUE,
    updated_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, customer_id)
);
CREATE INDEX contacts_by_phone ON contacts (phone);

-- One row per idempotency key: a redelivered request never sends twice.
CREATE TABLE notifications (
    tenant_id           text NOT NULL,
    notification_key    text NOT NULL,
    customer_id         text NOT NULL,
    case_id             text NOT NULL,
    step                text NOT NULL,
    channel             text NOT NULL,
    template            text NOT NULL,
    items               jsonb NOT NULL,
    status              text NOT NULL DEFAULT 'pending'
                        CHECK (status IN ('pending', 'sent', 'failed', 'suppressed')),
    language            text,
    send_after          timestamptz NOT NULL,
    attempts            int NOT NULL DEFAULT 0,
    last_error          text,
    requested_at        timestamptz NOT NULL,
    sent_at             timestamptz,
    provider_message_id text,
    PRIMARY KEY (tenant_id, notification_key)
);
CREATE INDEX notifications_due ON notifications (send_after) WHERE status = 'pending';
