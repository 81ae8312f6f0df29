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
another could close a cycle with an application statement that locks them the other way round (an
INSERT into credit_usage checks tenants, then credits), and the deadlock detector cancels whichever
waiter's check fires first — measured: the application's INSERT, 2 of 16 runs with a long transaction
on credits (SQLSTATE 40P01), when the later parents were taken with a short lock_timeout. So only the
first parent lock of an attempt waits (long enough for an autovacuum to yield). Every later lock —
the other parents, and with CASCADE the relations owning what it removes — is taken ``NOWAIT``,
tried again every 2 ms for at most half of ``deadlock_timeout`` (``sql/queries/lock_nowait_spin.sql``):
a drop that never waits while it holds a lock is never part of a wait cycle, so no application
statement can lose a deadlock to it. Then the attempt is retried; the order of the parents rotates
from attempt to attempt, so each gets its long wait. All waits of an attempt together stay within its
lock_timeout, so no query queues behind an attempt for longer than that. Nothing commits unless
everything does: a run that cannot get its locks drops nothing, not even a foreign key.

Before the first lock the run lock (safedrop's advisory lock, held by another session of this run) is
checked in ``pg_locks``: a run that lost it stops. Under EXCLUSIVE the targets' contents are compared
with the checksums the backup took in the dump's own snapshot: a row written after the dump (which
the archive does not hold) stops the drop, so no committed write is lost. If the connection is lost
during COMMIT, the outcome is read back from the catalog and the ledger instead of being guessed.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass

import sqlalchemy as sa
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from psycopg2 import sql
from sqlalchemy.engine import Connection

from safedrop import queries
from safedrop.artifacts import md_list, publish_markdown
from safedrop.cascade import analyse, recheck_edges, recheck_functions, unapproved_changes
from safedrop.catalog import depend_fingerprint
from safedrop.checksums import checksum_methods, pin_text_settings, table_checksums
from safedrop.database import Database, connect, execute_composed
from safedrop.errors import ChangedSinceBackup, ConnectionFailed, DropFailed, DropStopped
from safedrop.lockschedule import (
    Attempts,
    CommitOutcomeUnknown,
    LockSchedule,
    first_line,
    lock_safe,
    lock_wait_until,
    lock_waits,
    remaining_ms,
    run_lock_safe,
)
from safedrop.migration import Migration, TableName, render_drop, tables_sql
from safedrop.report import BackupResult, DependencyResult, DropResult, TableChecksum
from tasks.cleanup import count_rows
from tasks.connection import table_status

QUERY_CANCELED = "57014"
DEPENDENT_OBJECTS_STILL_EXIST = "2BP01"  # DROP … RESTRICT refused: something new depends on a target


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


def needs_no_cascade(now: DependencyResult, fk_drops: list[ForeignKeyDrop]) -> bool:
    """Whether, once the foreign keys are gone, ``DROP TABLE … RESTRICT`` removes exactly the approved set."""
    inbound = {fk.constraint_name for fk in fk_drops if fk.direction == "inbound"}
    return all(o.kind == "foreign key" and o.name in inbound for o in now.cascade if o.needs_cascade)


_RELATION_KINDS = {
    "table",
    "view",
    "materialized view",
    "partition",
    "inheritance child table",
    "foreign table",
}


def cascade_relations(now: DependencyResult) -> list[TableName]:
    """The relations outside the targets that DROP … CASCADE locks: those it removes, and the tables
    owning what it removes (a policy's, a rule's, a column's table)."""
    names = {o.owner_table for o in now.cascade if o.owner_table}
    names |= {o.name for o in now.cascade if o.kind in _RELATION_KINDS}
    return sorted({t for t in map(_unquote_qualified, names) if t is not None})


def _deadlock_timeout_s(conn: Connection) -> float:
    value = conn.exec_driver_sql(
        "SELECT extract(epoch FROM current_setting('deadlock_timeout')::interval)"
    ).scalar()
    return float(value or 1.0)


def _oids_of(conn: Connection, tables: list[TableName]) -> list[int]:
    return list(_oids_by_table(conn, tables).values())


def _oids_by_table(conn: Connection, tables: list[TableName]) -> dict[TableName, int]:
    """The oid of each table that exists (those that do not are left out)."""
    if not tables:
        return {}
    return {t: r["oid"] for t, r in zip(tables, table_status(conn, tables), strict=True) if r["oid"]}


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


