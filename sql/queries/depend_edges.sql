-- Returns the pg_depend edges around a set of objects, as findDependentObjects() walks them:
-- 'dependent' rows are objects that depend on a given object (forward edges, any deptype);
-- 'owner' rows are objects a given object is an internal part or extension member of (reverse
-- edges with deptype 'i' or 'e', which transfer the deletion to the owner).
WITH frontier AS (
    SELECT *
    FROM unnest(CAST(:classids AS oid[]), CAST(:objids AS oid[]), CAST(:objsubids AS int[]))
         AS f(classid, objid, objsubid)
)
SELECT 'dependent' AS direction,
       f.classid AS from_classid, f.objid AS from_objid, f.objsubid AS from_objsubid,
       d.classid, d.objid, d.objsubid, d.deptype::text AS deptype
FROM frontier f
JOIN pg_depend d
  ON d.refclassid = f.classid AND d.refobjid = f.objid
 AND (f.objsubid = 0 OR d.refobjsubid = f.objsubid)
UNION ALL
SELECT 'owner',
       f.classid, f.objid, f.objsubid,
       d.refclassid, d.refobjid, d.refobjsubid, d.deptype::text
FROM frontier f
JOIN pg_depend d
  ON d.classid = f.classid AND d.objid = f.objid
 AND (f.objsubid = 0 OR d.objsubid = f.objsubid)
WHERE d.deptype IN ('i', 'e')
