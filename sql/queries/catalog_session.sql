-- Settings for a transaction that walks the catalogs (the dependency scan): JIT off. A walk over
-- thousands of objects runs many cheap index lookups per object; their summed cost estimate passes
-- jit_above_cost, and compiling the query then takes about a second — 15x the query itself.
SELECT set_config('jit', 'off', true) AS jit