def _stop_if_run_lock_lost(conn: Connection, run_lock_pid: int | None) -> None:
    """The run lock lives in another session of this run; if that session ended, so did the lock."""
    if run_lock_pid is None:
        return
    if not queries.one(conn, "advisory_lock_held", pid=run_lock_pid)["held"]:
        raise DropStopped(
            f"safedrop's run lock was lost: its session (pid {run_lock_pid}) has ended "
            "(idle_session_timeout, a DBA, or the network), so another run may be working on this "
            "database; nothing was dropped — re-run"
        )


def content_changes(conn: Connection, backed_up: list[TableChecksum], txid_snapshot: str | None) -> list[str]:
    """What changed in the targets since the backup's snapshot (empty: every row is in the archive).

    Each target's row count and checksum, taken now the way the backup took it, against the manifest.
    Where they differ, rows whose xmin the backup's snapshot does not see say how many were written since.
    """
    pin_text_settings(conn)
    tables = [TableName(t.schema_name, t.table_name) for t in backed_up]
    now = table_checksums(conn, tables, methods=checksum_methods(backed_up))
    changed = [
        (t, table)
        for t, table in zip(backed_up, tables, strict=True)
        if now.get(table) != (t.rows, t.checksum)
    ]
    if not changed:
        return []
    written: dict[str, int] = {}
    if txid_snapshot:
        rows = queries.rows(
            conn,
            "rows_written_since",
            schemas=[table.schema for _, table in changed],
            names=[table.name for _, table in changed],
            snapshot=txid_snapshot,
        )
        written = {TableName(r["schema_name"], r["table_name"]).qualified: int(r["written"]) for r in rows}
    out = []
    for t, table in changed:
        rows_now = now[table][0] if table in now else 0
        if table.qualified not in written:
            out.append(f"{t.name} changed after the backup ({t.rows:,} rows then, {rows_now:,} now)")
            continue
        new = written[table.qualified]
        gone = t.rows - (rows_now - new)  # backed-up rows deleted or overwritten since
        changed_rows = max(new, gone)
        out.append(
            f"{changed_rows:,} row{'' if changed_rows == 1 else 's'} of {t.name} changed after the backup "
            f"({new:,} written since its snapshot, {gone:,} of its rows deleted or overwritten)"
        )
    return out


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
    content_check: str = ""


def outcome_after_lost_commit(
    db: Database,
    present: list[TableName],
    *,
    backend_pid: int | None,
    flow_run_id: str | None,
    record_in_ledger: bool,
    patience_s: float = 60,
) -> bool:
    """Whether a drop whose COMMIT lost its connection committed: read back from the catalog and ledger.

    Waits (within ``patience_s``) until the drop's old session has ended, so a COMMIT still under way
    cannot be mistaken for a rollback. Raises DropFailed when the truth cannot be read.
    """
    deadline = time.monotonic() + patience_s
    while True:
        try:
            with connect(db) as conn:
                if backend_pid is None or not queries.one(conn, "backend_alive", pid=backend_pid)["alive"]:
                    status = table_status(conn, present)
                    ledger = _ledger_rows_of(conn, present, flow_run_id) if record_in_ledger else None
                    break
        except ConnectionFailed:
            pass
        if time.monotonic() > deadline:
            names = ", ".join(t.qualified for t in present)
            raise DropFailed(
                "the connection was lost during the drop's COMMIT and the database could not be read "
                f"again within {patience_s:g} s to tell whether it committed; check whether {names} still "
                "exist (safedrop plan tells) before anything else"
            )
        time.sleep(1)
    gone = [r["qualified"] for r in status if r["oid"] is None]
    if not gone:
        return False
    if len(gone) == len(present) and (ledger is None or ledger == len(present)):
        return True
    raise DropFailed(
        "the connection was lost during the drop's COMMIT and the database now disagrees with itself: "
        f"{', '.join(gone)} gone, {len(present) - len(gone)} target(s) still there, "
        f"{ledger if ledger is not None else 'no'} ledger entries of this run; inspect it before "
        "anything else"
    )


