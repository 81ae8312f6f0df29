"""The way back: which archive entries return, what a restore will do, pg_restore in one lock-safe
transaction, the foreign keys added NOT VALID then validated, and the restore's report.
Imports the shared modules, pg/, report/, analysis/ and backup/ — never fleet/."""
