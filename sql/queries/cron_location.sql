-- Returns where pg_cron keeps its jobs, as seen from this database: this database's name; whether
-- cron.job is here; whether this role may read cron.database_name (a superuser-only setting); that
-- setting when it may (NULL: pg_cron is not loaded on this server); and, when it may not, whether
-- pg_cron is installed on the server at all. From the catalog, not to_regclass: a role without USAGE on
-- schema cron may still ask.
WITH me AS (
    SELECT r.rolsuper OR pg_has_role(r.oid, 'pg_read_all_settings', 'USAGE') AS readable
    FROM pg_roles r
    WHERE r.rolname = current_user
)
SELECT current_database()                                                        AS here,
       EXISTS (SELECT 1
               FROM pg_class c
               JOIN pg_namespace n ON n.oid = c.relnamespace
               WHERE n.nspname = 'cron' AND c.relname = 'job')                   AS present,
       me.readable,
       CASE WHEN me.readable THEN current_setting('cron.database_name', true) END AS cron_database,
       CASE WHEN NOT me.readable
            THEN EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'pg_cron')
       END                                                                       AS installed
FROM me
