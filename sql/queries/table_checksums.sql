-- Returns, for each requested table (in request order), its exact row count and a content checksum
-- that does not depend on row order: the sum, over every row (a partitioned or inheritance parent
-- includes its partitions' or children's rows), of the first 64 bits of md5(row::text) read as a
-- signed bigint. Pin the text form first (checksum_settings). Identifiers reach SQL only through
-- format('%I'), inside the server. Parameters: :schemas and :names, parallel text arrays.
SELECT w.schema_name,
       w.table_name,
       (xpath('/row/n/text()', r.x))[1]::text::bigint AS row_count,
       (xpath('/row/s/text()', r.x))[1]::text         AS checksum
FROM unnest(CAST(:schemas AS text[]), CAST(:names AS text[])) WITH ORDINALITY AS w(schema_name, table_name, ord)
CROSS JOIN LATERAL (
    SELECT query_to_xml(
               format('SELECT count(*) AS n, '
                      'coalesce(sum(CAST(CAST(''x'' || left(md5(CAST(t AS text)), 16) AS bit(64)) AS bigint)), 0) AS s '
                      'FROM %I.%I AS t', w.schema_name, w.table_name),
               false, true, '') AS x
) AS r
ORDER BY w.ord
