-- Returns the id of the current transaction's snapshot, exported so that pg_dump --snapshot sees
-- exactly the rows this transaction sees (valid while the transaction stays open).
SELECT pg_export_snapshot() AS snapshot_id
