"""One run at a time per database: a session-level advisory lock held for the whole run.

The lock lives in a dedicated, idle session whose application_name names the flow run, so a second
run can say who holds it. When the holding process dies, PostgreSQL ends the session and releases
the lock: a crashed run never leaves a stale lock. The session turns ``idle_session_timeout`` off
and keeps TCP keepalives; a DBA or a network failure can still end it, so the drop checks in
``pg_locks`` that the lock's session (``RunLock.pid``) still holds it before it changes anything.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime

import sqlalchemy as sa

from safedrop.errors import ConnectionFailed, PrecheckStop
from safedrop.pg import queries
from safedrop.pg.database import Database, describe_connect_error


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


# --------------------------------------------------------------------------------------------------
# Across a suspension: the advisory lock goes with the process, the claim stays with the flow run
# --------------------------------------------------------------------------------------------------


def database_tag(db: Database) -> str:
    """The flow-run tag naming the database a run works on (a hash: tags are shown everywhere)."""
    return "safedrop-db:" + hashlib.sha256(db.display.encode()).hexdigest()[:16]


def stop_if_another_run_awaits_approval(db: Database, flow_run_id: str | None) -> None:
    """Tag this flow run with its database; stop if another run of it is suspended awaiting approval.

    A run suspended for approval holds no process and no session, so the advisory lock cannot speak
    for it: its flow run's tag and state do. A suspension whose approval timeout has passed can never
    be resumed any more; it is closed as Cancelled with that reason and does not count.
    """
    if not flow_run_id:
        return
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
        FlowRunFilterTags,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.states import Cancelled

    tag = database_tag(db)
    with get_client(sync_client=True) as client:
        mine = client.read_flow_run(flow_run_id)
        if tag not in mine.tags:
            client.update_flow_run(flow_run_id, tags=[*mine.tags, tag])
        waiting = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                tags=FlowRunFilterTags(all_=[tag]),
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.PAUSED])),
            )
        )
        for other in waiting:
            if str(other.id) == str(flow_run_id) or other.state is None:
                continue
            deadline = other.state.state_details.pause_timeout
            if deadline is not None and deadline < datetime.now(UTC):
                client.set_flow_run_state(
                    other.id,
                    Cancelled(message="no approval before the approval timeout; nothing was dropped"),
                    force=True,
                )
                continue
            raise PrecheckStop(
                [
                    f"another safedrop run is waiting for approval on {db.display}: flow run "
                    f"{other.name} ({other.id}), suspended since "
                    f"{other.state.timestamp:%Y-%m-%d %H:%M:%S %Z}; nothing was changed — approve, "
                    "reject or cancel it first, then re-run"
                ]
            )
