-- Returns the settings it pins for the current transaction only: those that shape a row's text form
-- (dates, times, intervals, floats, bytea, money), so a content checksum taken at backup time and one
-- taken after a restore, in another session, compare equal.
SELECT set_config('DateStyle', 'ISO, YMD', true)       AS datestyle,
       set_config('IntervalStyle', 'postgres', true)   AS intervalstyle,
       set_config('TimeZone', 'UTC', true)             AS timezone,
       set_config('extra_float_digits', '1', true)     AS extra_float_digits,
       set_config('bytea_output', 'hex', true)         AS bytea_output,
       set_config('lc_monetary', 'C', true)            AS lc_monetary
