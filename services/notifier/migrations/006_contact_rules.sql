-- Contact rules per tenant; a tenant without a row gets the service's defaults (settings).
CREATE TABLE tenant_settings (
    tenant_id          text PRIMARY KEY,
    default_language   text NOT NULL,
    languages          text[] NOT NULL,
    allowed_start      time NOT NULL,
    allowed_end        time NOT NULL,
    excluded_weekdays  int[] NOT NULL DEFAULT '{}',     -- ISO weekdays, 1 Monday .. 7 Sunday
    holidays           date[] NOT NULL DEFAULT '{}',
    contact_cap        int NOT NULL,                     -- messages per customer per rolling window (0: no cap)
    contact_cap_days   int NOT NULL,
    sms_segment_limit  int NOT NULL,
    updated_at         timestamptz NOT NULL DEFAULT now(),
    updated_by         text
);

-- Channel preferences of a contact and the webhook endpoint of a customer's own system.
ALTER TABLE contacts ADD COLUMN declined_channels text[] NOT NULL DEFAULT '{}';
ALTER TABLE contacts ADD COLUMN webhook_url text;
ALTER TABLE contacts ADD COLUMN webhook_secret text;
ALTER TABLE contacts ADD COLUMN webhook_opt_out boolean NOT NULL DEFAULT false;

-- Addresses nothing is sent to: hard bounces, complaints, numbers the provider rejects, and
-- ones a person adds. Per tenant and address, not per customer: two customers may share one.
CREATE TABLE suppressions (
    tenant_id   text NOT NULL,
    channel     text NOT NULL CHECK (channel IN ('email', 'sms', 'webhook')),
    address     text NOT NULL,   -- email lower-cased, phone E.164, webhook URL
    reason      text NOT NULL CHECK (reason IN ('hard_bounce', 'complaint', 'invalid_number', 'manual')),
    detail      text,
    notification_key text,
    created_at  timestamptz NOT NULL,
    created_by  text,
    PRIMARY KEY (tenant_id, channel, address)
);

-- What happened to each notification, in order: requested, deferred (why, until when), sent,
-- delivered, failed, opted out. Append-only.
CREATE TABLE notification_history (
    id               bigserial PRIMARY KEY,
    tenant_id        text NOT NULL,
    notification_key text NOT NULL,
    at               timestamptz NOT NULL,
    status           text NOT NULL,
    detail           text
);
CREATE INDEX notification_history_by_key ON notification_history (tenant_id, notification_key, id);

ALTER TABLE notifications DROP CONSTRAINT notifications_status_check;
ALTER TABLE notifications ADD CONSTRAINT notifications_status_check
    CHECK (status IN ('pending', 'sending', 'sent', 'delivered', 'failed', 'suppressed'));
ALTER TABLE notifications ADD COLUMN delivered_at timestamptz;
ALTER TABLE notifications ADD COLUMN failed_at timestamptz;
ALTER TABLE notifications ADD COLUMN fallback_from text;   -- the contact's language when it was not offered
ALTER TABLE notifications ADD COLUMN address text;         -- where it went (for suppression on a bounce)
ALTER TABLE notifications ADD COLUMN sms_segments int;
ALTER TABLE notifications ADD COLUMN deferred_reason text;
CREATE INDEX notifications_by_provider_id ON notifications (provider_message_id) WHERE provider_message_id IS NOT NULL;
-- The rolling contact cap counts a customer's recent sends.
CREATE INDEX notifications_sent_by_customer ON notifications (tenant_id, customer_id, sent_at)
    WHERE sent_at IS NOT NULL;
CREATE INDEX notifications_by_customer ON notifications (tenant_id, customer_id, requested_at);
CREATE INDEX notifications_by_case ON notifications (tenant_id, case_id, requested_at);

-- A tenant's own wording of a template in one language (Jinja2, rendered sandboxed).
CREATE TABLE notice_templates (
    tenant_id  text NOT NULL,
    template   text NOT NULL,
    language   text NOT NULL,
    subject    text,
    body       text,
    sms        text,
    updated_at timestamptz NOT NULL DEFAULT now(),
    updated_by text,
    PRIMARY KEY (tenant_id, template, language)
);

-- The key that signs unsubscribe links when LINK_SIGNING_KEY is not set: made once, kept here so
-- every replica and every restart signs and checks alike.
CREATE TABLE link_keys (
    id  int PRIMARY KEY CHECK (id = 1),
    key text NOT NULL
);
INSERT INTO link_keys VALUES (1, md5(gen_random_uuid()::text) || md5(gen_random_uuid()::text));
