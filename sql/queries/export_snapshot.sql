-- Returns the id of the current transaction's snapshot, exported so that pg_dump --snapshot sees
-- exactly the rows this transaction sees (valid while the transaction stays open), and the same
-- snapshot as txid_snapshot text: later, a row whose xmin it does not see was written after the dump.
SELECT pg_export_snapshot() AS snapshot_id, txid_current_snapshot()::text AS txid_snapshot
