-- Returns whether the server process :pid still exists (e.g. a session whose client went away in the
-- middle of a COMMIT, which it finishes before it notices).
SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = :pid) AS alive
