-- Returns, for each requested table (in request order, a partitioned or inheritance parent with its
-- partitions' or children's rows), in one scan:
--   row_count  count(*)
--   checksum   the order-independent content checksum: the sum over every row of a 64-bit row hash —
--              :method 'hash' hash_record_extended(row, 0) (PostgreSQL 14+; raises undefined_function
--              for a column type without one), 'md5' the first 64 bits of md5(row::text) (pin the text
--              form first: checksum_settings)
--   xmins      the sum over every row of a 64-bit hash of its xmin: the transaction that wrote it.
--              A row written after a snapshot — by any transaction or subtransaction that committed
--              later — carries an xid no row visible in that snapshot carries, so equal row counts and
--              equal xmins mean the very same row versions, whatever their column types hash to.
--              Freezing keeps a row's xmin (PostgreSQL 9.4+), and no window of xids is compared, so
--              neither VACUUM FREEZE nor xid wraparound reads as a write.
-- Every function is parallel safe: a large table is scanned by parallel workers. Identifiers reach SQL
-- only through format('%I'), inside the server. Parameters: :schemas and :names (parallel text
-- arrays), :method ('hash' or 'md5').
SELECT w.schema_name,
       w.table_name,
       (xpath('/row/n/text()', r.x))[1]::text::bigint AS row_count,
       (xpath('/row/s/text()', r.x))[1]::text         AS checksum,
       (xpath('/row/x/text()', r.x))[1]::text         AS xmins
FROM unnest(CAST(:schemas AS text[]), CAST(:names AS text[])) WITH ORDINALITY AS w(schema_name, table_name, ord)
CROSS JOIN LATERAL (
    SELECT query_to_xml(
               format('SELECT count(*) AS n, coalesce(sum(%s), 0) AS s, coalesce(sum(%s), 0) AS x FROM %I.%I AS t',
                      CASE CAST(:method AS text)
                          WHEN 'hash' THEN 'hash_record_extended(t, 0)'
                          ELSE 'CAST(CAST(''x'' || left(md5(CAST(t AS text)), 16) AS bit(64)) AS bigint)'
                      END,
                      CASE WHEN current_setting('server_version_num')::int >= 140000
                          THEN 'hash_record_extended(ROW(t.xmin), 0)'
                          ELSE 'CAST(CAST(''x'' || left(md5(CAST(t.xmin AS text)), 16) AS bit(64)) AS bigint)'
                      END,
                      w.schema_name, w.table_name),
               false, true, '') AS x
) AS r
ORDER BY w.ord
