"""PostgreSQL plumbing: connections and the database URL, the query loader, the catalog walk, locks and
their schedule, row counts and checksums, pg_dump/pg_restore processes, the run lock, the drop's own
transaction, and a throwaway local server. Imports only safedrop's shared top-level modules."""
