"""Drop: lock-safe, all-or-nothing, rechecked under the lock, ACCESS EXCLUSIVE held as briefly as a DROP.

A DROP waiting for a lock makes every later query on that table queue behind it — the classic
outage. So every attempt runs with a short ``lock_timeout``; on SQLSTATE 55P03 it rolls back (holding
nothing) and retries with a longer timeout, backoff and jitter, until a total time budget is spent.
The schedule grows past ``deadlock_timeout`` so a running autovacuum, which yields only after it,
cannot win forever.

Each attempt is ONE transaction, in three steps:

1. ``LOCK`` the targets ``IN EXCLUSIVE MODE``: writers of the targets wait, readers do not (EXCLUSIVE
   conflicts with every mode but ACCESS SHARE, and a waiting EXCLUSIVE request queues no reader).
   Holding it, no row can change and no index, trigger, foreign key or policy can be added, so the
   recheck runs here — the dependency edges around the removal set (the full analysis if they
   moved) and the targets' row counts — and the ledger entries are written. Function bodies, which
   no lock protects, are searched just before, and the ledger created if it is missing.
2. ``LOCK`` the targets ``IN ACCESS EXCLUSIVE MODE`` (the upgrade: it waits for readers only). From
   here every query on a target waits, so the rest is one round trip: each foreign key to or from
   another table (the targets' own ones to credits, tenants, …, and the inbound ones the operator
   allowed), then the DROP. Between step 1 and the upgrade only statements that take ACCESS SHARE on
   a target — a new view, a ``BEGIN ATOMIC`` function, a sequence ``OWNED BY`` a target column —
   could have added a dependant. When nothing beyond those foreign keys needs CASCADE (the usual
   case) the targets go in one ``DROP TABLE … RESTRICT``, and the server itself refuses any new
   dependant (a newly owned sequence, which RESTRICT drops silently, is the one exception). Otherwise
   the edges' fingerprint is compared once more and the migration's own CASCADE statements run.
3. ``COMMIT``.

A ``DROP TABLE`` also locks the parent of each of the targets' own foreign keys and every table owning
something CASCADE removes. Those locks are taken in step 2, after the targets are held, so while an
attempt waits for a target it holds nothing on any other table. Holding one parent while waiting for
another could close a cycle with an application transaction that locks them the other way round (an
INSERT into credit_usage checks tenants, then credits), and the deadlock detector would cancel the
application's statement. So only the first parent lock of an attempt may wait long (long enough for
an autovacuum to yield); the later ones together wait at most half of ``deadlock_timeout`` — less
than anyone's deadlock check — and the attempt is retried. The order of the parents rotates from
attempt to attempt, so each gets its long wait. All waits of an attempt together stay within its
lock_timeout, so no query queues behind an attempt for longer than that. Nothing commits unless
everything does: a run that cannot get its locks drops nothing, not even a foreign key.
"""

from __future__ import annotations

import json
import random
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import sqlalchemy as sa
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from psycopg2 import sql
from sqlalchemy.engine import Connection

from safedrop import queries
from safedrop.artifacts import md_list, publish_markdown
from safedrop.database import Database, connect
from safedrop.errors import DropFailed
from safedrop.locks import LOCK_NOT_AVAILABLE, describe_blockers
from safedrop.migration import DropStatement, Migration, TableName
from safedrop.report import DependencyResult, DropResult
from tasks.cleanup import count_rows
from tasks.connection import table_status
from tasks.dependencies import (
    analyse,
    depend_fingerprint,
    recheck_edges,
    recheck_functions,
    unapproved_changes,
)

DEADLOCK_DETECTED = "40P01"  # we lost a lock cycle (rolled back, holding nothing): as retryable as a timeout
QUERY_CANCELED = "57014"
DEPENDENT_OBJECTS_STILL_EXIST = "2BP01"  # DROP … RESTRICT refused: something new depends on a target


# --------------------------------------------------------------------------------------------------
# The retry schedule
# --------------------------------------------------------------------------------------------------


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


class LockTimeout(Exception):
    """One attempt timed out waiting for a lock (internal: the caller retries)."""


def _is_lock_timeout(exc: BaseException) -> bool:
    return getattr(getattr(exc, "orig", None), "pgcode", None) in (LOCK_NOT_AVAILABLE, DEADLOCK_DETECTED)


