-- New steps may be due at once (a case opened late, a re-opened one): wake the step timer.
CREATE FUNCTION dunning_steps_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('dunning_steps', '');
    RETURN NULL;
END $$;
CREATE TRIGGER case_steps_inserted AFTER INSERT ON case_steps
    FOR EACH STATEMENT EXECUTE FUNCTION dunning_steps_notify();
