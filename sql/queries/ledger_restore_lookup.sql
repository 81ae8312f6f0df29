-- Returns the latest ledger entry for each requested table: when and by which run it was dropped,
-- what CASCADE removed with it, and the backup the drop recorded (path and sha256).
SELECT DISTINCT ON (l.schema_name, l.table_name)
       l.schema_name, l.table_name, l.dropped_at, l.flow_run_id, l.migration,
       l.removed_by_cascade, l.backup_path, l.backup_sha256
FROM safedrop.dropped_tables l
JOIN unnest(CAST(:schemas AS text[]), CAST(:names AS text[])) AS w(schema_name, table_name)
  ON w.schema_name = l.schema_name AND w.table_name = l.table_name
ORDER BY l.schema_name, l.table_name, l.dropped_at DESC
