-- Returns one row per requested table (in request order): whether it exists as a table, its oid and
-- kind, its owner, and whether the current role may drop it (owner, member of the owner's role with
-- INHERIT, owner of the schema, or superuser).
SELECT w.schema_name,
       w.table_name,
       quote_ident(w.schema_name) || '.' || quote_ident(w.table_name) AS qualified,
       n.oid IS NOT NULL                                             AS schema_exists,
       c.oid                                                         AS oid,
       c.relkind::text                                               AS relkind,
       pg_get_userbyid(c.relowner)                                   AS owner,
       c.oid IS NOT NULL
         AND (pg_has_role(current_user, c.relowner, 'USAGE')
              OR pg_has_role(current_user, n.nspowner, 'USAGE'))    AS can_drop
FROM unnest(CAST(:schemas AS text[]), CAST(:names AS text[])) WITH ORDINALITY AS w(schema_name, table_name, ord)
LEFT JOIN pg_namespace n ON n.nspname = w.schema_name
LEFT JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = w.table_name
ORDER BY w.ord
