"""Drop: lock-safe, all-or-nothing, rechecked under the lock.

A DROP waiting for a lock makes every later query on that table queue behind it — the classic
outage. So every statement that needs a lock runs in its own transaction with a short
``lock_timeout``; on SQLSTATE 55P03 it rolls back (holding nothing) and retries with a longer
timeout, backoff and jitter, until a total time budget is spent. The schedule grows past
``deadlock_timeout`` so a running autovacuum, which yields only after it, cannot win forever.

A ``DROP TABLE`` also locks the parent of each of the targets' own foreign keys (credits, tenants, …)
and every table owning something CASCADE removes. So each attempt is ONE transaction that first takes
ACCESS EXCLUSIVE on the targets alone — while it waits for them it holds nothing on any other table,
so readers of the hot parents never queue behind it — then, holding them so nothing can change
underneath, recomputes the CASCADE set and the targets' row counts and stops if anything appeared
that was not approved; then drops those foreign keys (the targets' outbound ones and the inbound ones
the operator allowed) one parent lock at a time, runs the migration's DROP statements in file order,
and records each dropped table in safedrop's own ledger. Every lock after the first waits only for
what is left of the attempt's lock_timeout, so no query ever queues behind an attempt for longer than
that timeout. Nothing commits unless everything does: a run that cannot get its locks drops nothing,
not even a foreign key.

Holding one parent while waiting for another could close a cycle with an application transaction
that locks them the other way round (an INSERT into credit_usage checks tenants, then credits), and
the deadlock detector would cancel the application's statement. So only the first parent lock of an
attempt may wait long (long enough for an autovacuum to yield); once a parent is held, every further
wait ends within half of ``deadlock_timeout`` — before anyone's deadlock check — and the attempt is
retried. The order of the parents rotates from attempt to attempt, so each gets its long wait.
"""

from __future__ import annotations

import json
import random
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import sqlalchemy as sa
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from psycopg2 import sql
from sqlalchemy.engine import Connection

from safedrop import queries
from safedrop.artifacts import md_list, publish_markdown
from safedrop.database import Database, connect
from safedrop.errors import DropFailed
from safedrop.migration import DropStatement, Migration, TableName
from safedrop.report import DependencyResult, DropResult
from tasks.cleanup import count_rows
from tasks.connection import table_status
from tasks.dependencies import analyse, depend_fingerprint, recheck, unapproved_changes

LOCK_NOT_AVAILABLE = "55P03"
DEADLOCK_DETECTED = "40P01"  # we lost a lock cycle (rolled back, holding nothing): as retryable as a timeout
QUERY_CANCELED = "57014"


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


# --------------------------------------------------------------------------------------------------
# Lock-safe execution
# --------------------------------------------------------------------------------------------------


@dataclass
class Attempts:
    count: int = 0
    lock_timeouts: int = 0


def lock_safe(
    db: Database,
    schedule: LockSchedule,
    statement_timeout_s: int,
    work: Callable[[Connection, float], None],
    *,
    what: str,
    lock_oids: list[int],
    tally: Attempts,
) -> None:
    """Run ``work(conn, deadline)`` in one transaction per attempt, retrying lock timeouts within the budget.

    ``deadline`` (time.monotonic()) ends the attempt's lock waits: ``work`` takes further locks with
    ``_lock_wait_until`` so that all its waits together stay within the attempt's lock_timeout.
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
                    work(conn, time.monotonic() + timeout_ms / 1000)
            return
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


def _lock_wait_until(conn: Connection, deadline: float, statement_timeout_s: int) -> None:
    """Let the next statement wait for locks only as long as the attempt has left (at least 1 ms)."""
    remaining_ms = int((deadline - time.monotonic()) * 1000)
    _set_timeouts(conn, max(1, remaining_ms), statement_timeout_s)


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


def _in_lock_order(fk_drops: list[ForeignKeyDrop], rotation: int) -> list[ForeignKeyDrop]:
    """The foreign-key drops grouped by the other table they lock; the groups rotated by ``rotation``."""
    groups: dict[TableName | None, list[ForeignKeyDrop]] = {}
    for fk in fk_drops:
        groups.setdefault(fk.other_table, []).append(fk)
    keys = list(groups)
    if keys:
        k = rotation % len(keys)
        keys = keys[k:] + keys[:k]
    return [fk for key in keys for fk in groups[key]]


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
            short_wait_s = _deadlock_timeout_s(conn) / 2
        _stop_if_changed(changes)

        rounds = 0

        def drop_in_one_transaction(conn: Connection, deadline: float) -> None:
            nonlocal rounds
            rounds += 1
            # The targets first, and only them: waiting here holds no lock on any other table.
            if present:
                _execute(conn, sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(_tables(present)))
            # Holding the targets, nothing can change underneath: what goes is what was approved.
            now, changes = recheck(
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
            # Then each foreign key to or from another table (credits, tenants, …): one parent lock at
            # a time, each waiting only for what is left of this attempt's lock_timeout — and, once a
            # parent is held, only briefly (see the module docstring).
            held_since: float | None = None

            def wait_limit() -> float:
                return deadline if held_since is None else min(deadline, held_since + short_wait_s)

            for fk in _in_lock_order(fk_drops, rounds - 1):
                _lock_wait_until(conn, wait_limit(), statement_timeout_s)
                _execute(conn, fk.statement)
                if held_since is None:
                    held_since = time.monotonic()
            inbound = {fk.constraint_name for fk in fk_drops if fk.direction == "inbound"}
            removed_by_cascade[:] = [fk.label for fk in fk_drops] + [
                f"{o.kind} {o.name}"
                for o in now.cascade
                if not (o.kind == "foreign key" and o.name in inbound)
            ]
            _lock_wait_until(conn, wait_limit(), statement_timeout_s)
            for statement in migration.statements:
                _execute(conn, render_drop(statement))
            if record_in_ledger and present:
                conn.exec_driver_sql(queries.load("ledger_setup").text)
                for table in present:
                    queries.rows(
                        conn,
                        "ledger_record",
                        schema_name=table.schema,
                        table_name=table.name,
                        row_count=expected_rows.get(table.qualified, 0),
                        migration=migration.name,
                        removed_by_cascade=json.dumps(removed_by_cascade),
                        backup_path=backup_path,
                        backup_sha256=backup_sha256,
                        flow_run_id=flow_run_id,
                    )

        lock_safe(
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
        raise DropFailed(f"the drop failed and was rolled back, no table was dropped: {first}") from None
    return DropResult(
        dropped=[t.qualified for t in present],
        removed_by_cascade=removed_by_cascade,
        duration_s=round(time.monotonic() - started, 3),
        lock_timeout_ms=schedule.first_timeout_ms,
        attempts=tally.count,
        lock_timeouts=tally.lock_timeouts,
    )


def render(result: DropResult) -> str:
    text = (
        f"# Drop\n\nDropped in one transaction after {result.attempts} lock-safe attempt(s) "
        f"({result.lock_timeouts} lock timeouts; first lock_timeout {result.lock_timeout_ms} ms), "
        f"{result.duration_s:.3f} s in all:\n\n{md_list(result.dropped)}"
    )
    if result.removed_by_cascade:
        text += f"\nAlso removed, as approved:\n\n{md_list(result.removed_by_cascade)}"
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
