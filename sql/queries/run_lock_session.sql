-- Readies the session that holds the run lock for hours of idling: idle_session_timeout (PostgreSQL
-- 14+) must not end it. Returns the session's pid, which the drop checks in pg_locks.
SELECT pg_backend_pid() AS pid,
       (SELECT set_config('idle_session_timeout', '0', false)
        WHERE current_setting('server_version_num')::int >= 140000) AS idle_session_timeout
