-- Returns the structure of each requested table, one row per part: its columns (type, NOT NULL,
-- default), constraints (definition; healthy = validated), indexes (definition; healthy = valid and
-- ready), triggers (definition and enabled state) and row-security policies. Verification compares
-- these before and after the drop: what a survivor lost, and what is left invalid.
WITH t AS (SELECT DISTINCT unnest(CAST(:oids AS oid[])) AS oid)
SELECT t.oid AS table_oid, 'column' AS kind, a.attname::text AS name,
       format_type(a.atttypid, a.atttypmod)
         || CASE WHEN a.attnotnull THEN ' NOT NULL' ELSE '' END
         || coalesce(' DEFAULT ' || pg_get_expr(d.adbin, d.adrelid), '') AS detail,
       true AS healthy
FROM t
JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum > 0 AND NOT a.attisdropped
LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
UNION ALL
SELECT t.oid, 'constraint', c.conname::text, pg_get_constraintdef(c.oid), c.convalidated
FROM t
JOIN pg_constraint c ON c.conrelid = t.oid
UNION ALL
SELECT t.oid, 'index', ic.relname::text, pg_get_indexdef(i.indexrelid), i.indisvalid AND i.indisready
FROM t
JOIN pg_index i ON i.indrelid = t.oid
JOIN pg_class ic ON ic.oid = i.indexrelid
UNION ALL
SELECT t.oid, 'trigger', tg.tgname::text, pg_get_triggerdef(tg.oid) || ' [enabled: ' || tg.tgenabled::text || ']', true
FROM t
JOIN pg_trigger tg ON tg.tgrelid = t.oid AND NOT tg.tgisinternal
UNION ALL
SELECT t.oid, 'policy', p.polname::text,
       coalesce(pg_get_expr(p.polqual, p.polrelid), '') || ' / ' || coalesce(pg_get_expr(p.polwithcheck, p.polrelid), ''),
       true
FROM t
JOIN pg_policy p ON p.polrelid = t.oid
ORDER BY 1, 2, 3
