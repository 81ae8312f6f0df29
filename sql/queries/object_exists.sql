-- Returns the catalog address of the object named in pg_identify_object_as_address() form; raises
-- undefined_object (or undefined_table, undefined_function, …) when no such object exists. Run it
-- inside a savepoint.
SELECT classid, objid, objsubid
FROM pg_get_object_address(:type, CAST(:names AS text[]), CAST(:args AS text[]))
