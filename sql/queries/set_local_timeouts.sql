-- Sets lock_timeout and statement_timeout for the current transaction only. Returns both values.
SELECT set_config('lock_timeout', :lock_timeout, true)           AS lock_timeout,
       set_config('statement_timeout', :statement_timeout, true) AS statement_timeout