# --------------------------------------------------------------------------------------------------
# Statements
# --------------------------------------------------------------------------------------------------


def _tables(tables: list[TableName]) -> sql.Composable:
    return sql.SQL(", ").join(sql.Identifier(t.schema, t.name) for t in tables)


def render_drop(statement: DropStatement) -> sql.Composed:
    """A DROP TABLE statement rebuilt from the parsed file, identifiers quoted by the driver."""
    return sql.SQL("DROP TABLE {if_exists}{tables} {behavior}").format(
        if_exists=sql.SQL("IF EXISTS " if statement.if_exists else ""),
        tables=_tables(list(statement.tables)),
        behavior=sql.SQL("CASCADE" if statement.cascade else "RESTRICT"),
    )


def _execute(conn: Connection, statement: sql.Composable) -> None:
    conn.exec_driver_sql(statement.as_string(conn.connection.dbapi_connection))


def _set_timeouts(conn: Connection, lock_timeout_ms: int, statement_timeout_s: int) -> None:
    queries.rows(
        conn,
        "set_local_timeouts",
        lock_timeout=f"{lock_timeout_ms}ms",
        statement_timeout=f"{statement_timeout_s}s",
    )


# --------------------------------------------------------------------------------------------------
# Lock-safe execution
# --------------------------------------------------------------------------------------------------


@dataclass
class Attempts:
    count: int = 0
    lock_timeouts: int = 0


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
    ``_lock_wait_until`` so that all its waits together stay within the attempt's lock_timeout.
    Returns what ``work`` returned and the moment the transaction had committed.
    """
    pid = None
    logger = _logger()
    for attempt, timeout_ms in schedule.attempts():
        tally.count += 1
        try:
            with connect(db) as conn:
                with conn.begin():
                    pid = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar()
                    _set_timeouts(conn, timeout_ms, statement_timeout_s)
                    value = work(conn, time.monotonic() + timeout_ms / 1000)
                return value, time.monotonic()
        except sa.exc.DBAPIError as exc:
            if not _is_lock_timeout(exc):
                raise
            tally.lock_timeouts += 1
            if logger:
                logger.info(
                    "%s: lock not granted within %d ms (attempt %d); retrying", what, timeout_ms, attempt
                )
    blockers = describe_blockers(db, lock_oids, [pid] if pid else [])
    raise DropFailed(
        f"gave up on {what} after {tally.count} attempts within the lock-wait budget "
        f"{schedule.budget_ms / 1000:g} s (lock_timeout up to {schedule.largest_timeout_ms} ms); "
        f"blocked by: {'; '.join(blockers) or 'a session that has since finished'}. "
        "Let it finish (or end it) and re-run"
    )


def _logger():
    try:
        return get_run_logger()
    except Exception:
        return None


def _remaining_ms(deadline: float) -> int:
    return max(1, int((deadline - time.monotonic()) * 1000))


def _lock_wait_until(conn: Connection, deadline: float, statement_timeout_s: int) -> None:
    """Let the next statement wait for locks only as long as the attempt has left (at least 1 ms)."""
    _set_timeouts(conn, _remaining_ms(deadline), statement_timeout_s)


def lock_waits(remaining_ms: int, steps: int, short_ms: int) -> list[int]:
    """lock_timeouts for ``steps`` lock-taking statements sent in one round trip.

    Together they wait at most ``remaining_ms``. The first may wait long (for an autovacuum to yield);
    every later one runs holding the first's lock, so together they wait at most ``short_ms``.
    """
    if steps <= 1:
        return [max(1, remaining_ms)]
    later = max(1, min(short_ms // (steps - 1), remaining_ms // (2 * (steps - 1))))
    return [max(1, remaining_ms - later * (steps - 1)), *[later] * (steps - 1)]


_QUALIFIED = re.compile(r'^("(?:[^"]|"")*"|[^".]+)\.("(?:[^"]|"")*"|[^".]+)$')


def _unquote_qualified(text: str) -> TableName | None:
    """``schema.table`` as quote_ident() printed it, back into its parts."""
    match = _QUALIFIED.match(text)
    if not match:
        return None
    schema, name = (p[1:-1].replace('""', '"') if p.startswith('"') else p for p in match.groups())
    return TableName(schema, name)


# --------------------------------------------------------------------------------------------------
# The step
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ForeignKeyDrop:
    statement: sql.Composed
    label: str
    direction: str  # "outbound" (on a target) or "inbound" (on another table, allowed to go)
    constraint_name: str
    other_table: TableName | None  # the non-target table whose lock the drop needs


def foreign_keys_to_drop(
    conn: Connection, oids: dict[TableName, int], approved: DependencyResult
) -> list[ForeignKeyDrop]:
    """The targets' outbound FKs and the allowed inbound ones: dropped first, inside the drop transaction."""
    fks = queries.rows(conn, "foreign_keys_to_predrop", oids=list(oids.values()))
    allowed_inbound = {o.name for o in approved.cascade if o.kind == "foreign key" and o.allowed}
    out = []
    for fk in fks:
        if fk["direction"] == "inbound" and fk["constraint_name"] not in allowed_inbound:
            continue  # not approved: the in-lock recheck will stop the run
        out.append(
            ForeignKeyDrop(
                statement=sql.SQL("ALTER TABLE {} DROP CONSTRAINT IF EXISTS {}").format(
                    sql.Identifier(fk["schema_name"], fk["table_name"]), sql.Identifier(fk["constraint_name"])
                ),
                label=f"foreign key {fk['constraint_name']} on {fk['on_table']} "
                f"(references {fk['references_table']})",
                direction=fk["direction"],
                constraint_name=fk["constraint_name"],
                other_table=_unquote_qualified(fk["references_table"])
                if fk["direction"] == "outbound"
                else TableName(fk["schema_name"], fk["table_name"]),
            )
        )
    return out


