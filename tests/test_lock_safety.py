"""Lock safety: a held target is waited for in short, retried attempts that never stall anyone for long.

Real sessions hold real locks; the tests watch safedrop's backends in ``pg_locks`` and
``pg_stat_activity`` (application_name ``safedrop``) instead of timing anything: "it retried" is
several distinct waiting backends, "it queued nobody on credits" is a reader of credits with a 100 ms
lock_timeout that never times out, and "nothing dropped" is an equal snapshot.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from typing import Any

import psycopg2
import pytest

from safedrop.errors import DropFailed
from safedrop.parameters import DropParameters
from safedrop.pg.lockschedule import LockSchedule, lock_waits
from safedrop.pg.pgserver import wait_until
from safedrop.pg.runlock import one_run_at_a_time
from tests.conftest import ROOT, SURVIVORS, TARGETS
from tests.helpers import BLOCKER_APP, Background, artifacts_of, credit_plan, drop_now, holding, run, session

HOT = ["credits", "tenants"]  # the targets' foreign-key parents: every request touches them
DEFAULTS = DropParameters(migration="drop_credit_allocation_tables")
FAST = dict(lock_timeout_ms=100, max_lock_timeout_ms=400)  # the largest timeout any query can wait: 400 ms
TEN_SECONDS = LockSchedule(first_timeout_ms=10_000, max_timeout_ms=10_000, budget_ms=30_000)


# --------------------------------------------------------------------------------------------------
# helpers (also used by the other lock, fault and secret tests)
# --------------------------------------------------------------------------------------------------


def waiting_safedrop(observer) -> dict[int, dict[str, Any]]:
    """safedrop backends waiting for a relation lock in this database: pid → what it waits for and holds.

    One query, so "waits for X" and "holds Y" come from the same pg_locks snapshot.
    """
    with observer.cursor() as cur:
        cur.execute(
            """
            SELECT w.pid, wc.relname AS waits_for,
                   coalesce(array_agg(hc.relname) FILTER (WHERE hc.relname IS NOT NULL), '{}') AS holds
            FROM pg_locks w
            JOIN pg_stat_activity a ON a.pid = w.pid
            JOIN pg_class wc ON wc.oid = w.relation
            LEFT JOIN pg_locks h ON h.pid = w.pid AND h.granted AND h.locktype = 'relation'
            LEFT JOIN pg_class hc ON hc.oid = h.relation AND hc.relnamespace = 'public'::regnamespace
            WHERE NOT w.granted AND a.application_name = 'safedrop' AND a.datname = current_database()
            GROUP BY w.pid, wc.relname
            """
        )
        return {pid: {"waits_for": waits, "holds": set(holds)} for pid, waits, holds in cur.fetchall()}


def read_quickly(conn, table: str, lock_timeout: str) -> int:
    """A reader that gives up (raises) instead of queueing longer than ``lock_timeout``."""
    with conn.cursor() as cur:
        cur.execute(f"SET lock_timeout = '{lock_timeout}'")
        cur.execute(f"SELECT count(*) FROM {table}")
        return cur.fetchone()[0]


@pytest.fixture
def env_url(guide_db, monkeypatch):
    monkeypatch.setenv("DATABASE_URL", guide_db.url)
    return guide_db


# --------------------------------------------------------------------------------------------------
# a held target: retried, nobody queued for long, dropped once it is free
# --------------------------------------------------------------------------------------------------


@pytest.mark.usefixtures("prefect_harness")
def test_a_held_target_is_retried_without_stalling_anyone_then_dropped(env_url, tmp_path):
    db = env_url
    before = {t: db.count(t) for t in SURVIVORS}
    observer = session(db, "lock-test-observer", autocommit=True)
    reader = session(db, "lock-test-reader", autocommit=True)
    seen: dict[int, dict[str, Any]] = {}
    try:
        with holding(db, "SELECT * FROM credit_allocations LIMIT 1") as blocker:
            job = Background(lambda: run(backup_dir=str(tmp_path / "b"), lock_wait_budget_s=30, **FAST))

            def waited_three_times() -> bool:
                now = waiting_safedrop(observer)
                if now:
                    # While safedrop waits for a target, the hot parents stay free: a reader that would
                    # rather fail than queue 100 ms gets through, and safedrop holds no lock on them.
                    for table in HOT:
                        read_quickly(reader, table, "100ms")
                    # A reader of the target queues behind the waiting DROP at most one lock_timeout
                    # (400 ms at most here); 2 s would only run out if it queued like a plain DROP.
                    read_quickly(reader, "credit_allocations", "2s")
                seen.update(now)
                return len(seen) >= 3  # three attempts, each a new backend: two timed out

            wait_until(waited_three_times, deadline_s=30, interval_s=0.01, what="three lock-wait attempts")
            assert blocker.status == psycopg2.extensions.STATUS_IN_TRANSACTION  # still holding
        state, report = job.join()
    finally:
        observer.close()
        reader.close()

    assert all(w["waits_for"] in TARGETS for w in seen.values()), seen
    assert all(not (w["holds"] & {*HOT, *SURVIVORS}) for w in seen.values()), seen
    assert state.is_completed() and report.status == "succeeded", report.reasons
    assert not any(db.exists(t) for t in TARGETS)
    assert {t: db.count(t) for t in SURVIVORS} == before
    drop_md = artifacts_of(str(state.state_details.flow_run_id))["drop-credit-allocation-tables-drop"].data
    attempts, timeouts = _attempts(drop_md)
    assert timeouts >= 2 and attempts == timeouts + 1, drop_md


def _attempts(markdown: str) -> tuple[int, int]:
    found = re.search(r"after (\d+) lock-safe attempt\(s\) \((\d+) lock timeouts", markdown)
    assert found, markdown
    return int(found[1]), int(found[2])


@pytest.mark.usefixtures("prefect_harness")
@pytest.mark.parametrize("held", TARGETS)
def test_a_blocker_longer_than_the_budget_is_named_and_nothing_is_dropped(env_url, tmp_path, held):
    """Either target held past the budget: the run fails naming the blocker, and nothing changed at all.

    Holding ``credit_allocation_transactions`` is the case where the other target's foreign keys to
    credits and tenants are free to drop: they must not go unless the tables go too.
    """
    db = env_url
    before = db.snapshot()
    with holding(db, f"SELECT * FROM {held} LIMIT 1") as blocker:
        pid = blocker.get_backend_pid()
        state, report = run(backup_dir=str(tmp_path / "b"), lock_wait_budget_s=2, **FAST)
    assert state.is_failed() and report.status == "failed", report.reasons
    [reason] = report.reasons
    assert reason.startswith("gave up on the table drop after "), reason
    assert "within the lock-wait budget 2 s (lock_timeout up to 400 ms)" in reason
    assert f"blocked by: pid {pid} ({BLOCKER_APP}, idle in transaction, transaction open " in reason
    assert f"holds AccessShareLock on public.{held}): SELECT * FROM {held} LIMIT 1" in reason
    assert reason.endswith("Let it finish (or end it) and re-run")
    assert db.snapshot() == before  # the targets, their foreign keys to credits and tenants, every row
    assert all(db.exists(t) for t in TARGETS)


@pytest.mark.usefixtures("prefect_harness")
def test_a_survivor_held_exclusively_is_estimated_then_the_dump_stops_naming_the_holder(env_url, tmp_path):
    """Counting credits (a table that must survive, counted only for the report) gives way to the
    planner's estimate; the dump, which must read credits, waits for it at most the lock-wait budget
    (pg_dump --lock-wait-timeout), then the run stops, names that session, and changes nothing."""
    db = env_url
    before = db.snapshot()
    with holding(db, "LOCK TABLE credits IN ACCESS EXCLUSIVE MODE") as blocker:
        pid = blocker.get_backend_pid()
        state, report = run(backup_dir=str(tmp_path / "b"), lock_wait_budget_s=1)
    assert state.is_failed() and report.status == "stopped", report.reasons
    [reason] = report.reasons
    assert reason.startswith("pg_dump could not lock public.credits within the lock-wait budget 1 s; "), (
        reason
    )
    assert f"blocked by: pid {pid} ({BLOCKER_APP}, idle in transaction" in reason, reason
    assert "holds AccessExclusiveLock on public.credits" in reason, reason
    assert reason.endswith("the drop did not run — let it finish (or end it) and re-run")
    assert db.snapshot() == before
    assert [f.name for f in (tmp_path / "b").iterdir()] == []  # the partial archive was removed


def test_drop_targets_counts_attempts_and_lock_timeouts(guide_db):
    """The plain function, no Prefect: the DropResult says how many attempts and lock timeouts it took."""
    migration, oids, approved = credit_plan(guide_db)
    observer = session(guide_db, "lock-test-observer", autocommit=True)
    seen: set[int] = set()
    try:
        with holding(guide_db, "LOCK TABLE credit_allocation_transactions IN ROW EXCLUSIVE MODE"):
            job = Background(
                lambda: drop_now(
                    guide_db.db,
                    (migration, oids, approved),
                    LockSchedule(first_timeout_ms=100, max_timeout_ms=400, budget_ms=30_000),
                )
            )

            def waited(n: int) -> bool:
                seen.update(waiting_safedrop(observer))
                return len(seen) >= n

            wait_until(lambda: waited(2), deadline_s=30, interval_s=0.01, what="two lock-wait attempts")
        result = job.join()
    finally:
        observer.close()
    assert result.dropped == [f"public.{t}" for t in TARGETS]
    assert result.attempts >= 2 and result.lock_timeouts == result.attempts - 1
    assert not any(guide_db.exists(t) for t in TARGETS)


def test_a_held_hot_parent_is_named_too(guide_db):
    """A long reader of credits (the targets' FK parent) blocks the drop; the message names that reader."""
    migration, oids, approved = credit_plan(guide_db)
    before = guide_db.snapshot()
    with holding(guide_db, "SELECT * FROM credits LIMIT 1") as blocker:
        pid = blocker.get_backend_pid()
        with pytest.raises(DropFailed) as caught:
            drop_now(
                guide_db.db,
                (migration, oids, approved),
                LockSchedule(first_timeout_ms=100, max_timeout_ms=200, budget_ms=1_000),
            )
    message = str(caught.value)
    assert f"blocked by: pid {pid} ({BLOCKER_APP}, idle in transaction" in message, message
    assert "holds AccessShareLock on public.credits" in message
    assert guide_db.snapshot() == before


def safedrop_lock_state(observer) -> tuple[bool, bool]:
    """(a safedrop backend holds ACCESS EXCLUSIVE on credits, a safedrop backend waits for any lock)."""
    with observer.cursor() as cur:
        cur.execute(
            "SELECT coalesce(bool_or(l.granted AND l.relation = 'credits'::regclass "
            "AND l.mode = 'AccessExclusiveLock'), false), coalesce(bool_or(NOT l.granted), false) "
            "FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
            "WHERE a.application_name = 'safedrop' AND a.datname = current_database()"
        )
        holds, waits = cur.fetchone()
        return holds, waits


def test_holding_one_parent_it_never_waits_for_another_so_the_application_never_loses_a_deadlock(guide_db):
    """An INSERT into credit_usage locks tenants, then credits; the drop wants credits, then tenants.

    If the drop waited for tenants while holding credits, the cycle would last until somebody's deadlock
    check (1 s after *its own* wait began) cancelled a statement — often the application's: measured,
    2 of 16 runs of bench/lock_safety.py's parent-held scenario lost INSERTs with SQLSTATE 40P01. Holding
    a parent, the drop takes every further lock NOWAIT: it never waits, so no cycle forms; it lets go
    within half of deadlock_timeout and tries again the other way round.
    """
    migration, oids, approved = credit_plan(guide_db)
    observer = session(guide_db, "lock-test-observer", autocommit=True)
    app = session(guide_db, "lock-test-app")
    observed: list[tuple[bool, bool]] = []
    try:
        with app.cursor() as cur:
            cur.execute("SELECT 1 FROM tenants WHERE id = 1 FOR KEY SHARE")  # an FK check of the insert
        job = Background(
            lambda: drop_now(
                guide_db.db,
                (migration, oids, approved),
                LockSchedule(first_timeout_ms=5_000, max_timeout_ms=5_000, budget_ms=30_000),
            )
        )
        wait_until(
            lambda: safedrop_lock_state(observer)[0],
            deadline_s=30,
            interval_s=0.002,
            what="the drop to hold credits",
        )

        def second_check() -> None:
            with app.cursor() as cur:
                cur.execute("SELECT 1 FROM credits WHERE id = 1 FOR KEY SHARE")  # would close the cycle

        app_job = Background(second_check)
        while app_job.thread.is_alive():  # until the drop lets go of credits and the check goes through
            observed.append(safedrop_lock_state(observer))
        app_job.join()  # no DeadlockDetected
        app.commit()
        result = job.join()
    finally:
        app.rollback()
        app.close()
        observer.close()
    assert any(holds for holds, _ in observed)  # the application really queued behind the drop's credits
    assert not any(holds and waits for holds, waits in observed), "the drop waited while holding credits"
    assert result.dropped == [f"public.{t}" for t in TARGETS]
    assert result.lock_timeouts >= 1


# --------------------------------------------------------------------------------------------------
# the two steps: EXCLUSIVE for the recheck (readers go on), ACCESS EXCLUSIVE only for the drop itself
# --------------------------------------------------------------------------------------------------


def test_while_it_rechecks_it_blocks_writers_of_the_targets_but_no_reader(guide_db):
    """A reader of a target in an open transaction: safedrop holds both targets IN EXCLUSIVE MODE (its
    recheck done) and waits for ACCESS EXCLUSIVE. Meanwhile the other target can still be read but not
    written; once the reader ends, the drop goes."""
    migration, oids, approved = credit_plan(guide_db)
    observer = session(guide_db, "lock-test-observer", autocommit=True)
    other = session(guide_db, "lock-test-reader", autocommit=True)
    try:
        with holding(guide_db, "SELECT * FROM credit_allocation_transactions LIMIT 1"):
            job = Background(
                lambda: drop_now(guide_db.db, (migration, oids, approved), TEN_SECONDS, record_in_ledger=True)
            )
            waiting = wait_until(
                lambda: next(iter(waiting_safedrop(observer).values()), None),
                deadline_s=30,
                interval_s=0.01,
                what="the drop to wait for its upgrade",
            )
            assert waiting["waits_for"] == "credit_allocation_transactions", waiting
            assert set(TARGETS) <= waiting["holds"] and not waiting["holds"] & {*HOT, *SURVIVORS}, waiting
            with observer.cursor() as cur:
                cur.execute(
                    "SELECT c.relname, l.mode FROM pg_locks l JOIN pg_class c ON c.oid = l.relation "
                    "JOIN pg_stat_activity a ON a.pid = l.pid WHERE a.application_name = 'safedrop' "
                    "AND l.granted AND l.mode <> 'AccessShareLock' AND c.relname = ANY (%s) ORDER BY 1",
                    (TARGETS,),
                )
                assert cur.fetchall() == [(t, "ExclusiveLock") for t in sorted(TARGETS)]
            assert read_quickly(other, "credit_allocations", "100ms") == 0
            with pytest.raises(psycopg2.errors.LockNotAvailable), other.cursor() as cur:
                cur.execute("SET lock_timeout = '100ms'; DELETE FROM credit_allocations")
        result = job.join()
    finally:
        other.close()
        observer.close()
    assert result.dropped == [f"public.{t}" for t in TARGETS]
    assert result.guard == "DROP TABLE … RESTRICT"
    assert 0 < result.all_blocked_ms < result.writes_blocked_ms


LATE_VIEW = "late_allocations"


@pytest.mark.parametrize("allowed_view", [False, True], ids=["restrict", "cascade"])
def test_a_dependant_committed_while_it_waits_for_the_upgrade_stops_the_drop(guide_db, allowed_view):
    """A view created (uncommitted, so the recheck cannot see it) before the drop, committed while the drop
    waits for ACCESS EXCLUSIVE: DROP … RESTRICT refuses it, or with an allowed view (so the migration's
    CASCADE runs) the fingerprint taken under ACCESS EXCLUSIVE differs. Nothing is dropped either way."""
    if allowed_view:
        guide_db.execute("CREATE VIEW org_overview AS SELECT tenant_id FROM credit_allocations")
    allow = ["public.org_overview"] if allowed_view else []
    plan = credit_plan(guide_db, allow)
    before = guide_db.snapshot()
    observer = session(guide_db, "lock-test-observer", autocommit=True)
    creator = session(guide_db, "lock-test-ddl")
    try:
        with creator.cursor() as cur:
            cur.execute(f"CREATE VIEW {LATE_VIEW} AS SELECT id FROM credit_allocations")
        job = Background(
            lambda: drop_now(guide_db.db, plan, TEN_SECONDS, allow_cascade=allow, record_in_ledger=True)
        )
        wait_until(
            lambda: any(w["waits_for"] == "credit_allocations" for w in waiting_safedrop(observer).values()),
            deadline_s=30,
            interval_s=0.01,
            what="the drop to wait for ACCESS EXCLUSIVE",
        )
        creator.commit()
        with pytest.raises(DropFailed) as caught:
            job.join()
    finally:
        creator.close()
        observer.close()
    message = str(caught.value)
    assert message.startswith("the database changed while the drop waited for its lock ("), message
    if allowed_view:
        assert "(the dependencies of the targets moved)" in message, message
    else:
        assert f"view {LATE_VIEW} depends on table credit_allocations" in message, message
    assert message.endswith("nothing was dropped — re-run so the checks and the backup see it")
    assert guide_db.exists(LATE_VIEW) and all(guide_db.exists(t) for t in TARGETS)
    guide_db.execute(f"DROP VIEW {LATE_VIEW}")
    assert guide_db.snapshot() == before  # foreign keys, allowed view, no ledger: all as they were


def test_lock_waits_share_the_attempt_and_keep_later_waits_short():
    assert lock_waits(800, 1, 500) == [800]
    assert lock_waits(800, 3, 500) == [400, 200, 200]  # the later ones together: half of what is left…
    assert lock_waits(3000, 3, 500) == [2500, 250, 250]  # …and within half of deadlock_timeout
    assert lock_waits(0, 3, 500) == [1, 1, 1]  # never 0, which would mean "wait forever"
    for remaining, steps in ((1, 2), (10, 4), (5000, 6), (120, 2)):
        waits = lock_waits(remaining, steps, 500)
        assert len(waits) == steps and sum(waits[1:]) <= 500 and all(w >= 1 for w in waits)
        assert sum(waits) <= max(remaining, steps)


# --------------------------------------------------------------------------------------------------
# autovacuum: the schedule must outgrow deadlock_timeout, after which autovacuum yields
# --------------------------------------------------------------------------------------------------


def _timeouts_until(schedule: LockSchedule, monkeypatch, limit_ms: int) -> list[tuple[float, int]]:
    """(elapsed ms, lock_timeout ms) of each attempt, every attempt timing out, on a simulated clock."""
    now = [0.0]
    monkeypatch.setattr("safedrop.pg.lockschedule.time.sleep", lambda s: now.__setitem__(0, now[0] + s))
    out = []
    for _attempt, timeout_ms in schedule.attempts(clock=lambda: now[0]):
        out.append((now[0] * 1000, timeout_ms))
        now[0] += timeout_ms / 1000  # the attempt waits its whole lock_timeout, then fails
        if timeout_ms > limit_ms:
            break
    return out


@pytest.mark.parametrize(
    "schedule",
    [LockSchedule(), LockSchedule.from_parameters(DEFAULTS)],
    ids=["LockSchedule()", "flow-defaults"],
)
def test_the_default_schedule_outgrows_deadlock_timeout_early_in_its_budget(schedule, monkeypatch):
    attempts = _timeouts_until(schedule, monkeypatch, limit_ms=1000)
    elapsed_ms, timeout_ms = attempts[-1]
    assert timeout_ms > 1000, attempts  # a running autovacuum gives way after deadlock_timeout (1 s)
    assert elapsed_ms + timeout_ms < schedule.budget_ms / 4, attempts
    assert [t for _, t in attempts] == sorted(t for _, t in attempts)  # it only grows


def test_a_running_autovacuum_on_a_target_does_not_fail_the_drop(pg, guide_db):
    """A real autovacuum worker (slowed to a crawl) on credit_allocations; the default schedule wins."""
    db = guide_db
    db.execute(
        "ALTER TABLE credit_allocations SET (autovacuum_vacuum_threshold = 0, "
        "autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_cost_delay = 100, "
        "autovacuum_vacuum_cost_limit = 1);"
        "INSERT INTO credit_allocations (tenant_id, credit_id, amount, period_start, period_end) "
        "SELECT 1 + g % 25, 1 + g % 25, g, '2024-01-01', '2024-02-01' FROM generate_series(1, 20000) g;"
        "DELETE FROM credit_allocations;"
    )
    pg.psql("ALTER SYSTEM SET autovacuum_naptime = '1s'; SELECT pg_reload_conf();")
    observer = session(db, "lock-test-observer", autocommit=True)
    try:

        def autovacuum_running() -> bool:
            with observer.cursor() as cur:
                cur.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'autovacuum worker' "
                    "AND datname = current_database() AND query LIKE '%credit_allocations%'"
                )
                return cur.fetchone()[0] > 0

        wait_until(
            autovacuum_running, deadline_s=30, interval_s=0.05, what="autovacuum on credit_allocations"
        )
    finally:
        pg.psql("ALTER SYSTEM RESET autovacuum_naptime; SELECT pg_reload_conf();")
    migration, oids, approved = credit_plan(db)
    try:
        assert autovacuum_running()  # still crawling: the drop has to make it yield
        result = drop_now(db.db, (migration, oids, approved), LockSchedule.from_parameters(DEFAULTS))
    finally:
        observer.close()
    assert result.dropped == [f"public.{t}" for t in TARGETS]
    # The vacuum really was in the way: the attempts shorter than deadlock_timeout (500, 750 ms) lost.
    assert result.lock_timeouts >= 1, result
    assert not any(db.exists(t) for t in TARGETS)


