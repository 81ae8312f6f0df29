-- Creates safedrop's own ledger of dropped tables, outside the application's schemas.
CREATE SCHEMA IF NOT EXISTS safedrop;
CREATE TABLE IF NOT EXISTS safedrop.dropped_tables (
    id             bigserial PRIMARY KEY,
    schema_name    text NOT NULL,
    table_name     text NOT NULL,
    row_count      bigint NOT NULL,
    migration      text NOT NULL,
    removed_by_cascade jsonb NOT NULL DEFAULT '[]',
    backup_path    text,
    backup_sha256  text,
    flow_run_id    text,
    dropped_by     text NOT NULL DEFAULT current_user,
    dropped_at     timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE safedrop.dropped_tables IS 'Tables dropped by safedrop: tells "already dropped" from "never existed".';