def parent_groups(fk_drops: list[ForeignKeyDrop], rotation: int) -> list[list[ForeignKeyDrop]]:
    """The foreign-key drops grouped by the other table they lock; the groups rotated by ``rotation``."""
    groups: dict[TableName | None, list[ForeignKeyDrop]] = {}
    for fk in fk_drops:
        groups.setdefault(fk.other_table, []).append(fk)
    ordered = list(groups.values())
    if ordered:
        k = rotation % len(ordered)
        ordered = ordered[k:] + ordered[:k]
    return ordered


def drop_batch(steps: list[list[sql.Composable]], waits: list[int]) -> sql.Composed:
    """One round trip: each step's statements, each step after its own ``SET LOCAL lock_timeout``."""
    parts: list[sql.Composable] = []
    for wait_ms, statements in zip(waits, steps, strict=True):
        parts.append(sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(f"{wait_ms}ms")))
        parts.extend(statements)
    return sql.SQL("; ").join(parts)


def needs_no_cascade(now: DependencyResult, fk_drops: list[ForeignKeyDrop]) -> bool:
    """Whether, once the foreign keys are gone, ``DROP TABLE … RESTRICT`` removes exactly the approved set."""
    inbound = {fk.constraint_name for fk in fk_drops if fk.direction == "inbound"}
    return all(o.kind == "foreign key" and o.name in inbound for o in now.cascade if o.needs_cascade)


def _deadlock_timeout_s(conn: Connection) -> float:
    value = conn.exec_driver_sql(
        "SELECT extract(epoch FROM current_setting('deadlock_timeout')::interval)"
    ).scalar()
    return float(value or 1.0)


def _oids_of(conn: Connection, tables: list[TableName]) -> list[int]:
    return [r["oid"] for r in table_status(conn, tables) if r["oid"]] if tables else []


def _stop_if_changed(changes: list[str]) -> None:
    """Anything not approved appeared since the prechecks: stop with nothing dropped."""
    if changes:
        raise DropFailed(
            f"the database changed since the prechecks ({'; '.join(changes)}); nothing was dropped — "
            "re-run so the checks and the backup see it"
        )


def _changed_while_waiting(detail: str) -> DropFailed:
    return DropFailed(
        f"the database changed while the drop waited for its lock ({detail}); nothing was dropped — "
        "re-run so the checks and the backup see it"
    )


def _ensure_ledger(conn: Connection) -> None:
    """safedrop's ledger, created on first use (in the drop's transaction: gone again if it rolls back)."""
    if not queries.one(conn, "ledger_status")["ledger_exists"]:
        conn.exec_driver_sql(queries.load("ledger_setup").text)