def _ledger_rows_of(conn: Connection, tables: list[TableName], flow_run_id: str | None) -> int:
    if not queries.one(conn, "ledger_status")["ledger_exists"]:
        return 0
    rows = queries.rows(
        conn, "ledger_lookup", schemas=[t.schema for t in tables], names=[t.name for t in tables]
    )
    return sum(1 for r in rows if flow_run_id is None or r["flow_run_id"] == flow_run_id)


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
    backup: BackupResult | None = None,
    flow_run_id: str | None = None,
    run_lock_pid: int | None = None,
) -> DropResult:
    """Drop the targets in one lock-safe transaction. With ``backup``, their contents are rechecked
    under the lock against its checksums; without, their row counts against ``expected_rows``."""
    present = [t for t in migration.targets if t in oids]
    started = time.monotonic()
    tally = Attempts()
    removed_by_cascade: list[str] = []
    backed_up = [
        t for t in (backup.targets if backup else []) if TableName(t.schema_name, t.table_name) in oids
    ]
    if backup and backed_up:
        expected_rows = {
            **expected_rows,
            **{TableName(t.schema_name, t.table_name).qualified: t.rows for t in backed_up},
        }
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
            # once a parent is held, later locks are taken NOWAIT within half of deadlock_timeout
            short_wait_ms = int(_deadlock_timeout_s(conn) * 1000 / 2)
        _stop_if_changed(changes)

        rounds = 0

        def drop_in_one_transaction(conn: Connection, deadline: float) -> Held:
            nonlocal rounds
            rounds += 1
            held = Held()
            # Before any lock: the run lock, function bodies (no lock protects them), the ledger's DDL.
            _stop_if_run_lock_lost(conn, run_lock_pid)
            _stop_if_changed(recheck_functions(conn, migration, oids, allow_cascade, approved, preflight))
            if record_in_ledger and present:
                _ensure_ledger(conn)

            # 1. The targets, and only them, IN EXCLUSIVE MODE: their readers go on, nothing changes.
            if present:
                execute_composed(conn, sql.SQL("LOCK TABLE {} IN EXCLUSIVE MODE").format(tables_sql(present)))
                held.exclusive_at = time.monotonic()
            now, changes, fingerprint = recheck_edges(
                conn, migration, oids, allow_cascade, approved, preflight, preflight_fingerprint
            )
            _stop_if_changed(changes)
            held.content_check = _recheck_contents(conn, present, backed_up, backup, expected_rows)
            _stop_if_run_lock_lost(conn, run_lock_pid)
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
                    backup_path=backup.path if backup else None,
                    backup_sha256=backup.sha256 if backup else None,
                    flow_run_id=flow_run_id,
                )
            restrict = bool(present) and needs_no_cascade(now, fk_drops)
            # The final round trip's locks: the first parent's may wait; all others are taken NOWAIT.
            groups = parent_groups(fk_drops, rounds - 1)
            first, later = (groups[0], groups[1:]) if groups else ([], [])
            others = [fk.other_table for group in later for fk in group[:1] if fk.other_table]
            if not restrict:
                others += [t for t in cascade_relations(now) if t not in oids]
            held_first = {fk.other_table for fk in first}
            later_locks = _oids_by_table(conn, [t for t in dict.fromkeys(others) if t not in held_first])

            # 2. ACCESS EXCLUSIVE (it waits for the targets' readers only), then one round trip.
            if present:
                lock_wait_until(conn, deadline, statement_timeout_s)
                execute_composed(
                    conn, sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(tables_sql(present))
                )
                held.access_exclusive_at = time.monotonic()
            if restrict:
                held.guard = "DROP TABLE … RESTRICT"
                drops: list[sql.Composable] = [sql.SQL("DROP TABLE {} RESTRICT").format(tables_sql(present))]
            else:
                if present and depend_fingerprint(conn, now.addresses) != fingerprint:
                    raise _changed_while_waiting("the dependencies of the targets moved")
                held.guard = "dependency fingerprint"
                drops = [render_drop(statement) for statement in migration.statements]
            waits = lock_waits(remaining_ms(deadline), 1 + len(later_locks), short_wait_ms)
            run_lock_safe(
                conn,
                [fk.statement for fk in first],
                waits[0],
                later_locks,
                sum(waits[1:]) or short_wait_ms,
                [fk.statement for group in later for fk in group] + drops,
            )
            return held

        try:
            held, committed = lock_safe(
                db,
                schedule,
                statement_timeout_s,
                drop_in_one_transaction,
                what="the table drop",
                lock_oids=lock_oids,
                tally=tally,
            )
        except CommitOutcomeUnknown as lost:
            return _after_lost_commit(
                db, present, lost, tally, schedule, started, removed_by_cascade, flow_run_id, record_in_ledger
            )
    except sa.exc.DBAPIError as exc:
        code = getattr(exc.orig, "pgcode", None)
        if code == QUERY_CANCELED:
            raise DropFailed(
                f"the drop took longer than statement_timeout {statement_timeout_s} s and was rolled back; "
                "no table was dropped"
            ) from None
        said = first_line(exc)
        if code == DEPENDENT_OBJECTS_STILL_EXIST:
            detail = (getattr(getattr(exc.orig, "diag", None), "message_detail", None) or "").splitlines()
            refusal = said.removeprefix("ERROR:").strip()
            raise _changed_while_waiting(f"{refusal}: {detail[0]}" if detail else refusal) from None
        raise DropFailed(f"the drop failed and was rolled back, no table was dropped: {said}") from None

    def held_ms(since: float | None) -> float | None:
        return round((committed - since) * 1000, 2) if since is not None else None

    return _result(
        present,
        removed_by_cascade,
        started,
        schedule,
        tally,
        writes_blocked_ms=held_ms(held.exclusive_at),
        all_blocked_ms=held_ms(held.access_exclusive_at),
        guard=held.guard,
        content_check=held.content_check,
    )


