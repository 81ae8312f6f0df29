-- Returns one row per requested foreign key (schema, table, constraint name; in request order): whether
-- it exists, whether it is validated, the oids of its table and of the table it references, and the
-- statement that validates it (identifiers quoted by format()).
SELECT w.schema_name,
       w.table_name,
       w.constraint_name,
       c.oid IS NOT NULL                     AS present,
       coalesce(c.convalidated, false)       AS validated,
       r.oid::bigint                         AS table_oid,
       c.confrelid::bigint                   AS references_oid,
       format('ALTER TABLE %I.%I VALIDATE CONSTRAINT %I', w.schema_name, w.table_name, w.constraint_name)
                                             AS validate_command
FROM unnest(CAST(:schemas AS text[]), CAST(:tables AS text[]), CAST(:names AS text[]))
     WITH ORDINALITY AS w(schema_name, table_name, constraint_name, ord)
LEFT JOIN pg_namespace n ON n.nspname = w.schema_name
LEFT JOIN pg_class r ON r.relnamespace = n.oid AND r.relname = w.table_name
LEFT JOIN pg_constraint c ON c.conrelid = r.oid AND c.conname = w.constraint_name AND c.contype = 'f'
ORDER BY w.ord
