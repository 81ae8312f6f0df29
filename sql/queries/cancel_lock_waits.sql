-- Returns each session of the current database named :app (other than :known_pids) that is waiting for
-- a lock: its pid, the relation it waits for (NULL for a row or transaction lock), and whether its
-- statement was cancelled here because it has run longer than :wait_ms while waiting — the
-- lock_timeout of a client that cannot be given one (pg_restore sets its own to 0).
SELECT a.pid,
       w.relation::bigint AS relation,
       CASE WHEN clock_timestamp() - a.query_start > CAST(:wait_ms AS int) * interval '1 millisecond'
            THEN pg_cancel_backend(a.pid)
            ELSE false
       END AS cancelled
FROM pg_stat_activity a
LEFT JOIN LATERAL (
    SELECT l.relation FROM pg_locks l WHERE l.pid = a.pid AND NOT l.granted LIMIT 1
) w ON true
WHERE a.application_name = :app
  AND a.datname = current_database()
  AND a.pid <> ALL (CAST(:known_pids AS int[]))
  AND a.wait_event_type = 'Lock'
