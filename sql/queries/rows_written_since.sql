-- Returns, for each requested table, how many of its rows now were written (inserted or updated)
-- after :snapshot (a txid_snapshot, e.g. the backup's): rows whose xmin that snapshot does not see.
-- xmin is 32 bits; it is widened with the epoch of the current transaction counter (a row from the
-- previous epoch has a larger low half than the counter). Identifiers reach SQL only through
-- format('%I'), inside the server. Parameters: :schemas, :names (parallel text arrays), :snapshot.
SELECT w.schema_name,
       w.table_name,
       (xpath('/row/n/text()', query_to_xml(format(
           'SELECT count(*) AS n FROM %I.%I AS t '
           'WHERE NOT txid_visible_in_snapshot(((%s::bigint >> 32) << 32) + t.xmin::text::bigint'
           ' - CASE WHEN t.xmin::text::bigint > (%s::bigint & 4294967295) THEN 4294967296 ELSE 0 END,'
           ' %L::txid_snapshot)',
           w.schema_name, w.table_name, s.now_xmax, s.now_xmax, CAST(:snapshot AS text)),
         false, true, '')))[1]::text::bigint AS written
FROM unnest(CAST(:schemas AS text[]), CAST(:names AS text[])) AS w(schema_name, table_name)
CROSS JOIN (SELECT txid_snapshot_xmax(txid_current_snapshot()) AS now_xmax) AS s
