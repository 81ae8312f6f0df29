"""Lock-safe execution: growing lock timeouts within a budget, and never waiting while holding a lock.

A statement waiting for a lock makes every later query on that table queue behind it — the classic
outage. So every attempt runs with a short ``lock_timeout``; on a lock timeout (or a lost deadlock) it
rolls back, holding nothing, and ``LockSchedule`` retries it with a longer timeout, backoff and jitter,
until a total budget is spent. Within an attempt, ``run_lock_safe`` lets only the first lock wait:
every later one is taken ``NOWAIT``, so the attempt never waits while it holds a lock, can never close
a wait cycle with an application statement, and the deadlock detector never cancels the application.
Used by the drop (tasks/drop.py) and by the restore (safedrop/restore/restoring.py and
safedrop/restore/foreignkeys.py).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import sqlalchemy as sa
from psycopg2 import sql
from sqlalchemy.engine import Connection

from safedrop.errors import DropFailed
from safedrop.migration import TableName, tables_sql
from safedrop.pg import queries
from safedrop.pg.database import Database, connect, execute_composed
from safedrop.pg.locks import LOCK_NOT_AVAILABLE, describe_blockers
from safedrop.runlog import run_logger

DEADLOCK_DETECTED = "40P01"  # we lost a lock cycle (rolled back, holding nothing): as retryable as a timeout


@dataclass(frozen=True)
class LockSchedule:
    """Growing lock timeouts with backoff and jitter, within a total budget (all in milliseconds)."""

    first_timeout_ms: int = 500
    budget_ms: int = 60_000
    growth: float = 1.5
    max_timeout_ms: int = 5_000
    backoff_ms: int = 200
    max_backoff_ms: int = 3_000

    def attempts(self, clock: Callable[[], float] = time.monotonic) -> Iterator[tuple[int, int]]:
        """Yields (attempt number, lock_timeout ms) while the budget lasts; sleeps between attempts."""
        start = clock()
        timeout = self.first_timeout_ms
        backoff = self.backoff_ms
        attempt = 0
        while True:
            attempt += 1
            remaining = self.budget_ms - (clock() - start) * 1000
            if remaining < 20:
                return
            yield attempt, int(min(timeout, remaining))
            timeout = min(int(timeout * self.growth), self.max_timeout_ms)
            pause = min(backoff, self.max_backoff_ms) * random.uniform(0.5, 1.5)
            remaining = self.budget_ms - (clock() - start) * 1000
            if remaining <= pause + 20:
                return
            time.sleep(pause / 1000)
            backoff = int(backoff * 2)

    @classmethod
    def from_parameters(cls, params) -> LockSchedule:
        return cls(
            first_timeout_ms=params.lock_timeout_ms,
            max_timeout_ms=max(params.lock_timeout_ms, params.max_lock_timeout_ms),
            budget_ms=int(params.lock_wait_budget_s * 1000),
        )

    @property
    def largest_timeout_ms(self) -> int:
        return max(self.first_timeout_ms, min(self.max_timeout_ms, self.budget_ms))


def is_retryable(exc: BaseException) -> bool:
    """A lock wait that ran out, or a lost lock cycle: the attempt rolled back, holding nothing."""
    return getattr(getattr(exc, "orig", None), "pgcode", None) in (LOCK_NOT_AVAILABLE, DEADLOCK_DETECTED)


def set_local_timeouts(conn: Connection, lock_timeout_ms: int, statement_timeout_s: int) -> None:
    queries.rows(
        conn,
        "set_local_timeouts",
        lock_timeout=f"{lock_timeout_ms}ms",
        statement_timeout=f"{statement_timeout_s}s",
    )


@dataclass
class Attempts:
    count: int = 0
    lock_timeouts: int = 0


class CommitOutcomeUnknown(Exception):
    """The connection was lost while COMMIT was under way: it may or may not have committed (internal)."""

    def __init__(self, message: str, backend_pid: int | None) -> None:
        super().__init__(message)
        self.backend_pid = backend_pid


T = TypeVar("T")


def lock_safe(
    db: Database,
    schedule: LockSchedule,
    statement_timeout_s: int,
    work: Callable[[Connection, float], T],
    *,
    what: str,
    lock_oids: list[int],
    tally: Attempts,
) -> tuple[T, float]:
    """Run ``work(conn, deadline)`` in one transaction per attempt, retrying lock timeouts within the budget.

    ``deadline`` (time.monotonic()) ends the attempt's lock waits: ``work`` takes further locks with
    ``lock_wait_until`` so that all its waits together stay within the attempt's lock_timeout.
    Returns what ``work`` returned and the moment the transaction had committed. Raises
    ``CommitOutcomeUnknown`` when the connection broke during the COMMIT itself.
    """
    pid = None
    logger = run_logger()
    for attempt, timeout_ms in schedule.attempts():
        tally.count += 1
        try:
            with connect(db) as conn:
                transaction = conn.begin()
                try:
                    pid = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar()
                    set_local_timeouts(conn, timeout_ms, statement_timeout_s)
                    value = work(conn, time.monotonic() + timeout_ms / 1000)
                except BaseException:
                    _rollback_quietly(transaction)
                    raise
                try:
                    transaction.commit()
                except sa.exc.DBAPIError as exc:
                    if _connection_lost(exc):
                        raise CommitOutcomeUnknown(first_line(exc), pid) from None
                    raise
                return value, time.monotonic()
        except sa.exc.DBAPIError as exc:
            if not is_retryable(exc):
                raise
            tally.lock_timeouts += 1
            logger.info("%s: lock not granted within %d ms (attempt %d); retrying", what, timeout_ms, attempt)
    blockers = describe_blockers(db, lock_oids, [pid] if pid else [])
    raise DropFailed(
        f"{gave_up(f'on {what}', tally.count, schedule, blockers)}. Let it finish (or end it) and re-run"
    )


def gave_up(what: str, attempts: int, schedule: LockSchedule, blockers: list[str]) -> str:
    """How every lock-safe step says it spent its budget: ``gave up <what> after N attempts …``."""
    return (
        f"gave up {what} after {attempts} attempts within the lock-wait budget "
        f"{schedule.budget_ms / 1000:g} s (lock_timeout up to {schedule.largest_timeout_ms} ms); blocked by: "
        f"{'; '.join(blockers) or 'a session that has since finished'}"
    )


def _rollback_quietly(transaction) -> None:
    try:
        transaction.rollback()
    except Exception:  # the connection may be gone: the server rolls back on its own
        pass


def _connection_lost(exc: sa.exc.DBAPIError) -> bool:
    """The session is gone (server closed it, network failed): not an error the server reported."""
    return bool(exc.connection_invalidated) or (
        isinstance(exc, sa.exc.OperationalError) and getattr(exc.orig, "pgcode", None) is None
    )


def first_line(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None) or exc
    lines = str(orig).strip().splitlines()
    return lines[0] if lines else type(orig).__name__


def remaining_ms(deadline: float) -> int:
    return max(1, int((deadline - time.monotonic()) * 1000))


def lock_wait_until(conn: Connection, deadline: float, statement_timeout_s: int) -> None:
    """Let the next statement wait for locks only as long as the attempt has left (at least 1 ms)."""
    set_local_timeouts(conn, remaining_ms(deadline), statement_timeout_s)


def lock_waits(remaining_ms: int, steps: int, short_ms: int) -> list[int]:
    """lock_timeouts for ``steps`` lock-taking statements sent in one round trip.

    Together they wait at most ``remaining_ms``. The first may wait long (for an autovacuum to yield);
    every later one runs holding the first's lock, so together they wait at most ``short_ms``.
    """
    if steps <= 1:
        return [max(1, remaining_ms)]
    later = max(1, min(short_ms // (steps - 1), remaining_ms // (2 * (steps - 1))))
    return [max(1, remaining_ms - later * (steps - 1)), *[later] * (steps - 1)]


LOCK_MODES = ("ACCESS EXCLUSIVE", "SHARE ROW EXCLUSIVE")


def lock_nowait_spin(oids: list[int], wait_ms: int, mode: str = "ACCESS EXCLUSIVE") -> sql.Composed:
    """A DO block locking each relation ``IN mode MODE NOWAIT``, retried every 2 ms for ``wait_ms``."""
    if mode not in LOCK_MODES:
        raise ValueError(f"lock mode {mode!r} is not one of {LOCK_MODES}")
    return sql.SQL(queries.load("lock_nowait_spin").text.strip()).format(
        oids=sql.Literal([int(o) for o in oids]),
        wait_ms=sql.Literal(max(1, int(wait_ms))),
        mode=sql.Literal(mode),
    )


LATER_LOCKS = sql.Identifier("safedrop_later_locks")  # the savepoint before the NOWAIT locks


def run_lock_safe(
    conn: Connection,
    first: list[sql.Composable],
    first_wait_ms: int,
    later: dict[TableName, int],
    spin_ms: int,
    rest: list[sql.Composable],
    *,
    mode: str = "ACCESS EXCLUSIVE",
) -> None:
    """Run statements in one transaction without ever waiting for a lock while holding one it took.

    ``first`` may wait ``first_wait_ms`` for its lock. Every other relation ``rest`` needs (``later``:
    each with its oid) is then locked ``IN mode MODE NOWAIT``, so ``rest`` runs without waiting for
    anyone. Fast path, one round trip: ``first``, a savepoint, one ``LOCK … NOWAIT``, ``rest``. If
    that NOWAIT fails (someone holds one of them this very moment), back to the savepoint, and the
    locks are tried again server-side every 2 ms for at most ``spin_ms`` (``lock_nowait_spin``),
    then ``rest`` — a second round trip only then.
    """

    def lock_timeout(ms: int) -> sql.Composable:
        return sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(f"{max(1, ms)}ms"))

    tail = [lock_timeout(min(spin_ms, 100)), *rest]
    if not later:
        execute_composed(conn, sql.SQL("; ").join([lock_timeout(first_wait_ms), *first, *tail]))
        return
    if mode not in LOCK_MODES:
        raise ValueError(f"lock mode {mode!r} is not one of {LOCK_MODES}")
    nowait = sql.SQL("LOCK TABLE {} IN {} MODE NOWAIT").format(tables_sql(list(later)), sql.SQL(mode))
    fast = [lock_timeout(first_wait_ms), *first, sql.SQL("SAVEPOINT {}").format(LATER_LOCKS), nowait, *tail]
    try:
        execute_composed(conn, sql.SQL("; ").join(fast))
        return
    except sa.exc.DBAPIError as exc:
        if not is_retryable(exc) or not _back_to_savepoint(conn):
            raise  # not the NOWAIT: ``first`` itself timed out, or something else failed
    execute_composed(conn, sql.SQL("; ").join([lock_nowait_spin(list(later.values()), spin_ms, mode), *tail]))


def _back_to_savepoint(conn: Connection) -> bool:
    """Roll back to the savepoint before the NOWAIT locks; False when it was never reached."""
    try:
        execute_composed(conn, sql.SQL("ROLLBACK TO SAVEPOINT {}").format(LATER_LOCKS))
        return True
    except sa.exc.DBAPIError:
        return False
