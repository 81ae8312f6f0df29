-- Returns, for each requested table, the planner's row estimate (reltuples; -1 when it was never
-- vacuumed or analyzed) and its size in pages, children of a partitioned or inheritance parent
-- included: what decides whether an exact count(*) is cheap enough. Parameters: :schemas, :names.
SELECT w.schema_name,
       w.table_name,
       coalesce(sum(greatest(c.reltuples, 0)), 0)::bigint      AS estimate,
       bool_or(c.reltuples >= 0)                              AS analyzed,
       coalesce(sum(c.relpages), 0)::bigint                   AS pages
FROM unnest(CAST(:schemas AS text[]), CAST(:names AS text[])) AS w(schema_name, table_name)
JOIN pg_class p ON p.oid = to_regclass(format('%I.%I', w.schema_name, w.table_name))
JOIN LATERAL (
    SELECT p.oid AS relid
    UNION
    SELECT relid FROM pg_partition_tree(p.oid)
    UNION
    SELECT inhrelid FROM pg_inherits WHERE inhparent = p.oid
) AS tree ON true
JOIN pg_class c ON c.oid = tree.relid AND c.relkind IN ('r', 'm', 'f')
GROUP BY w.schema_name, w.table_name
