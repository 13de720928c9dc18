-- A provider's report that came before the send's outcome was recorded (a fast provider calls
-- back while the dispatcher is still between the send and the record): kept and applied once the
-- message is known, for up to a day.
CREATE TABLE early_reports (
    id                  bigserial PRIMARY KEY,
    channel             text NOT NULL,
    provider_message_id text,
    notification_key    text,
    outcome             text NOT NULL,
    bounce_class        text,
    detail              text NOT NULL,
    at                  timestamptz,
    received_at         timestamptz NOT NULL
);
