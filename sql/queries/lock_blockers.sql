-- Returns the sessions (other than ours) holding or awaiting locks on the given relations: the
-- transactions a DROP would wait behind. Query text is cut to its first 120 characters.
SELECT DISTINCT a.pid,
       a.application_name,
       a.state,
       a.usename                                                   AS user_name,
       quote_ident(n.nspname) || '.' || quote_ident(c.relname)     AS relation,
       l.mode,
       l.granted,
       extract(epoch FROM now() - a.xact_start)::numeric(12, 1)    AS xact_seconds,
       left(regexp_replace(a.query, '\s+', ' ', 'g'), 120)          AS query
FROM pg_locks l
JOIN pg_class c ON c.oid = l.relation
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_stat_activity a ON a.pid = l.pid
WHERE l.relation = ANY (CAST(:oids AS oid[]))
  AND l.pid <> pg_backend_pid()
  AND l.pid <> ALL (CAST(:exclude_pids AS int[]))
ORDER BY xact_seconds DESC NULLS LAST
