-- Returns every table whose rows pg_dump would dump (ordinary tables, partitions, inheritance
-- children; outside the system schemas) with its estimated size, and, for the target tables (given
-- by :schemas/:names) and every table below them in pg_inherits (partitions at any depth,
-- inheritance children), the target it belongs to and its parent. Partitioned parents (relkind 'p')
-- are listed too: they hold no rows of their own. The size is relpages (as of the last VACUUM or
-- ANALYZE) read from the catalog, so no lock is taken: pg_table_size() would wait behind any lock.
WITH RECURSIVE targets AS (
    SELECT c.oid, quote_ident(n.nspname) || '.' || quote_ident(c.relname) AS target
    FROM unnest(CAST(:schemas AS text[]), CAST(:names AS text[])) AS w(schema_name, table_name)
    JOIN pg_catalog.pg_namespace n ON n.nspname = w.schema_name
    JOIN pg_catalog.pg_class c ON c.relnamespace = n.oid AND c.relname = w.table_name
    WHERE c.relkind IN ('r', 'p')
), tree AS (
    SELECT oid, target, NULL::oid AS parent FROM targets
    UNION
    SELECT i.inhrelid, t.target, i.inhparent
    FROM tree t JOIN pg_catalog.pg_inherits i ON i.inhparent = t.oid
)
SELECT c.oid,
       n.nspname                                                   AS schema_name,
       c.relname                                                   AS table_name,
       quote_ident(n.nspname) || '.' || quote_ident(c.relname)     AS qualified,
       c.relkind::text                                             AS relkind,
       c.relpages::bigint * current_setting('block_size')::bigint  AS bytes,
       t.target,
       (SELECT quote_ident(pn.nspname) || '.' || quote_ident(p.relname)
        FROM pg_catalog.pg_class p JOIN pg_catalog.pg_namespace pn ON pn.oid = p.relnamespace
        WHERE p.oid = t.parent)                                    AS parent
FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN (SELECT DISTINCT ON (oid) oid, target, parent FROM tree ORDER BY oid, parent NULLS FIRST) t
       ON t.oid = c.oid
WHERE c.relkind IN ('r', 'p')
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg\_toast%'
  AND n.nspname NOT LIKE 'pg\_temp\_%'
ORDER BY n.nspname, c.relname
