-- Returns the foreign keys that make DROP TABLE lock other tables: those ON the targets pointing at
-- other tables (their parents, e.g. credits, tenants), and those on other tables pointing INTO the
-- targets. Each with the table it lives on (quoted parts, for psycopg2 Identifier) and its direction.
SELECT con.conname                          AS constraint_name,
       n.nspname                            AS schema_name,
       c.relname                            AS table_name,
       quote_ident(n.nspname) || '.' || quote_ident(c.relname)   AS on_table,
       quote_ident(fn.nspname) || '.' || quote_ident(f.relname)  AS references_table,
       CASE WHEN con.conrelid = ANY (CAST(:oids AS oid[])) THEN 'outbound' ELSE 'inbound' END AS direction
FROM pg_constraint con
JOIN pg_class c ON c.oid = con.conrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_class f ON f.oid = con.confrelid
JOIN pg_namespace fn ON fn.oid = f.relnamespace
WHERE con.contype = 'f'
  AND (con.conrelid = ANY (CAST(:oids AS oid[])) OR con.confrelid = ANY (CAST(:oids AS oid[])))
  AND NOT (con.conrelid = ANY (CAST(:oids AS oid[])) AND con.confrelid = ANY (CAST(:oids AS oid[])))
  AND con.conparentid = 0
ORDER BY direction DESC, on_table, constraint_name
