-- Returns the session holding safedrop's advisory lock for this database: pid, application_name
-- (safedrop sets it to name the flow run), client address and since when it has been connected.
SELECT a.pid, a.application_name, a.client_addr::text AS client_addr, a.backend_start, a.usename AS user_name
FROM pg_locks l
JOIN pg_stat_activity a ON a.pid = l.pid
WHERE l.locktype = 'advisory'
  AND l.classid = hashtext('safedrop')::oid
  AND l.objid = hashtext(current_database())::oid
  AND l.objsubid = 2
  AND l.granted
  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
