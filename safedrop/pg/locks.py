"""Who holds the locks safedrop waited for: named in every message that gives up on a lock. And a
lock_timeout for a client that cannot be given one (pg_restore)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy.engine import Connection

from safedrop.pg import queries
from safedrop.pg.database import Database, connect

LOCK_NOT_AVAILABLE = "55P03"  # lock_timeout ran out


def is_lock_timeout(exc: BaseException) -> bool:
    return getattr(getattr(exc, "orig", None), "pgcode", None) == LOCK_NOT_AVAILABLE


def describe_blockers(db: Database, oids: list[int], exclude_pids: list[int]) -> list[str]:
    """Who holds the locks we waited for: pid, application, state, transaction age, query."""
    try:
        with connect(db) as conn:
            rows = queries.rows(conn, "lock_blockers", oids=oids, exclude_pids=exclude_pids)
    except Exception:
        return []
    seen, out = set(), []
    for r in rows:
        if r["pid"] in seen or not r["granted"]:
            continue
        seen.add(r["pid"])
        out.append(
            f"pid {r['pid']} ({r['application_name'] or 'no application_name'}, {r['state']}, "
            f"transaction open {r['xact_seconds']} s, holds {r['mode']} on {r['relation']}): {r['query']}"
        )
    return out


class LockWatch:
    """lock_timeout, enforced from outside, for the sessions of a client named ``application_name``.

    pg_restore starts every restore with ``SET lock_timeout = 0`` (so ``PGOPTIONS=-c lock_timeout=…``
    has no effect on it): while it waits for a lock, everyone who comes after it queues behind it. So
    ``check()``, called every few dozen milliseconds while the client runs, cancels the statement of
    any such session (started after ``arm()``) that has been waiting for a lock longer than the
    attempt's timeout, and remembers the relations it waited for.
    """

    def __init__(self, conn: Connection, application_name: str) -> None:
        self.conn = conn
        self.application_name = application_name
        self.relations: set[int] = set()  # every relation a watched session was seen waiting for
        self.cancelled = False  # a statement was cancelled since arm()
        self._known: list[int] = []
        self._wait_ms = 0

    def arm(self, wait_ms: int) -> None:
        """Call before starting the client: its new sessions may wait ``wait_ms`` per statement."""
        self._known = [r["pid"] for r in queries.rows(self.conn, "sessions_named", app=self.application_name)]
        self.conn.rollback()
        self._wait_ms, self.cancelled = wait_ms, False

    def check(self) -> None:
        rows = queries.rows(
            self.conn,
            "cancel_lock_waits",
            app=self.application_name,
            known_pids=self._known,
            wait_ms=self._wait_ms,
        )
        self.conn.rollback()  # a fresh pg_stat_activity snapshot next time
        for r in rows:
            if r["relation"] is not None:
                self.relations.add(int(r["relation"]))
            self.cancelled = self.cancelled or bool(r["cancelled"])


@contextmanager
def lock_watch(db: Database, application_name: str) -> Iterator[LockWatch]:
    """A LockWatch on its own connection, open for the block."""
    with connect(db) as conn:
        yield LockWatch(conn, application_name)
