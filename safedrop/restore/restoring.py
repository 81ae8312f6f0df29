"""pg_restore of the tables in ONE transaction, without queueing production behind it.

pg_restore sets its session's ``lock_timeout`` to 0 itself (PGOPTIONS cannot give it one), so
``safedrop.pg.locks.LockWatch`` cancels a statement of it that waits for a lock longer than the attempt's
lock_timeout; the transaction rolls back (``--single-transaction``: nothing restored) and is retried
with a longer one, backoff and jitter (``LockSchedule``), until the lock-wait budget is spent. On
PostgreSQL 14+ its session checks every second that pg_restore is still there, so a killed pg_restore
leaves no session queued for a lock.

This module provides:

- ``replay_tables(db, plan, entries, …)``: the lock-safe retries, and ``RestoreLockTimeout`` naming the
  sessions that held the locks when the budget is spent (``RestoreFailed`` on any other failure);
- ``restore_once``: one pg_restore run, one transaction: committed, or rolled back by a lock wait;
- ``PG_RESTORE_APP``: the ``application_name`` its sessions show (what ``LockWatch`` watches).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import sqlalchemy as sa

from safedrop.backup.archive import TocEntry
from safedrop.errors import NOTHING_CHANGED, NOTHING_RESTORED, RestoreFailed, RestoreLockTimeout
from safedrop.pg.database import APPLICATION_NAME, Database, error_line
from safedrop.pg.locks import LockWatch, describe_blockers, lock_watch
from safedrop.pg.lockschedule import Attempts, LockSchedule, gave_up
from safedrop.pg.processes import (
    CHECK_KILLERS,
    ToolFailed,
    dbname_arg,
    session_env,
    start,
    stderr_summary,
    wait,
)
from safedrop.report.progress import RestoreProgress
from safedrop.restore.restoreplan import RestorePlan
from safedrop.runlog import run_logger

PG_RESTORE_APP = f"{APPLICATION_NAME} pg_restore"  # its sessions' application_name (libpq_env)
# pg_restore's stderr when one of its statements lost a lock wait
LOCK_FAILURES = ("canceling statement due to lock timeout", "deadlock detected")


def pg_restore_args(db: Database, plan: RestorePlan, listing: Path, no_owner: bool) -> list[str]:
    """argv: the list of entries and the database name; host, user and password are in the environment."""
    args = ["--single-transaction", "--exit-on-error", "--verbose", "--no-password", f"--use-list={listing}"]
    if no_owner:
        args.append("--no-owner")
    return [*args, dbname_arg(db.url.database or ""), str(plan.archive)]


def _failure(failed: ToolFailed, db: Database) -> RestoreFailed:
    if failed.kind == "timeout":
        return RestoreFailed(f"{failed}; its transaction was rolled back, {NOTHING_RESTORED}")
    if failed.kind == "signal":
        return RestoreFailed(
            f"{failed}; its transaction was rolled back, {NOTHING_RESTORED} ({CHECK_KILLERS})"
        )
    if failed.kind == "not-started":
        return RestoreFailed(f"{failed}; {NOTHING_CHANGED}")
    summary = stderr_summary(failed.stderr, db) or f"exit code {failed.exit_code}"
    return RestoreFailed(
        f"pg_restore failed and its transaction was rolled back, {NOTHING_CHANGED}: {summary}"
    )


def restore_once(
    db: Database,
    plan: RestorePlan,
    args: list[str],
    *,
    watch: LockWatch,
    timeout_ms: int,
    timeout_s: float,
    progress: RestoreProgress,
) -> bool:
    """One pg_restore run, one transaction: True once it committed, False when one of its lock waits
    ran out (rolled back, nothing restored). Raises RestoreFailed on anything else (rolled back too)."""
    env = session_env(db, "pg_restore", plan.server_version_num)  # client_connection_check_interval
    watch.arm(timeout_ms)
    progress.restart()

    def tick() -> None:
        progress.tick()
        watch.check()

    try:
        running = start(plan.tools.pg_restore, args, env=env, timeout_s=timeout_s, on_line=progress.line)
        wait(running, on_tick=tick, tick_s=min(0.1, timeout_ms / 4000))
    except ToolFailed as exc:
        if exc.kind == "exit" and (watch.cancelled or any(marker in exc.stderr for marker in LOCK_FAILURES)):
            return False
        raise _failure(exc, db) from None
    return True


def replay_tables(
    db: Database,
    plan: RestorePlan,
    entries: list[TocEntry],
    *,
    schedule: LockSchedule,
    no_owner: bool,
    timeout_s: float,
    progress: RestoreProgress,
    tally: Attempts,
) -> None:
    """pg_restore of ``entries`` in ONE transaction; a lock wait longer than the attempt's lock_timeout
    rolls it back, and it is retried with a longer one, within the budget. Raises RestoreLockTimeout
    (nothing restored, the blockers named) when the budget is spent."""
    with (
        tempfile.TemporaryDirectory(prefix="safedrop-restore-") as tmp,
        lock_watch(db, PG_RESTORE_APP) as watch,
    ):
        listing = Path(tmp) / "restore.list"
        listing.write_text("".join(e.line + "\n" for e in entries))
        listing.chmod(0o600)
        args = pg_restore_args(db, plan, listing, no_owner)
        try:
            for attempt, timeout_ms in schedule.attempts():
                tally.count += 1
                if restore_once(
                    db, plan, args, watch=watch, timeout_ms=timeout_ms, timeout_s=timeout_s, progress=progress
                ):
                    return
                tally.lock_timeouts += 1
                run_logger().info(
                    "pg_restore: a lock wait ran out at %d ms (attempt %d); rolled back, retrying",
                    timeout_ms,
                    attempt,
                )
        except sa.exc.DBAPIError as exc:
            raise RestoreFailed(
                f"watching pg_restore's lock waits failed ({error_line(exc, db)}); pg_restore was stopped "
                f"and its transaction rolled back, {NOTHING_RESTORED}"
            ) from None
        relations = sorted(watch.relations)
    blockers = describe_blockers(db, relations, [])
    raise RestoreLockTimeout(
        f"{gave_up('on the restore', tally.count, schedule, blockers)}; {NOTHING_RESTORED} — let it "
        "finish (or end it) and re-run"
    )
