-- Returns, for each requested table (in request order), its exact row count and a content checksum
-- that does not depend on row order: the sum, over every row (a partitioned or inheritance parent
-- includes its partitions' or children's rows), of hash_record_extended(row, 0) — each column hashed
-- by its type's own extended hash function, no text conversion (PostgreSQL 14+; raises
-- undefined_function for a column type without one, e.g. json, xml, point). Identifiers reach SQL only
-- through format('%I'), inside the server. Parameters: :schemas and :names, parallel text arrays.
SELECT w.schema_name,
       w.table_name,
       (xpath('/row/n/text()', r.x))[1]::text::bigint AS row_count,
       (xpath('/row/s/text()', r.x))[1]::text         AS checksum
FROM unnest(CAST(:schemas AS text[]), CAST(:names AS text[])) WITH ORDINALITY AS w(schema_name, table_name, ord)
CROSS JOIN LATERAL (
    SELECT query_to_xml(
               format('SELECT count(*) AS n, coalesce(sum(hash_record_extended(t, 0)), 0) AS s FROM %I.%I AS t',
                      w.schema_name, w.table_name),
               false, true, '') AS x
) AS r
ORDER BY w.ord
