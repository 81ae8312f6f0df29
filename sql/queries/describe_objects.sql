-- Returns, for each given object address: PostgreSQL's own description (the wording of its
-- "drop cascades to" notices), its identity, and what it belongs to: the relation that owns it
-- (an index's table, a sequence's owning table, a constraint's or trigger's table, …), a relation's
-- kind and parent (partition or inheritance child), a constraint's type, and a composite column's type.
-- Every lookup is by index, per object, except toast tables' owners (pg_class has no index on
-- reltoastrelid): those are found in one pass. Correlated seq scans would also make the planner's
-- estimate large enough to JIT-compile the query, which alone costs about a second.
WITH obj AS (
    SELECT *
    FROM unnest(CAST(:classids AS oid[]), CAST(:objids AS oid[]), CAST(:objsubids AS int[]))
         AS o(classid, objid, objsubid)
),
toast_owner AS (
    SELECT t.reltoastrelid AS toast, t.oid AS owner
    FROM pg_class t
    WHERE t.reltoastrelid IN (SELECT objid FROM obj WHERE classid = 'pg_class'::regclass)
)
SELECT o.classid, o.objid, o.objsubid,
       pg_describe_object(o.classid, o.objid, o.objsubid) AS description,
       i.type, i.schema, i.name, i.identity,
       c.relkind::text AS relkind,
       CASE
           WHEN o.classid = 'pg_class'::regclass AND o.objsubid <> 0 THEN o.objid
           WHEN o.classid = 'pg_class'::regclass THEN
               CASE c.relkind
                   WHEN 'i' THEN (SELECT indrelid FROM pg_index WHERE indexrelid = o.objid)
                   WHEN 'I' THEN (SELECT indrelid FROM pg_index WHERE indexrelid = o.objid)
                   WHEN 't' THEN (SELECT owner FROM toast_owner WHERE toast = o.objid LIMIT 1)
                   WHEN 'S' THEN (SELECT d.refobjid FROM pg_depend d
                                  WHERE d.classid = 'pg_class'::regclass AND d.objid = o.objid
                                    AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i')
                                  LIMIT 1)
               END
           WHEN o.classid = 'pg_constraint'::regclass THEN
               (SELECT NULLIF(conrelid, 0) FROM pg_constraint WHERE oid = o.objid)
           WHEN o.classid = 'pg_trigger'::regclass THEN (SELECT tgrelid FROM pg_trigger WHERE oid = o.objid)
           WHEN o.classid = 'pg_rewrite'::regclass THEN (SELECT ev_class FROM pg_rewrite WHERE oid = o.objid)
           WHEN o.classid = 'pg_policy'::regclass THEN (SELECT polrelid FROM pg_policy WHERE oid = o.objid)
           WHEN o.classid = 'pg_attrdef'::regclass THEN (SELECT adrelid FROM pg_attrdef WHERE oid = o.objid)
           WHEN o.classid = 'pg_publication_rel'::regclass THEN
               (SELECT prrelid FROM pg_publication_rel WHERE oid = o.objid)
           WHEN o.classid = 'pg_type'::regclass THEN
               (SELECT COALESCE(NULLIF(t.typrelid, 0), NULLIF(e.typrelid, 0))
                FROM pg_type t LEFT JOIN pg_type e ON e.oid = t.typelem WHERE t.oid = o.objid)
       END AS owner_rel,
       (SELECT inhparent FROM pg_inherits WHERE inhrelid = o.objid AND o.classid = 'pg_class'::regclass
        AND o.objsubid = 0 LIMIT 1) AS parent_rel,
       c.relispartition AS is_partition,
       CASE WHEN o.classid = 'pg_constraint'::regclass
            THEN (SELECT contype::text FROM pg_constraint WHERE oid = o.objid) END AS contype,
       CASE WHEN o.classid = 'pg_attrdef'::regclass
            THEN (SELECT quote_ident(n.nspname) || '.' || quote_ident(r.relname) || '.' || quote_ident(a.attname)
                  FROM pg_attrdef ad JOIN pg_class r ON r.oid = ad.adrelid
                  JOIN pg_namespace n ON n.oid = r.relnamespace
                  JOIN pg_attribute a ON a.attrelid = ad.adrelid AND a.attnum = ad.adnum
                  WHERE ad.oid = o.objid) END AS default_column
FROM obj o
LEFT JOIN LATERAL (
    SELECT c.relkind, c.relispartition
    FROM pg_class c
    WHERE o.classid = 'pg_class'::regclass AND c.oid = o.objid
    OFFSET 0
) AS c ON true
CROSS JOIN LATERAL pg_identify_object(o.classid, o.objid, o.objsubid) AS i
