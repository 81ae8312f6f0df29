-- Returns the pg_depend edges around a set of objects, as findDependentObjects() walks them:
-- 'dependent' rows are objects that depend on a given object (forward edges, any deptype);
-- 'owner' rows are objects a given object is an internal part or extension member of (reverse
-- edges with deptype 'i' or 'e', which transfer the deletion to the owner).
-- Each object is looked up through pg_depend's two indexes (OFFSET 0 keeps each lookup a nested index
-- scan: a hash join would read all of pg_depend once per step of the walk, and pg_depend grows with
-- the database, not with what is dropped).
WITH frontier AS (
    SELECT *
    FROM unnest(CAST(:classids AS oid[]), CAST(:objids AS oid[]), CAST(:objsubids AS int[]))
         AS f(classid, objid, objsubid)
)
SELECT e.direction,
       f.classid AS from_classid, f.objid AS from_objid, f.objsubid AS from_objsubid,
       e.classid, e.objid, e.objsubid, e.deptype
FROM frontier f
CROSS JOIN LATERAL (
    SELECT 'dependent' AS direction, d.classid, d.objid, d.objsubid, d.deptype::text AS deptype
    FROM pg_depend d
    WHERE d.refclassid = f.classid AND d.refobjid = f.objid
      AND (f.objsubid = 0 OR d.refobjsubid = f.objsubid)
    UNION ALL
    SELECT 'owner', d.refclassid, d.refobjid, d.refobjsubid, d.deptype::text
    FROM pg_depend d
    WHERE d.classid = f.classid AND d.objid = f.objid
      AND (f.objsubid = 0 OR d.objsubid = f.objsubid)
      AND d.deptype IN ('i', 'e')
    OFFSET 0
) AS e
