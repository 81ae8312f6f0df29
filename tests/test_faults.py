"""Faults in the middle of a run: the drop's backend killed while it holds the targets, pg_dump killed.

The backend is really terminated (pg_terminate_backend) while it provably holds the targets and waits
for a lock we hold; pg_dump really dies by SIGKILL halfway through writing its archive. Afterwards the
targets are all there or all gone, the run says what happened in one line, and a re-run finishes.
"""

from __future__ import annotations

import pytest

from safedrop.pgserver import wait_until
from tests.conftest import SURVIVORS, TARGETS
from tests.helpers import run
from tests.test_lock_safety import Background, holding, session

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
    params = dict(allow_cascade=[f"public.{VIEW}"], lock_timeout_ms=10_000, max_lock_timeout_ms=10_000,
                  lock_wait_budget_s=60)
    observer = session(db, "fault-test-observer", autocommit=True)
    try:
        # COMMENT locks the view alone (SHARE UPDATE EXCLUSIVE), not the tables under it: the drop gets
        # the targets, then waits on the view that CASCADE removes.
        with holding(db, f"COMMENT ON VIEW {VIEW} IS 'held by the test'"):
            job = Background(lambda: run(backup_dir=str(tmp_path / "b1"), **params))
            pid = wait_until(lambda: safedrop_waiting_on(observer, VIEW), deadline_s=60,
                             what="the drop to wait on the view")
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
    assert reason.endswith(("terminating connection due to administrator command",
                            "server closed the connection unexpectedly")), reason
    assert "\n" not in reason and "Traceback" not in state.message
    assert report.dropped == []
    assert all(db.exists(t) for t in TARGETS) and db.exists(VIEW)  # all present, view and FKs included
    assert db.snapshot() == before

    state, report = run(backup_dir=str(tmp_path / "b2"), **params)
    assert state.is_completed() and report.status == "succeeded", report.reasons
    assert not any(db.exists(t) for t in TARGETS) and not db.exists(VIEW)
    assert {t: db.count(t) for t in SURVIVORS} == counts


KILLED_PG_DUMP = """#!/bin/sh
# pg_dump that answers --version like the real one, then dies by SIGKILL halfway through a dump
case "$1" in --version) exec "{real}" "$@";; esac
for arg in "$@"; do case "$arg" in --file=*) printf 'PGDMP half an archive' > "${{arg#--file=}}";; esac; done
kill -KILL $$
"""


def test_pg_dump_killed_mid_backup_stops_before_the_drop_and_leaves_no_file(env_url, tmp_path, monkeypatch):
    """Flow level (tests/test_backup.py kills a real pg_dump inside take_backup): the run stops, no file."""
    from safedrop.pgserver import find_server_bin

    db = env_url
    real = find_server_bin()
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "pg_dump").write_text(KILLED_PG_DUMP.format(real=real / "pg_dump"))
    (bindir / "pg_dump").chmod(0o755)
    (bindir / "pg_restore").symlink_to(real / "pg_restore")
    monkeypatch.setenv("SAFEDROP_PG_BIN", str(bindir))
    before = db.snapshot()
    backups = tmp_path / "b"
    state, report = run(backup_dir=str(backups))
    assert state.is_failed() and report.status == "stopped", report.reasons
    [reason] = report.reasons
    assert reason.startswith("pg_dump was killed by signal SIGKILL before it finished"), reason
    assert reason.endswith("the drop did not run")
    assert not backups.exists() or list(backups.iterdir()) == []
    assert report.backup is None and report.dropped == []
    assert db.snapshot() == before
