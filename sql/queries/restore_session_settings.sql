-- Sets, for the current transaction only, what pg_restore's own session uses for the archive's
-- statements (an empty search_path: they qualify every name), and the given statement_timeout.
-- Returns the values set.
SELECT set_config('search_path', '', true)                         AS search_path,
       set_config('statement_timeout', :statement_timeout, true)  AS statement_timeout
