-- A requested notification is usually due at once: wake the dispatcher.
CREATE FUNCTION notifier_due_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('notifier_due', '');
    RETURN NULL;
END $$;
CREATE TRIGGER notifications_inserted AFTER INSERT ON notifications
    FOR EACH STATEMENT EXECUTE FUNCTION notifier_due_notify();