def _result(
    present: list[TableName],
    removed_by_cascade: list[str],
    started: float,
    schedule: LockSchedule,
    tally: Attempts,
    **details,
) -> DropResult:
    return DropResult(
        dropped=[t.qualified for t in present],
        removed_by_cascade=removed_by_cascade,
        duration_s=round(time.monotonic() - started, 3),
        lock_timeout_ms=schedule.first_timeout_ms,
        attempts=tally.count,
        lock_timeouts=tally.lock_timeouts,
        **details,
    )


def _recheck_contents(
    conn: Connection,
    present: list[TableName],
    backed_up: list[TableChecksum],
    backup: BackupResult | None,
    expected_rows: dict[str, int],
) -> str:
    """Under EXCLUSIVE: the targets hold what the backup holds (else: what the prechecks counted)."""
    if backed_up:
        changes = content_changes(conn, backed_up, backup.txid_snapshot if backup else None)
        if changes:
            raise ChangedSinceBackup(
                f"{'; '.join(changes)}; nothing was dropped — re-run so the backup holds every row "
                "(stop the application's writes to the targets first)"
            )
        return f"row counts and content checksums of {len(backed_up)} target(s) match the backup"
    rows_now = count_rows(conn, present)
    changed = {t: (expected_rows.get(t), n) for t, n in rows_now.items() if expected_rows.get(t) != n}
    if changed:
        detail = ", ".join(f"{t} had {a} rows, now {b}" for t, (a, b) in changed.items())
        raise DropFailed(
            f"rows changed since the prechecks ({detail}); nothing was dropped — re-run so the "
            "backup and checks see them"
        )
    return f"row counts of {len(present)} target(s) match the prechecks"


def _after_lost_commit(
    db: Database,
    present: list[TableName],
    lost: CommitOutcomeUnknown,
    tally: Attempts,
    schedule: LockSchedule,
    started: float,
    removed_by_cascade: list[str],
    flow_run_id: str | None,
    record_in_ledger: bool,
) -> DropResult:
    """The connection broke during COMMIT: report what the database says happened."""
    committed = outcome_after_lost_commit(
        db, present, backend_pid=lost.backend_pid, flow_run_id=flow_run_id, record_in_ledger=record_in_ledger
    )
    if not committed:
        raise DropFailed(
            f"the connection was lost during the drop's COMMIT ({lost}); the database shows it did not "
            "commit: no table was dropped — re-run"
        )
    return _result(
        present,
        removed_by_cascade,
        started,
        schedule,
        tally,
        warnings=[
            f"the connection was lost during the drop's COMMIT ({lost}); the catalog and the ledger, read "
            "again, show that it committed"
        ],
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
            f"nothing new depended on them, proved by {result.guard}; {result.content_check}.\n"
        )
    for warning in result.warnings:
        text += f"\n- ⚠️ {warning}\n"
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
    backup: BackupResult | None,
    flow_run_id: str | None,
    run_lock_pid: int | None,
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
        backup=backup,
        flow_run_id=flow_run_id,
        run_lock_pid=run_lock_pid,
    )
    logger = get_run_logger()
    logger.info(
        "dropped %s in %.3f s (%d attempts)", ", ".join(result.dropped), result.duration_s, result.attempts
    )
    for warning in result.warnings:
        logger.warning(warning)
    publish_markdown(f"{artifact_prefix}-drop", render(result), "What the drop removed")
    return result
