"""One run at a time per database: a session-level advisory lock held for the whole run.

The lock lives in a dedicated, idle session whose application_name names the flow run, so a second
run can say who holds it. When the holding process dies, PostgreSQL ends the session and releases
the lock: a crashed run never leaves a stale lock. The session turns ``idle_session_timeout`` off
and keeps TCP keepalives; a DBA or a network failure can still end it, so the drop checks in
``pg_locks`` that the lock's session (``RunLock.pid``) still holds it before it changes anything.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import sqlalchemy as sa

from safedrop import queries
from safedrop.database import Database, describe_connect_error
from safedrop.errors import ConnectionFailed, PrecheckStop


def lock_label(flow_run_id: str | None) -> str:
    return f"safedrop run {flow_run_id or 'local'}"[:63]


@dataclass(frozen=True)
class RunLock:
    """The session holding the run lock (``pid`` None: no lock was taken, e.g. a dry run)."""

    pid: int | None = None


KEEPALIVES = {"keepalives": 1, "keepalives_idle": 30, "keepalives_interval": 10, "keepalives_count": 3}


@contextmanager
def one_run_at_a_time(db: Database, flow_run_id: str | None, *, enabled: bool = True) -> Iterator[RunLock]:
    if not enabled:
        yield RunLock()
        return
    engine = db.engine(connect_args={"application_name": lock_label(flow_run_id), **KEEPALIVES})
    try:
        try:
            conn = engine.connect()
        except sa.exc.OperationalError as exc:
            raise ConnectionFailed(describe_connect_error(exc, db)) from None
        with conn:
            pid = queries.one(conn, "run_lock_session")["pid"]
            taken = queries.one(conn, "advisory_lock_try")["taken"]
            conn.commit()  # idle, not idle-in-transaction, while it holds the lock
            if not taken:
                holders = queries.rows(conn, "advisory_lock_holder")
                conn.rollback()
                who = (
                    "; ".join(
                        f"{h['application_name'] or 'an unnamed session'} (pid {h['pid']}, "
                        f"user {h['user_name']}, connected since {h['backend_start']:%Y-%m-%d %H:%M:%S %Z})"
                        for h in holders
                    )
                    or "a session that has just finished"
                )
                raise PrecheckStop(
                    [
                        f"another safedrop run is already working on {db.display}: {who}; "
                        "nothing was changed — wait for it to finish, then re-run"
                    ]
                )
            yield RunLock(pid=pid)
    finally:
        engine.dispose()