def _record_in_ledger(conn: Connection, tables: list[TableName], **entry) -> None:
    """One ledger row per dropped table, in the drop's own transaction."""
    for table in tables:
        queries.rows(
            conn,
            "ledger_record",
            schema_name=table.schema,
            table_name=table.name,
            **{**entry, "row_count": entry["row_count"].get(table.qualified, 0)},
        )


@dataclass
class Held:
    """When the attempt got the targets (time.monotonic()): EXCLUSIVE, then ACCESS EXCLUSIVE."""

    exclusive_at: float | None = None
    access_exclusive_at: float | None = None
    guard: str = ""


def drop_targets(
    db: Database,
    migration: Migration,
    oids: dict[TableName, int],
    *,
    approved: DependencyResult,
    expected_rows: dict[str, int],
    allow_cascade: list[str],
    schedule: LockSchedule,
    statement_timeout_s: int,
    record_in_ledger: bool,
    backup_path: str | None = None,
    backup_sha256: str | None = None,
    flow_run_id: str | None = None,
) -> DropResult:
    present = [t for t in migration.targets if t in oids]
    started = time.monotonic()
    tally = Attempts()
    removed_by_cascade: list[str] = []
    try:
        # Nothing new since the prechecks? (Checked again, under the lock, before the DROP itself.)
        with connect(db) as conn:
            preflight = analyse(conn, migration, oids, allow_cascade)
            preflight_fingerprint = depend_fingerprint(conn, preflight.addresses)
            changes = unapproved_changes(approved, preflight)
            fk_drops = foreign_keys_to_drop(conn, oids, approved)
            # who may block us: the targets, and the other side of each foreign key we drop
            lock_oids = list(oids.values()) + _oids_of(
                conn, sorted({fk.other_table for fk in fk_drops if fk.other_table})
            )
            # once a parent is held, waits for more locks end before anyone's deadlock check
            short_wait_ms = int(_deadlock_timeout_s(conn) * 1000 / 2)
        _stop_if_changed(changes)

        rounds = 0

        def drop_in_one_transaction(conn: Connection, deadline: float) -> Held:
            nonlocal rounds
            rounds += 1
            held = Held()
            # Before any lock: function bodies (no lock protects them) and the ledger's DDL.
            _stop_if_changed(recheck_functions(conn, migration, oids, allow_cascade, approved, preflight))
            if record_in_ledger and present:
                _ensure_ledger(conn)

            # 1. The targets, and only them, IN EXCLUSIVE MODE: their readers go on, nothing changes.
            if present:
                _execute(conn, sql.SQL("LOCK TABLE {} IN EXCLUSIVE MODE").format(_tables(present)))
                held.exclusive_at = time.monotonic()
            now, changes, fingerprint = recheck_edges(
                conn, migration, oids, allow_cascade, approved, preflight, preflight_fingerprint
            )
            _stop_if_changed(changes)
            rows_now = count_rows(conn, present)
            changed = {t: (expected_rows.get(t), n) for t, n in rows_now.items() if expected_rows.get(t) != n}
            if changed:
                detail = ", ".join(f"{t} had {a} rows, now {b}" for t, (a, b) in changed.items())
                raise DropFailed(
                    f"rows changed since the prechecks ({detail}); nothing was dropped — re-run so the "
                    "backup and checks see them"
                )
            inbound = {fk.constraint_name for fk in fk_drops if fk.direction == "inbound"}
            removed_by_cascade[:] = [fk.label for fk in fk_drops] + [
                f"{o.kind} {o.name}"
                for o in now.cascade
                if not (o.kind == "foreign key" and o.name in inbound)
            ]
            if record_in_ledger and present:
                _record_in_ledger(
                    conn,
                    present,
                    row_count=expected_rows,
                    migration=migration.name,
                    removed_by_cascade=json.dumps(removed_by_cascade),
                    backup_path=backup_path,
                    backup_sha256=backup_sha256,
                    flow_run_id=flow_run_id,
                )
            restrict = bool(present) and needs_no_cascade(now, fk_drops)

            # 2. ACCESS EXCLUSIVE (it waits for the targets' readers only), then one round trip.
            if present:
                _lock_wait_until(conn, deadline, statement_timeout_s)
                _execute(conn, sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(_tables(present)))
                held.access_exclusive_at = time.monotonic()
            if restrict:
                held.guard = "DROP TABLE … RESTRICT"
                drops: list[sql.Composable] = [sql.SQL("DROP TABLE {} RESTRICT").format(_tables(present))]
            else:
                if present and depend_fingerprint(conn, now.addresses) != fingerprint:
                    raise _changed_while_waiting("the dependencies of the targets moved")
                held.guard = "dependency fingerprint"
                drops = [render_drop(statement) for statement in migration.statements]
            groups = parent_groups(fk_drops, rounds - 1)
            steps = [[fk.statement for fk in group] for group in groups] + [drops]
            waits = lock_waits(_remaining_ms(deadline), len(steps), short_wait_ms)
            _execute(conn, drop_batch(steps, waits))
            return held

        held, committed = lock_safe(
            db,
            schedule,
            statement_timeout_s,
            drop_in_one_transaction,
            what="the table drop",
            lock_oids=lock_oids,
            tally=tally,
        )
    except sa.exc.DBAPIError as exc:
        code = getattr(exc.orig, "pgcode", None)
        if code == QUERY_CANCELED:
            raise DropFailed(
                f"the drop took longer than statement_timeout {statement_timeout_s} s and was rolled back; "
                "no table was dropped"
            ) from None
        first = str(exc.orig).strip().splitlines()[0] if exc.orig else type(exc).__name__
        if code == DEPENDENT_OBJECTS_STILL_EXIST:
            detail = (getattr(getattr(exc.orig, "diag", None), "message_detail", None) or "").splitlines()
            refusal = first.removeprefix("ERROR:").strip()
            raise _changed_while_waiting(f"{refusal}: {detail[0]}" if detail else refusal) from None
        raise DropFailed(f"the drop failed and was rolled back, no table was dropped: {first}") from None

    def held_ms(since: float | None) -> float | None:
        return round((committed - since) * 1000, 2) if since is not None else None

    return DropResult(
        dropped=[t.qualified for t in present],
        removed_by_cascade=removed_by_cascade,
        duration_s=round(time.monotonic() - started, 3),
        lock_timeout_ms=schedule.first_timeout_ms,
        attempts=tally.count,
        lock_timeouts=tally.lock_timeouts,
        writes_blocked_ms=held_ms(held.exclusive_at),
        all_blocked_ms=held_ms(held.access_exclusive_at),
        guard=held.guard,
    )


