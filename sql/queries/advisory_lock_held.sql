-- Returns whether the session :pid still holds safedrop's advisory lock for this database (the run
-- lock), so the drop can refuse to go on after the lock was lost (the session ended by
-- idle_session_timeout, a DBA, a network failure).
SELECT EXISTS (
    SELECT 1
    FROM pg_locks l
    WHERE l.locktype = 'advisory'
      AND l.classid = hashtext('safedrop')::oid
      AND l.objid = hashtext(current_database())::oid
      AND l.objsubid = 2
      AND l.granted
      AND l.pid = :pid
      AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
) AS held
