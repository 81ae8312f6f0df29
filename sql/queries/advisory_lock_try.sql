-- Tries to take safedrop's session-level advisory lock for this database (one run at a time).
-- Returns whether it was taken. Released when the session ends, so a crashed run leaves no lock.
SELECT pg_try_advisory_lock(hashtext('safedrop'), hashtext(current_database())) AS taken