def render(result: DropResult) -> str:
    text = (
        f"# Drop\n\nDropped in one transaction after {result.attempts} lock-safe attempt(s) "
        f"({result.lock_timeouts} lock timeouts; first lock_timeout {result.lock_timeout_ms} ms), "
        f"{result.duration_s:.3f} s in all:\n\n{md_list(result.dropped)}"
    )
    if result.removed_by_cascade:
        text += f"\nAlso removed, as approved:\n\n{md_list(result.removed_by_cascade)}"
    if result.all_blocked_ms is not None:
        text += (
            f"\nThe targets were locked for {result.all_blocked_ms:.1f} ms against every query and for "
            f"{result.writes_blocked_ms:.1f} ms against writes (reads went on while the recheck ran); "
            f"nothing new depended on them, proved by {result.guard}.\n"
        )
    return text


@task(name="drop", cache_policy=NO_CACHE)
def drop(
    db: Database,
    migration: Migration,
    oids: dict[TableName, int],
    approved: DependencyResult,
    expected_rows: dict[str, int],
    allow_cascade: list[str],
    schedule: LockSchedule,
    statement_timeout_s: int,
    record_in_ledger: bool,
    backup_path: str | None,
    backup_sha256: str | None,
    flow_run_id: str | None,
    artifact_prefix: str,
) -> DropResult:
    """Run the migration's DROP statements: lock-safe, in one transaction, rechecked under the lock."""
    result = drop_targets(
        db,
        migration,
        oids,
        approved=approved,
        expected_rows=expected_rows,
        allow_cascade=allow_cascade,
        schedule=schedule,
        statement_timeout_s=statement_timeout_s,
        record_in_ledger=record_in_ledger,
        backup_path=backup_path,
        backup_sha256=backup_sha256,
        flow_run_id=flow_run_id,
    )
    get_run_logger().info(
        "dropped %s in %.3f s (%d attempts)", ", ".join(result.dropped), result.duration_s, result.attempts
    )
    publish_markdown(f"{artifact_prefix}-drop", render(result), "What the drop removed")
    return result
