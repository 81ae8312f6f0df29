"""What a drop would remove or break, and whether it broke anything: the CASCADE set and references
PostgreSQL does not track, every spelling of a table name and the code scan (local or git sources),
and the smoke checks after the drop. Imports the shared modules, pg/ and report/."""
