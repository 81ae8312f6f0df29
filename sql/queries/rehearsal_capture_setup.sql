-- Sets up, inside the current (to be rolled back) transaction, a sql_drop event trigger that records
-- every object the next DROP removes into the temporary table pg_temp.safedrop_rehearsal.
-- Needs a superuser (event triggers). Used by rehearsals and tests, never on the production path.
CREATE TEMPORARY TABLE safedrop_rehearsal (classid oid, objid oid, objsubid int, object_type text, identity text)
    ON COMMIT DROP;
CREATE FUNCTION pg_temp.safedrop_capture() RETURNS event_trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO pg_temp.safedrop_rehearsal
    SELECT classid, objid, objsubid, object_type, object_identity FROM pg_event_trigger_dropped_objects();
END $$;
CREATE EVENT TRIGGER safedrop_rehearsal_capture ON sql_drop EXECUTE FUNCTION pg_temp.safedrop_capture();
