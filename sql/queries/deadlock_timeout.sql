-- Returns the server's deadlock_timeout in milliseconds: how long a lock waiter waits before it checks
-- for a deadlock (and before a running autovacuum in its way is cancelled).
SELECT (extract(epoch FROM current_setting('deadlock_timeout')::interval) * 1000)::int AS deadlock_timeout_ms
