"""Faults in the middle of a run: the drop's backend killed while it holds the targets, pg_dump killed,
pg_restore killed.

The backend is really terminated (pg_terminate_backend) while it provably holds the targets and waits
for a parent's lock we hold; the real pg_dump and pg_restore die by SIGKILL while they wait for a lock we hold.
Afterwards the targets are all there or all gone, the run says what happened in one line, no session
is left queued, and a re-run finishes. (tests/test_deployments.py cancels a deployment run mid-backup
through a real worker.)
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
from prefect.flow_runs import resume_flow_run

from safedrop.errors import DropFailed
from safedrop.pg.database import database_from_url
from safedrop.pg.lockschedule import LockSchedule
from safedrop.pg.pgserver import wait_until
from safedrop.pg.runlock import lock_label
from tests.conftest import SURVIVORS, TARGETS
from tests.helpers import Background, credit_plan, drop_now, holding, run, session
from tests.pgproxy import CommitCutter

pytestmark = pytest.mark.usefixtures("prefect_harness")

VIEW = "org_credit_overview"


@pytest.fixture
def env_url(guide_db, monkeypatch):
    monkeypatch.setenv("DATABASE_URL", guide_db.url)
    return guide_db


def safedrop_waiting_on(observer, relation: str) -> int | None:
    """pid of the safedrop backend of this database waiting for a lock on ``relation``."""
    with observer.cursor() as cur:
        cur.execute(
            "SELECT a.pid FROM pg_stat_activity a JOIN pg_locks l ON l.pid = a.pid AND NOT l.granted "
            "WHERE a.application_name = 'safedrop' AND a.datname = current_database() "
            "AND a.wait_event_type = 'Lock' AND l.relation = to_regclass(%s)",
            (relation,),
        )
        row = cur.fetchone()
        return row[0] if row else None


def test_the_drop_backend_killed_while_holding_the_targets_drops_nothing_and_a_rerun_finishes(
    env_url, tmp_path
):
    db = env_url
    db.execute(f"CREATE VIEW {VIEW} AS SELECT tenant_id, sum(amount) FROM credit_allocations GROUP BY 1")
    before = db.snapshot()
    counts = {t: db.count(t) for t in SURVIVORS}
    params = dict(
        allow_cascade=[f"public.{VIEW}"],
        lock_timeout_ms=10_000,
        max_lock_timeout_ms=10_000,
        lock_wait_budget_s=60,
    )
    observer = session(db, "fault-test-observer", autocommit=True)
    try:
        # A reader of the targets' parents: the drop gets the targets, then waits for the first parent
        # (the only lock it ever waits for while holding others).
        with holding(db, "SELECT 1 FROM credits, tenants LIMIT 1"):
            job = Background(lambda: run(backup_dir=str(tmp_path / "b1"), **params))
            pid = wait_until(
                lambda: safedrop_waiting_on(observer, "credits") or safedrop_waiting_on(observer, "tenants"),
                deadline_s=60,
                what="the drop to wait for a parent",
            )
            with observer.cursor() as cur:
                cur.execute(  # it holds the targets at this moment: killed mid-drop, not before it
                    "SELECT count(*) FROM pg_locks WHERE pid = %s AND granted AND mode = 'AccessExclusiveLock' "
                    "AND relation = ANY (ARRAY[to_regclass('credit_allocations'), "
                    "to_regclass('credit_allocation_transactions')])",
                    (pid,),
                )
                assert cur.fetchone()[0] == 2
                cur.execute("SELECT pg_terminate_backend(%s)", (pid,))
            state, report = job.join()
    finally:
        observer.close()

    assert state.is_failed() and report.status == "failed", report.reasons
    [reason] = report.reasons
    assert reason.startswith("the drop failed and was rolled back, no table was dropped: "), reason
    # libpq reports the server's FATAL or, when the socket closes first, the closed connection
    assert reason.endswith(
        ("terminating connection due to administrator command", "server closed the connection unexpectedly")
    ), reason
    assert "\n" not in reason and "Traceback" not in state.message
    assert report.dropped == []
    assert all(db.exists(t) for t in TARGETS) and db.exists(VIEW)  # all present, view and FKs included
    assert db.snapshot() == before

    state, report = run(backup_dir=str(tmp_path / "b2"), **params)
    assert state.is_completed() and report.status == "succeeded", report.reasons
    assert not any(db.exists(t) for t in TARGETS) and not db.exists(VIEW)
    assert {t: db.count(t) for t in SURVIVORS} == counts


def test_pg_dump_killed_mid_backup_stops_before_the_drop_and_leaves_no_file(env_url, tmp_path):
    """The real pg_dump, held at its first lock (a session of ours holds tenants), dies by SIGKILL: the run
    stops before the drop, names the signal, and leaves no file behind."""
    db = env_url
    before = db.snapshot()
    backups = tmp_path / "b"
    with holding(db, "LOCK TABLE tenants IN ACCESS EXCLUSIVE MODE"):  # no precheck reads tenants
        job = Background(lambda: run(backup_dir=str(backups)))
        pid = wait_until(
            lambda: _pg_dump_waiting(db, backups), deadline_s=60, what="pg_dump to wait for tenants"
        )
        os.kill(pid, signal.SIGKILL)
        state, report = job.join()
        # its session, queued behind our lock, notices the dead client (client_connection_check_interval)
        wait_until(lambda: not _pg_dump_sessions(db), deadline_s=10, what="pg_dump's session to end")
    assert state.is_failed() and report.status == "stopped", report.reasons
    [reason] = report.reasons
    assert reason.startswith("pg_dump was killed by signal SIGKILL before it finished"), reason
    assert reason.endswith("the drop did not run")
    assert not backups.exists() or [p for p in backups.rglob("*") if p.is_file()] == []
    assert report.backup is None and report.dropped == []
    assert db.snapshot() == before


def _pg_dump_sessions(db) -> int:
    return db.scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'safedrop pg_dump' "
        "AND datname = current_database()"
    )


def _tool_waiting(db, tool: str, backups: Path, *flags: bytes) -> int | None:
    """pid of the real ``tool`` (pg_dump, pg_restore) working with ``backups`` (its argv holding
    ``flags`` too), once its session waits for a lock."""
    waiting = db.scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = :app "
        "AND datname = current_database() AND wait_event_type = 'Lock'",
        app=f"safedrop {tool}",
    )
    if not waiting:
        return None
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if (
                Path(argv[0].decode()).name == tool
                and all(f in argv for f in flags)
                and any(str(backups).encode() in a for a in argv)
            ):
                return int(entry.name)
    return None


def _pg_dump_waiting(db, backups) -> int | None:
    return _tool_waiting(db, "pg_dump", backups)


# --------------------------------------------------------------------------------------------------
# the connection lost during the drop's COMMIT: the truth is read back, not guessed
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("committed", [True, False], ids=["commit-reached-the-server", "commit-lost"])
def test_a_connection_lost_during_commit_reports_what_the_database_says(guide_db, committed):
    """A proxy cuts the drop's connection at its COMMIT — after passing it on (the server commits, the
    run never hears back) or instead of passing it on (the server rolls back). Either way the run
    reads the catalog and its ledger again and reports what is true."""
    migration, oids, approved = credit_plan(guide_db)
    before = guide_db.snapshot()
    with CommitCutter(upstream_port=guide_db.server.port, pass_commit=committed) as proxy:
        db = database_from_url(proxy.url(guide_db.url), "test")
        job = Background(
            lambda: drop_now(
                db,
                (migration, oids, approved),
                LockSchedule(budget_ms=20_000),
                record_in_ledger=True,
                flow_run_id="lost-commit-test",
            )
        )
        job.wait(120)
        assert proxy.cut.is_set()  # the COMMIT really was cut
    if committed:
        result = job.join()
        assert result.dropped == [f"public.{t}" for t in TARGETS]
        [warning] = result.warnings
        assert warning.startswith("the connection was lost during the drop's COMMIT (")
        assert warning.endswith("the catalog and the ledger, read again, show that it committed")
        assert not any(guide_db.exists(t) for t in TARGETS)
        assert guide_db.scalar(
            "SELECT count(*) FROM safedrop.dropped_tables WHERE flow_run_id = 'lost-commit-test'"
        ) == len(TARGETS)
    else:
        with pytest.raises(DropFailed) as caught:
            job.join()
        message = str(caught.value)
        assert message.startswith("the connection was lost during the drop's COMMIT ("), message
        assert message.endswith("the database shows it did not commit: no table was dropped — re-run")
        assert guide_db.snapshot() == before


# --------------------------------------------------------------------------------------------------
# the run lock lost while the run waits (a DBA ends the idle session): the drop refuses
# --------------------------------------------------------------------------------------------------


def test_a_run_lock_lost_while_waiting_for_approval_stops_the_drop(env_url, tmp_path):
    from tests.test_approval import digest_in, paused_run, shown_plan, start_run

    db = env_url
    before = db.snapshot()
    job, name = start_run(tmp_path)
    flow_run = paused_run(name)
    lock_session = db.scalar(
        "SELECT pid FROM pg_stat_activity WHERE application_name = :app AND datname = current_database()",
        app=lock_label(str(flow_run.id)),
    )
    assert lock_session, "the run lock's session"
    db.scalar("SELECT pg_terminate_backend(:pid)", pid=lock_session)  # as a DBA cleaning up idle sessions
    resume_flow_run(
        flow_run.id,
        run_input={"approve": True, "evidence_digest": digest_in(shown_plan(flow_run)), "approver": "test"},
    )
    state, report = job.join()
    assert state.is_failed() and report.status == "stopped", report.reasons
    [reason] = report.reasons
    assert reason.startswith(f"safedrop's run lock was lost: its session (pid {lock_session}) has ended "), (
        reason
    )
    assert reason.endswith("nothing was dropped — re-run"), reason
    assert db.snapshot() == before


def test_idle_session_timeout_does_not_end_the_run_lock(env_url, tmp_path):
    """A database whose sessions end after 1 s idle: the run lock's session, idle for the whole wait for
    approval, turns that off for itself and still holds the lock when the drop checks."""
    from tests.test_approval import digest_in, paused_run, shown_plan, start_run

    db = env_url
    db.execute(f"ALTER DATABASE {db.name} SET idle_session_timeout = '1s'")
    job, name = start_run(tmp_path)
    flow_run = paused_run(name)
    app = lock_label(str(flow_run.id))
    idle_for = lambda: db.scalar(  # noqa: E731
        "SELECT extract(epoch FROM now() - state_change) FROM pg_stat_activity "
        "WHERE application_name = :app AND state = 'idle'",
        app=app,
    )
    wait_until(lambda: (idle_for() or 0) > 2, deadline_s=30, what="the lock session to idle past 1 s")
    resume_flow_run(
        flow_run.id,
        run_input={"approve": True, "evidence_digest": digest_in(shown_plan(flow_run)), "approver": "test"},
    )
    state, report = job.join()
    assert state.is_completed() and report.status == "succeeded", report.reasons
    assert not any(db.exists(t) for t in TARGETS)


def _sessions(db, app: str) -> int:
    return db.scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = :app AND datname = current_database()",
        app=app,
    )


def _pg_restore_waiting(db, backups: Path) -> int | None:
    return _tool_waiting(db, "pg_restore", backups, b"--single-transaction")


def test_pg_restore_killed_while_it_waits_for_a_lock_leaves_no_session_and_restores_nothing(
    env_url, tmp_path
):
    """The real pg_restore, held at a lock (a session of ours holds tenants, which the restored view reads)
    with a lock_timeout far away, dies by SIGKILL: its server session, queued for the lock, ends too
    (client_connection_check_interval), the restore says so in one line, and nothing was restored."""
    from tests.test_restore import contents, drop, restore, seed

    db = env_url
    seed(db)
    before_drop = contents(db)
    backups = tmp_path / "b"
    path = drop(tmp_path)
    before = db.snapshot()
    with holding(db, "LOCK TABLE tenants IN ACCESS EXCLUSIVE MODE"):
        job = Background(lambda: restore(path, lock_timeout_ms=60_000, max_lock_timeout_ms=60_000))
        pid = wait_until(
            lambda: _pg_restore_waiting(db, backups), deadline_s=60, what="pg_restore to wait for tenants"
        )
        os.kill(pid, signal.SIGKILL)
        state, report = job.join()
        # still holding the lock: the session noticed its client is gone, it was not granted the lock
        wait_until(
            lambda: _sessions(db, "safedrop pg_restore") == 0,
            deadline_s=10,
            what="pg_restore's session to end",
        )
    assert state.is_failed() and report.status == "failed" and report.exit_code == 1, report.reasons
    assert report.reasons == [
        "pg_restore was killed by signal SIGKILL before it finished; its transaction was rolled back, nothing "
        "was restored (check memory limits and who stops processes on this host)"
    ]
    assert db.snapshot() == before

    state, report = restore(path)  # and a re-run puts everything back
    assert state.is_completed() and report.status == "restored", report.reasons
    assert contents(db) == before_drop
