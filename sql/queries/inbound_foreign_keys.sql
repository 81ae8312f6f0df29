-- Returns the foreign keys on other tables that reference one of the given tables (by oid).
SELECT con.conname                                                  AS constraint_name,
       quote_ident(rn.nspname) || '.' || quote_ident(r.relname)     AS referencing_table,
       quote_ident(tn.nspname) || '.' || quote_ident(t.relname)     AS target
FROM pg_constraint con
JOIN pg_class r      ON r.oid = con.conrelid
JOIN pg_namespace rn ON rn.oid = r.relnamespace
JOIN pg_class t      ON t.oid = con.confrelid
JOIN pg_namespace tn ON tn.oid = t.relnamespace
WHERE con.contype = 'f'
  AND con.confrelid = ANY (CAST(:oids AS oid[]))
  AND NOT (con.conrelid = ANY (CAST(:oids AS oid[])))
ORDER BY 2, 1
