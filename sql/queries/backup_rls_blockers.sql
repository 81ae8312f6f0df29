-- Returns one row per target table whose rows the current role could not dump in full because of
-- row-level security: RLS is enabled, and the role is not superuser, lacks BYPASSRLS, and is neither
-- the table's owner (nor inherits its privileges) nor exempt because the owner is subject to
-- FORCE ROW LEVEL SECURITY. pg_dump would fail on such a table (or, with --enable-row-security,
-- silently dump only the rows the policies show). Targets that do not exist return nothing.
-- Parameters: :schemas and :names, parallel text arrays of the targets' schema and table names.
SELECT n.nspname AS schema_name,
       c.relname AS table_name,
       pg_get_userbyid(c.relowner) AS owner,
       pg_has_role(current_user, c.relowner, 'USAGE') AS is_owner,
       c.relforcerowsecurity AS forced
FROM unnest(CAST(:schemas AS text[]), CAST(:names AS text[])) AS t (schema_name, table_name)
JOIN pg_catalog.pg_namespace n ON n.nspname = t.schema_name
JOIN pg_catalog.pg_class c ON c.relnamespace = n.oid AND c.relname = t.table_name
JOIN pg_catalog.pg_roles r ON r.rolname = current_user
WHERE c.relkind IN ('r', 'p')
  AND c.relrowsecurity
  AND NOT r.rolsuper
  AND NOT r.rolbypassrls
  AND (c.relforcerowsecurity OR NOT pg_has_role(current_user, c.relowner, 'USAGE'))
ORDER BY n.nspname, c.relname;
