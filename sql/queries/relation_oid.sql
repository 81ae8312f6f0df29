-- Returns the oid of a relation named as a client tool prints it (possibly qualified and quoted), or
-- NULL when there is none.
SELECT to_regclass(:name)::oid AS oid
