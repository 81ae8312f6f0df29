-- Returns one md5 over every pg_depend row that touches the given objects (as the referenced object,
-- or as the dependent one): if it is unchanged, so is everything DROP … CASCADE would reach from them.
WITH obj AS (
    SELECT *
    FROM unnest(CAST(:classids AS oid[]), CAST(:objids AS oid[])) AS o(classid, objid)
)
SELECT md5(coalesce(string_agg(row, E'\n' ORDER BY row), '')) AS fingerprint
FROM (
    SELECT concat_ws(',', d.classid, d.objid, d.objsubid, d.refclassid, d.refobjid, d.refobjsubid, d.deptype) AS row
    FROM pg_depend d JOIN obj o ON d.refclassid = o.classid AND d.refobjid = o.objid
    UNION
    SELECT concat_ws(',', d.classid, d.objid, d.objsubid, d.refclassid, d.refobjid, d.refobjsubid, d.deptype)
    FROM pg_depend d JOIN obj o ON d.classid = o.classid AND d.objid = o.objid
) rows
