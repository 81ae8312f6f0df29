-- Returns what the rehearsed DROP removed, as recorded by the sql_drop event trigger.
SELECT classid, objid, objsubid, object_type, identity FROM pg_temp.safedrop_rehearsal
