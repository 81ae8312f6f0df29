-- Returns the state of each requested sequence (schema-qualified names, quoted where needed, as
-- pg_identify_object prints them): last_value and is_called, read from the sequence itself as pg_dump
-- reads it (sequences are not transactional). Sequences that do not exist are left out. Identifiers
-- reach SQL only through format('%I'), inside the server.
SELECT s.name                                                          AS requested,
       quote_ident(n.nspname) || '.' || quote_ident(c.relname)          AS qualified,
       (xpath('/row/v/text()', r.x))[1]::text::bigint                  AS last_value,
       (xpath('/row/c/text()', r.x))[1]::text::boolean                 AS is_called
FROM unnest(CAST(:names AS text[])) WITH ORDINALITY AS s(name, ord)
JOIN pg_catalog.pg_class c ON c.oid = to_regclass(s.name) AND c.relkind = 'S'
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
CROSS JOIN LATERAL (
    SELECT query_to_xml(format('SELECT last_value AS v, is_called AS c FROM %I.%I', n.nspname, c.relname),
                        false, true, '') AS x
) AS r
ORDER BY s.ord
