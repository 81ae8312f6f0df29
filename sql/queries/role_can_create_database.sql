-- Returns whether the current role may create a database (CREATEDB or superuser).
SELECT rolcreatedb OR rolsuper AS can_create
FROM pg_catalog.pg_roles
WHERE rolname = current_user
