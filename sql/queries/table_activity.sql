-- Returns the cumulative activity statistics of the given tables (pg_stat_user_tables): scans and
-- row changes since the statistics were last reset, and when that was.
SELECT quote_ident(s.schemaname) || '.' || quote_ident(s.relname) AS table_name,
       s.seq_scan, COALESCE(s.idx_scan, 0) AS idx_scan,
       s.n_tup_ins, s.n_tup_upd, s.n_tup_del, s.n_live_tup,
       s.last_autovacuum, s.last_autoanalyze,
       (SELECT stats_reset FROM pg_stat_database WHERE datname = current_database()) AS stats_reset,
       now() AS observed_at
FROM pg_stat_user_tables s
WHERE s.relid = ANY (CAST(:oids AS oid[]))
ORDER BY 1
