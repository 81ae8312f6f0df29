-- Records one dropped table in safedrop's ledger. Returns the new entry's id.
INSERT INTO safedrop.dropped_tables
    (schema_name, table_name, row_count, migration, removed_by_cascade, backup_path, backup_sha256, flow_run_id)
VALUES (:schema_name, :table_name, :row_count, :migration, CAST(:removed_by_cascade AS jsonb),
        :backup_path, :backup_sha256, :flow_run_id)
RETURNING id
