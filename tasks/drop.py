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
import time
from dataclasses import dataclass, field

import sqlalchemy as sa
from psycopg2 import sql
from sqlalchemy.engine import Connection

from safedrop.analysis.cascade import Recheck, analyse, unapproved_changes
from safedrop.analysis.smokechecks import restore_command
from safedrop.errors import DropFailed
from safedrop.interrupts import Interrupted
from safedrop.migration import Migration, TableName, render_drop, tables_sql
from safedrop.pg.catalog import depend_fingerprint
from safedrop.pg.database import Database, connect, execute_composed
from safedrop.pg.dropping import (
    ForeignKeyDrop,
    cascade_relations,
    changed_while_waiting,
    deadlock_timeout_s,
    ensure_ledger,
    foreign_keys_to_drop,
    needs_no_cascade,
    oids_by_table,
    oids_of,
    outcome_after_lost_commit,
    parent_groups,
    recheck_contents,
    stop_if_changed,
    stop_if_run_lock_lost,
    write_ledger,
)
from safedrop.pg.lockschedule import (
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
from safedrop.report.artifacts import md_list, publish_markdown
from safedrop.results import BackupResult, DependencyResult, DropResult, TableChecksum
from safedrop.runlog import run_logger
from safedrop.steps import step

QUERY_CANCELED = "57014"
DEPENDENT_OBJECTS_STILL_EXIST = "2BP01"  # DROP … RESTRICT refused: something new depends on a target


@dataclass(frozen=True)
class DropRequest:
    """What the drop is asked to do, and what it holds the database to: the prechecks' findings."""

    migration: Migration
    oids: dict[TableName, int]  # the targets that exist, by their oid at the prechecks
    approved: DependencyResult  # what CASCADE may remove and what may break, as checked and approved
    allow_cascade: list[str] = field(default_factory=list)
    expected_rows: dict[str, int] = field(default_factory=dict)  # the prechecks' counts (no backup)
    backup: BackupResult | None = None  # with it, the targets' contents must match its checksums
    record_in_ledger: bool = True
    flow_run_id: str | None = None
    run_lock_pid: int | None = None  # the session holding the run lock, checked in pg_locks

    @property
    def present(self) -> list[TableName]:
        return [t for t in self.migration.targets if t in self.oids]

    @property
    def backed_up(self) -> list[TableChecksum]:
        targets = self.backup.targets if self.backup else []
        return [t for t in targets if TableName(t.schema_name, t.table_name) in self.oids]

    @property
    def rows(self) -> dict[str, int]:
        """The targets' row counts as the backup holds them (else as the prechecks counted them)."""
        return {**self.expected_rows, **{t.name: t.rows for t in self.backed_up}}


@dataclass
class Held:
    """When the attempt got the targets (time.monotonic()): EXCLUSIVE, then ACCESS EXCLUSIVE."""

    exclusive_at: float | None = None
    access_exclusive_at: float | None = None
    guard: str = ""
    content_check: str = ""


@dataclass
class Preflight:
    """Read once, before any attempt: the removal set now, and the foreign keys the drop removes."""

    analysis: DependencyResult
    fingerprint: str
    fk_drops: list[ForeignKeyDrop]
    lock_oids: list[int]  # who may block us: the targets, and the other side of each foreign key
    short_wait_ms: int  # once a parent is held, later locks are taken NOWAIT within this

    @classmethod
    def read(cls, conn: Connection, request: DropRequest) -> Preflight:
        analysis = analyse(conn, request.migration, request.oids, request.allow_cascade)
        stop_if_changed(unapproved_changes(request.approved, analysis))
        fk_drops = foreign_keys_to_drop(conn, request.oids, request.approved)
        others = sorted({fk.other_table for fk in fk_drops if fk.other_table})
        return cls(
            analysis=analysis,
            fingerprint=depend_fingerprint(conn, analysis.addresses),
            fk_drops=fk_drops,
            lock_oids=list(request.oids.values()) + oids_of(conn, others),
            short_wait_ms=int(deadlock_timeout_s(conn) * 1000 / 2),
        )


class Attempt:
    """One transaction of the drop (``lock_safe`` calls it once per attempt): the runbook above."""

    def __init__(self, request: DropRequest, preflight: Preflight, statement_timeout_s: int) -> None:
        self.request, self.preflight, self.statement_timeout_s = request, preflight, statement_timeout_s
        self.recheck = Recheck(
            request.migration,
            request.oids,
            request.allow_cascade,
            request.approved,
            preflight.analysis,
            preflight.fingerprint,
        )
        self.rounds = 0
        self.removed_by_cascade: list[str] = []
        self.backend_pid: int | None = None  # the session of the latest attempt (its COMMIT's, at the end)

    def __call__(self, conn: Connection, deadline: float) -> Held:
        self.rounds += 1
        self.backend_pid = conn.connection.dbapi_connection.info.backend_pid  # no round trip
        request, present, held = self.request, self.request.present, Held()
        self.before_any_lock(conn)
        # 1. The targets, and only them, IN EXCLUSIVE MODE: their readers go on, nothing changes.
        if present:
            execute_composed(conn, sql.SQL("LOCK TABLE {} IN EXCLUSIVE MODE").format(tables_sql(present)))
            held.exclusive_at = time.monotonic()
        now, changes, fingerprint = self.recheck.edges(conn)
        stop_if_changed(changes)
        held.content_check = recheck_contents(conn, present, request.backed_up, request.backup, request.rows)
        stop_if_run_lock_lost(conn, request.run_lock_pid)
        self.write_ledger(conn, now)
        restrict = bool(present) and needs_no_cascade(now, self.preflight.fk_drops)
        first, later, later_locks = self.lock_order(conn, now, restrict)
        # 2. ACCESS EXCLUSIVE (it waits for the targets' readers only), then one round trip.
        if present:
            lock_wait_until(conn, deadline, self.statement_timeout_s)
            execute_composed(
                conn, sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(tables_sql(present))
            )
            held.access_exclusive_at = time.monotonic()
        drops = self.drops(conn, now, fingerprint, restrict, held)
        short = self.preflight.short_wait_ms
        waits = lock_waits(remaining_ms(deadline), 1 + len(later_locks), short)
        rest = [fk.statement for group in later for fk in group] + drops
        run_lock_safe(
            conn, [fk.statement for fk in first], waits[0], later_locks, sum(waits[1:]) or short, rest
        )
        return held

    def before_any_lock(self, conn: Connection) -> None:
        """The run lock, function bodies (no lock protects them) and the ledger's DDL."""
        request = self.request
        stop_if_run_lock_lost(conn, request.run_lock_pid)
        stop_if_changed(self.recheck.functions(conn))
        if request.record_in_ledger and request.present:
            ensure_ledger(conn)

    def write_ledger(self, conn: Connection, now: DependencyResult) -> None:
        """What goes, in the drop's own transaction: one ledger row per target."""
        fk_drops = self.preflight.fk_drops
        inbound = {fk.constraint_name for fk in fk_drops if fk.direction == "inbound"}
        self.removed_by_cascade[:] = [fk.label for fk in fk_drops] + [
            f"{o.kind} {o.name}" for o in now.cascade if not (o.kind == "foreign key" and o.name in inbound)
        ]
        request = self.request
        if request.record_in_ledger and request.present:
            write_ledger(
                conn,
                request.present,
                row_count=request.rows,
                migration=request.migration.name,
                removed_by_cascade=json.dumps(self.removed_by_cascade),
                backup_path=request.backup.path if request.backup else None,
                backup_sha256=request.backup.sha256 if request.backup else None,
                flow_run_id=request.flow_run_id,
            )

    def lock_order(
        self, conn: Connection, now: DependencyResult, restrict: bool
    ) -> tuple[list[ForeignKeyDrop], list[list[ForeignKeyDrop]], dict[TableName, int]]:
        """The final round trip's locks: the first parent's may wait; all others are taken NOWAIT.
        The parents rotate from attempt to attempt, so each gets the long wait in turn."""
        groups = parent_groups(self.preflight.fk_drops, self.rounds - 1)
        first, later = (groups[0], groups[1:]) if groups else ([], [])
        others = [fk.other_table for group in later for fk in group[:1] if fk.other_table]
        if not restrict:
            others += [t for t in cascade_relations(now) if t not in self.request.oids]
        held_first = {fk.other_table for fk in first}
        return first, later, oids_by_table(conn, [t for t in dict.fromkeys(others) if t not in held_first])

    def drops(
        self, conn: Connection, now: DependencyResult, fingerprint: str, restrict: bool, held: Held
    ) -> list[sql.Composable]:
        """``DROP TABLE … RESTRICT`` when nothing beyond the foreign keys needs CASCADE (the server then
        refuses any dependant added meanwhile); else the migration's statements, once the dependency
        fingerprint proves nothing moved while the drop waited."""
        present = self.request.present
        if restrict:
            held.guard = "DROP TABLE … RESTRICT"
            return [sql.SQL("DROP TABLE {} RESTRICT").format(tables_sql(present))]
        if present and depend_fingerprint(conn, now.addresses) != fingerprint:
            raise changed_while_waiting("the dependencies of the targets moved")
        held.guard = "dependency fingerprint"
        return [render_drop(statement) for statement in self.request.migration.statements]


def drop_targets(
    db: Database, request: DropRequest, *, schedule: LockSchedule, statement_timeout_s: int
) -> DropResult:
    """Drop the targets in one lock-safe transaction, rechecked under its lock. With a backup, the
    targets' contents are rechecked against its checksums; without, their row counts."""
    started = time.monotonic()
    tally = Attempts()
    attempt: Attempt | None = None
    try:
        # Nothing new since the prechecks? (Checked again, under the lock, before the DROP itself.)
        with connect(db) as conn:
            preflight = Preflight.read(conn, request)
        attempt = Attempt(request, preflight, statement_timeout_s)
        try:
            held, committed = lock_safe(
                db,
                schedule,
                statement_timeout_s,
                attempt,
                what="the table drop",
                lock_oids=preflight.lock_oids,
                tally=tally,
            )
        except CommitOutcomeUnknown as lost:
            return _after_lost_commit(db, request, lost, tally, schedule, started, attempt.removed_by_cascade)
    except sa.exc.DBAPIError as exc:
        raise _failure(exc, statement_timeout_s) from None
    except Interrupted as stop:  # SIGTERM, Ctrl-C: say what the database did, not what it may have done
        _after_interrupted(db, request, attempt, stop, tally, schedule, started)
        raise

    def held_ms(since: float | None) -> float | None:
        return round((committed - since) * 1000, 2) if since is not None else None

    return _result(
        request,
        attempt.removed_by_cascade,
        started,
        schedule,
        tally,
        writes_blocked_ms=held_ms(held.exclusive_at),
        all_blocked_ms=held_ms(held.access_exclusive_at),
        guard=held.guard,
        content_check=held.content_check,
    )


def _failure(exc: sa.exc.DBAPIError, statement_timeout_s: int) -> DropFailed:
    """What the server's refusal means for the operator, in one line (the transaction rolled back)."""
    code = getattr(exc.orig, "pgcode", None)
    if code == QUERY_CANCELED:
        return DropFailed(
            f"the drop took longer than statement_timeout {statement_timeout_s} s and was rolled back; "
            "no table was dropped"
        )
    said = first_line(exc)
    if code == DEPENDENT_OBJECTS_STILL_EXIST:
        detail = (getattr(getattr(exc.orig, "diag", None), "message_detail", None) or "").splitlines()
        refusal = said.removeprefix("ERROR:").strip()
        return changed_while_waiting(f"{refusal}: {detail[0]}" if detail else refusal)
    return DropFailed(f"the drop failed and was rolled back, no table was dropped: {said}")


def _result(
    request: DropRequest,
    removed_by_cascade: list[str],
    started: float,
    schedule: LockSchedule,
    tally: Attempts,
    **details,
) -> DropResult:
    return DropResult(
        dropped=[t.qualified for t in request.present],
        removed_by_cascade=removed_by_cascade,
        duration_s=round(time.monotonic() - started, 3),
        lock_timeout_ms=schedule.first_timeout_ms,
        attempts=tally.count,
        lock_timeouts=tally.lock_timeouts,
        **details,
    )


def _after_lost_commit(
    db: Database,
    request: DropRequest,
    lost: CommitOutcomeUnknown,
    tally: Attempts,
    schedule: LockSchedule,
    started: float,
    removed_by_cascade: list[str],
) -> DropResult:
    """The connection broke during COMMIT: report what the database says happened."""
    try:
        committed = outcome_after_lost_commit(
            db,
            request.present,
            backend_pid=lost.backend_pid,
            flow_run_id=request.flow_run_id,
            record_in_ledger=request.record_in_ledger,
        )
    except DropFailed as unknown:  # not known whether it committed: the way back goes with the news
        raise DropFailed(
            f"{unknown}; if the targets are gone: {restore_command(_archive(request))}"
        ) from None
    if not committed:
        raise DropFailed(
            f"the connection was lost during the drop's COMMIT ({lost}); the database shows it did not "
            "commit: no table was dropped — re-run"
        )
    return _result(
        request,
        removed_by_cascade,
        started,
        schedule,
        tally,
        warnings=[
            f"the connection was lost during the drop's COMMIT ({lost}); the catalog and the ledger, read "
            "again, show that it committed"
        ],
    )


def _archive(request: DropRequest) -> str | None:
    return request.backup.path if request.backup else None


WAIT_FOR_THE_COMMIT_S = 60  # how long an interrupted run waits for its drop's session to end


def _after_interrupted(
    db: Database,
    request: DropRequest,
    attempt: Attempt | None,
    stop: Interrupted,
    tally: Attempts,
    schedule: LockSchedule,
    started: float,
) -> None:
    """A signal stopped the drop — perhaps during its COMMIT, which a cancel may not stop. Wait for the
    attempt's session to end on the server, then read from the catalog and the ledger whether the drop
    committed; record it on ``stop`` (``outcome``, and ``drop`` when it committed). A second signal,
    or a database that cannot be read, leaves it "unknown" — never "rolled back" unverified."""
    if attempt is None or attempt.backend_pid is None:  # no attempt began: no DROP was ever sent
        stop.outcome = "rolled back"
        return
    run_logger().warning(
        "interrupted during the drop: waiting for its session (pid %d) to end to tell whether it "
        "committed (at most %d s; interrupt again to stop waiting)",
        attempt.backend_pid,
        WAIT_FOR_THE_COMMIT_S,
    )
    try:
        committed = outcome_after_lost_commit(
            db,
            request.present,
            backend_pid=attempt.backend_pid,
            flow_run_id=request.flow_run_id,
            record_in_ledger=request.record_in_ledger,
            patience_s=WAIT_FOR_THE_COMMIT_S,
        )
    except (DropFailed, Interrupted) as unknown:
        stop.outcome = "unknown"
        stop.unknown_because = (
            "interrupted again while waiting" if isinstance(unknown, Interrupted) else str(unknown)
        )
        return
    stop.outcome = "committed" if committed else "rolled back"
    if committed:
        stop.drop = _result(
            request,
            attempt.removed_by_cascade,
            started,
            schedule,
            tally,
            warnings=[
                f"interrupted ({stop}) during the drop; its session ended and the catalog and the ledger, "
                "read again, show that it committed"
            ],
        )


def read_back_drop(db: Database, request: DropRequest, *, why: str) -> DropResult | None:
    """Whether the drop committed, read back from the catalog and the ledger, when its step ended
    without saying (``why``: what ended it): its result if it did (``why`` in its ``reasons``: the run
    fails, but says what was dropped), None if it did not. Raises DropFailed, carrying the restore
    command, when the database cannot tell."""
    try:
        committed = outcome_after_lost_commit(
            db,
            request.present,
            backend_pid=None,  # the step is over: no COMMIT of its is still under way
            flow_run_id=request.flow_run_id,
            record_in_ledger=request.record_in_ledger,
            patience_s=10,
        )
    except DropFailed as unknown:
        raise DropFailed(
            f"{why}, and {unknown}; if the targets are gone: {restore_command(_archive(request))}"
        ) from None
    if not committed:
        return None
    return _result(
        request,
        [],
        time.monotonic(),
        LockSchedule(),
        Attempts(),
        reasons=[f"{why}; the catalog and the ledger, read again, show that the drop committed"],
    )


def outcome_of_failed_step(db: Database, request: DropRequest, error: Exception) -> DropResult:
    """The drop step failed with an error the drop did not raise itself — Prefect's API gone after the
    COMMIT (the task's state could not be recorded), a bug: the drop's result if it committed all the
    same; ``error`` raised again if it did not."""
    first = (str(error).strip().splitlines() or [type(error).__name__])[0]
    result = read_back_drop(db, request, why=f"the drop step failed ({type(error).__name__}: {first})")
    if result is None:
        raise error
    return result


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


@step("drop")
def drop(
    db: Database,
    request: DropRequest,
    schedule: LockSchedule,
    statement_timeout_s: int,
    artifact_prefix: str,
) -> DropResult:
    """Run the migration's DROP statements: lock-safe, in one transaction, rechecked under the lock."""
    result = drop_targets(db, request, schedule=schedule, statement_timeout_s=statement_timeout_s)
    try:  # committed: from here on nothing may lose the result
        logger = run_logger()
        logger.info(
            "dropped %s in %.3f s (%d attempts)",
            ", ".join(result.dropped),
            result.duration_s,
            result.attempts,
        )
        for warning in result.warnings:
            logger.warning(warning)
        publish_markdown(f"{artifact_prefix}-drop", render(result), "What the drop removed")
    except Interrupted as stop:
        stop.outcome, stop.drop = "committed", result
        raise
    except Exception as exc:  # Prefect's API, say: the run fails, and still says what was dropped
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        result.reasons.append(
            f"the drop committed, but its artifact could not be published ({type(exc).__name__}: {first})"
        )
    return result
