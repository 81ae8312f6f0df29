-- Returns whether a relation with the given (possibly qualified) name exists.
SELECT to_regclass(:name) IS NOT NULL AS present
