-- Returns one row: which database this session is in — its name, the cluster's system identifier
-- (pg_control_system(), as text; NULL where this role may not call it) and the server's own address.
SELECT current_database() AS database,
       CASE WHEN has_function_privilege('pg_control_system()', 'EXECUTE')
            THEN (SELECT system_identifier::text FROM pg_control_system()) END AS system_identifier,
       host(inet_server_addr()) AS server_addr,
       inet_server_port() AS server_port
