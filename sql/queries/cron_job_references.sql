-- Returns the pg_cron jobs that run in :database and whose command mentions a target (run only where
-- cron.job exists: this database, or the one cron.database_name names).
-- :patterns are PostgreSQL regular expressions (case-sensitive ~), one per target in :targets.
SELECT j.jobid, j.jobname, j.schedule, j.database, w.target
FROM cron.job j
CROSS JOIN unnest(CAST(:patterns AS text[]), CAST(:targets AS text[])) AS w(pattern, target)
WHERE j.database = :database
  AND j.command ~ w.pattern
ORDER BY j.jobid
