-- Returns the latest ledger entry for each requested table that safedrop has dropped before.
SELECT DISTINCT ON (l.schema_name, l.table_name)
       l.schema_name, l.table_name, l.dropped_at, l.flow_run_id, l.migration, l.backup_path
FROM safedrop.dropped_tables l
JOIN unnest(CAST(:schemas AS text[]), CAST(:names AS text[])) AS w(schema_name, table_name)
  ON w.schema_name = l.schema_name AND w.table_name = l.table_name
ORDER BY l.schema_name, l.table_name, l.dropped_at DESC
