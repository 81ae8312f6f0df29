-- Returns whether this session sees every row of cron.job (run only when it exists): false when row
-- security (pg_cron's own policy shows each role only its own jobs) applies to the current role.
SELECT NOT c.relrowsecurity
       OR r.rolsuper
       OR r.rolbypassrls
       OR (pg_has_role(c.relowner, 'USAGE') AND NOT c.relforcerowsecurity) AS sees_all
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
CROSS JOIN pg_roles r
WHERE n.nspname = 'cron' AND c.relname = 'job'
  AND r.rolname = current_user
