-- Returns one md5 over every pg_depend row that touches the given objects (as the referenced object,
-- or as the dependent one): if it is unchanged, so is everything DROP … CASCADE would reach from them.
-- Each object is looked up through pg_depend's two indexes (OFFSET 0 keeps each lookup a nested index
-- scan: a hash join would read all of pg_depend, which grows with the database).
WITH obj AS (
    SELECT DISTINCT classid, objid
    FROM unnest(CAST(:classids AS oid[]), CAST(:objids AS oid[])) AS o(classid, objid)
)
SELECT md5(coalesce(string_agg(edge, E'\n' ORDER BY edge), '')) AS fingerprint
FROM (
    SELECT e.edge
    FROM obj o
    CROSS JOIN LATERAL (
        SELECT concat_ws(',', d.classid, d.objid, d.objsubid, d.refclassid, d.refobjid, d.refobjsubid, d.deptype)
        FROM pg_depend d
        WHERE d.refclassid = o.classid AND d.refobjid = o.objid
        UNION ALL
        SELECT concat_ws(',', d.classid, d.objid, d.objsubid, d.refclassid, d.refobjid, d.refobjsubid, d.deptype)
        FROM pg_depend d
        WHERE d.classid = o.classid AND d.objid = o.objid
        OFFSET 0
    ) AS e(edge)
    GROUP BY e.edge
) edges