# --------------------------------------------------------------------------------------------------
# one run at a time
# --------------------------------------------------------------------------------------------------


@pytest.mark.usefixtures("prefect_harness")
def test_a_second_run_stops_at_once_naming_the_first(env_url, tmp_path):
    db = env_url
    before = db.snapshot()
    with one_run_at_a_time(db.db, "run-a-1234"):
        state, report = run(backup_dir=str(tmp_path / "b"))
    assert state.is_failed() and report.status == "stopped", report.reasons
    [reason] = report.reasons
    assert (
        f"another safedrop run is already working on {db.db.display}: safedrop run run-a-1234 (pid "
    ) in reason, reason
    assert reason.endswith("nothing was changed — wait for it to finish, then re-run")
    assert db.snapshot() == before
    assert not (tmp_path / "b").exists()


HOLD_THE_RUN_LOCK = """
import sys, time
from safedrop.pg.database import database_from_url
from safedrop.pg.runlock import one_run_at_a_time
with one_run_at_a_time(database_from_url(sys.argv[1]), "crashed-run"):
    print("locked", flush=True)
    time.sleep(600)
"""


@pytest.mark.usefixtures("prefect_harness")
def test_a_killed_run_leaves_no_stale_lock(env_url, tmp_path):
    db = env_url
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_THE_RUN_LOCK, db.url], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        holder_backend = db.scalar(
            "SELECT pid FROM pg_stat_activity WHERE application_name = "
            "'safedrop run crashed-run' AND datname = current_database()"
        )
        assert holder_backend
        os.kill(holder.pid, signal.SIGKILL)  # no cleanup code runs
        holder.wait(10)
    finally:
        if holder.poll() is None:
            holder.kill()
    # The server notices the closed socket and ends the session, and with it the lock.
    wait_until(
        lambda: not db.scalar("SELECT count(*) FROM pg_stat_activity WHERE pid = :p", p=holder_backend),
        deadline_s=10,
        what="the killed run's session to end",
    )
    state, report = run(backup_dir=str(tmp_path / "b"))
    assert state.is_completed() and report.status == "succeeded", report.reasons
    assert not any(db.exists(t) for t in TARGETS)
