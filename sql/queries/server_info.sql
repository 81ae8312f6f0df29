-- Returns one row: the server's version, the database, the current role and whether it may bypass
-- checks (superuser), and whether the server is a read-only standby.
SELECT current_setting('server_version')                 AS server_version,
       current_setting('server_version_num')::int        AS server_version_num,
       current_database()                                AS database,
       current_user                                      AS current_user,
       (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) AS is_superuser,
       pg_is_in_recovery()                               AS in_recovery,
       current_setting('transaction_read_only')::bool    AS read_only
