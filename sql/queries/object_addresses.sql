-- Returns, for each given catalog object address, the address in the portable form
-- pg_get_object_address() takes back (type, names, args): how a restore later asks whether the
-- object exists again, without relying on oids.
SELECT o.classid, o.objid, o.objsubid, a.type, a.object_names, a.object_args
FROM unnest(CAST(:classids AS oid[]), CAST(:objids AS oid[]), CAST(:objsubids AS int[]))
     AS o(classid, objid, objsubid)
CROSS JOIN LATERAL pg_identify_object_as_address(o.classid, o.objid, o.objsubid) AS a
