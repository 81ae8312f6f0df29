-- Returns pg_cron jobs whose command mentions a target (run only when cron.job exists).
-- :patterns are PostgreSQL regular expressions, one per target in :targets.
SELECT j.jobid, j.jobname, j.schedule, j.database, w.target
FROM cron.job j
CROSS JOIN unnest(CAST(:patterns AS text[]), CAST(:targets AS text[])) AS w(pattern, target)
WHERE j.command ~* w.pattern
ORDER BY j.jobid
