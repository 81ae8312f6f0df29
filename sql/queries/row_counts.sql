-- Returns the exact row count (count(*)) of each requested table. The identifiers reach SQL only
-- through format('%I'), inside the server; callers pass existing tables only.
SELECT w.schema_name,
       w.table_name,
       (xpath('/row/n/text()',
              query_to_xml(format('SELECT count(*) AS n FROM %I.%I', w.schema_name, w.table_name),
                           false, true, '')))[1]::text::bigint AS row_count
FROM unnest(CAST(:schemas AS text[]), CAST(:names AS text[])) AS w(schema_name, table_name)
