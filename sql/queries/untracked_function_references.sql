-- Returns functions and procedures whose body text mentions a target although pg_depend does not
-- link them to it (plpgsql and string-body SQL functions), with the triggers and event triggers
-- that call them. :patterns are PostgreSQL regular expressions (case-sensitive ~: each spells out
-- the cases it accepts), one per target in :targets.
SELECT p.oid                                                        AS function_oid,
       CASE p.prokind WHEN 'p' THEN 'procedure' ELSE 'function' END AS kind,
       quote_ident(n.nspname) || '.' || quote_ident(p.proname)      AS name,
       pg_get_function_identity_arguments(p.oid)                    AS arguments,
       l.lanname                                                    AS language,
       w.target,
       (SELECT json_agg(json_build_object(
                   'trigger', tg.tgname,
                   'table', quote_ident(tn.nspname) || '.' || quote_ident(tc.relname),
                   'table_oid', tc.oid,
                   'enabled', tg.tgenabled <> 'D') ORDER BY tc.relname, tg.tgname)
        FROM pg_trigger tg
        JOIN pg_class tc ON tc.oid = tg.tgrelid
        JOIN pg_namespace tn ON tn.oid = tc.relnamespace
        WHERE tg.tgfoid = p.oid AND NOT tg.tgisinternal)            AS triggers,
       (SELECT json_agg(json_build_object('event_trigger', et.evtname, 'event', et.evtevent))
        FROM pg_event_trigger et WHERE et.evtfoid = p.oid)          AS event_triggers
FROM pg_proc p
JOIN pg_namespace n ON n.oid = p.pronamespace
JOIN pg_language l ON l.oid = p.prolang
CROSS JOIN unnest(CAST(:patterns AS text[]), CAST(:targets AS text[])) AS w(pattern, target)
WHERE l.lanname NOT IN ('internal', 'c')
  AND p.prosqlbody IS NULL
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg\_toast%'
  AND p.prosrc ~ w.pattern
ORDER BY 3, 4, 6
