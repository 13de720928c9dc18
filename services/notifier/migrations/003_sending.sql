-- A notification is claimed ('sending', with the time) in its own short transaction, sent with no
-- transaction open, and its outcome recorded afterwards. One that stays 'sending' past the lease
-- was interrupted between the send and the record (a crash): it goes out again, counted.
ALTER TABLE notifications DROP CONSTRAINT notifications_status_check;
ALTER TABLE notifications ADD CONSTRAINT notifications_status_check
    CHECK (status IN ('pending', 'sending', 'sent', 'failed', 'suppressed'));
ALTER TABLE notifications ADD COLUMN claimed_at timestamptz;
ALTER TABLE notifications ADD COLUMN interrupted int NOT NULL DEFAULT 0;
CREATE INDEX notifications_sending ON notifications (claimed_at) WHERE status = 'sending';
