-- A DO block (no result) that locks each relation of {oids} IN {mode} MODE with NOWAIT, trying again
-- every 2 ms, until {wait_ms} milliseconds have passed; then it raises lock_not_available.
-- For the locks a drop takes while it already holds others: a NOWAIT request never waits, so the
-- drop never waits while holding a lock and can never close a deadlock cycle with the application
-- (whose statement the deadlock detector would cancel). Placeholders are filled with psycopg2.sql
-- literals (an integer array, a lock mode from a fixed list, an integer); no identifier is pasted:
-- each oid becomes regclass, printed by the server.
DO $spin$
DECLARE
    deadline timestamptz := clock_timestamp() + make_interval(secs => {wait_ms} / 1000.0);
    rel regclass;
BEGIN
    FOREACH rel IN ARRAY CAST({oids} AS regclass[]) LOOP
        LOOP
            BEGIN
                EXECUTE 'LOCK TABLE ' || rel::text || ' IN ' || {mode} || ' MODE NOWAIT';
                EXIT;
            EXCEPTION WHEN lock_not_available THEN
                IF clock_timestamp() >= deadline THEN
                    RAISE EXCEPTION 'could not lock % without waiting within % ms', rel, {wait_ms}
                        USING ERRCODE = 'lock_not_available';
                END IF;
                PERFORM pg_sleep(0.002);
            END;
        END LOOP;
    END LOOP;
END
$spin$
