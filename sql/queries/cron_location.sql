-- Returns where pg_cron keeps its jobs, as seen from this database: this database's name, pg_cron's
-- cron.database_name (NULL: pg_cron is not loaded on this server) and whether cron.job is here.
SELECT current_database()                          AS here,
       current_setting('cron.database_name', true) AS cron_database,
       to_regclass('cron.job') IS NOT NULL         AS present
