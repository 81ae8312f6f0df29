-- Returns the pid of every session of the current database with the given application_name.
SELECT pid
FROM pg_stat_activity
WHERE application_name = :app
  AND datname = current_database()
