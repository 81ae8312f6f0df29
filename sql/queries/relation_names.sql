-- Returns the schema-qualified name (quoted only where needed) of each given relation oid.
SELECT c.oid, quote_ident(n.nspname) || '.' || quote_ident(c.relname) AS qualified
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.oid = ANY (CAST(:oids AS oid[]))
