-- Returns, for each requested table (in request order, a partitioned or inheritance parent with its
-- partitions' or children's rows), in one scan:
--   row_count      count(*)
--   checksum       the order-independent content checksum: the sum over every row of a 64-bit row
--                  hash — :method 'hash' hash_record_extended(row, 0) (PostgreSQL 14+; raises
--                  undefined_function for a column type without one), 'md5' the first 64 bits of
--                  md5(row::text) (pin the text form first: checksum_settings)
--   late_rows      rows whose xmin is at or after the xmin of :snapshot (a txid_snapshot, the backup's):
--                  every row written after that snapshot is one of them, whatever its types
--   late_xmins     the sum of hashtextextended(xmin) over those rows: the same rows carry the same xmins
--   written        those of them whose xmin :snapshot does not see (xmin widened to 64 bits with the
--                  current epoch) — rows written after it by a top-level transaction
-- Ages are taken in this transaction (age(): distance to its own stable xid), so the comparison holds
-- across xid wraparound. Identifiers reach SQL only through format('%I'), inside the server.
-- Parameters: :schemas and :names (parallel text arrays), :method ('hash' or 'md5'), :snapshot.
SELECT w.schema_name,
       w.table_name,
       (xpath('/row/n/text()', r.x))[1]::text::bigint AS row_count,
       (xpath('/row/s/text()', r.x))[1]::text         AS checksum,
       (xpath('/row/late/text()', r.x))[1]::text::bigint AS late_rows,
       (xpath('/row/xmins/text()', r.x))[1]::text      AS late_xmins,
       (xpath('/row/written/text()', r.x))[1]::text::bigint AS written
FROM unnest(CAST(:schemas AS text[]), CAST(:names AS text[])) WITH ORDINALITY AS w(schema_name, table_name, ord)
CROSS JOIN (
    SELECT age(CAST(CAST(txid_snapshot_xmin(CAST(:snapshot AS txid_snapshot)) & 4294967295 AS text) AS xid))
               AS snap_age,
           txid_snapshot_xmax(txid_current_snapshot()) AS now_xmax
) AS s
CROSS JOIN LATERAL (
    SELECT query_to_xml(
               format('SELECT count(*) AS n, coalesce(sum(%s), 0) AS s, '
                      'count(*) FILTER (WHERE age(t.xmin) <= %s) AS late, '
                      'coalesce(sum(hashtextextended(t.xmin::text, 0)) FILTER (WHERE age(t.xmin) <= %s), 0) AS xmins, '
                      'count(*) FILTER (WHERE age(t.xmin) <= %s AND NOT txid_visible_in_snapshot('
                      '((%s::bigint >> 32) << 32) + t.xmin::text::bigint'
                      ' - CASE WHEN t.xmin::text::bigint > (%s::bigint & 4294967295) THEN 4294967296 ELSE 0 END,'
                      ' %L::txid_snapshot)) AS written '
                      'FROM %I.%I AS t',
                      CASE CAST(:method AS text)
                          WHEN 'hash' THEN 'hash_record_extended(t, 0)'
                          ELSE 'CAST(CAST(''x'' || left(md5(CAST(t AS text)), 16) AS bit(64)) AS bigint)'
                      END,
                      s.snap_age, s.snap_age, s.snap_age, s.now_xmax, s.now_xmax, CAST(:snapshot AS text),
                      w.schema_name, w.table_name),
               false, true, '') AS x
) AS r
ORDER BY w.ord
