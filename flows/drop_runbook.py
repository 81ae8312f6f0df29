"""The runbook: retire deprecated tables without losing a row, breaking the app, or stalling production.

``drop_tables`` is the whole job as plain Python — the steps (``tasks/``) are Prefect tasks inside a
flow run and plain functions otherwise — and returns how it ended (``RunEnding``). The Prefect flow
``drop-deprecated-tables`` (flows/drop_deprecated_tables.py) runs it as a flow run; the command line
without a Prefect server calls it directly, and then no module of Prefect is loaded.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from contextvars import ContextVar

from safedrop.analysis.smokechecks import named_url_problems, restore_command
from safedrop.errors import (
    PrecheckStop,
    RunEnded,
    SafedropError,
    SmokeCheckFailed,
    UsageError,
    VerificationFailed,
)
from safedrop.fleet.plandigest import stop_unless_approved, stop_unless_same_database
from safedrop.interrupts import Interrupted
from safedrop.migration import load_migration, parse_table_list
from safedrop.parameters import DropParameters
from safedrop.pg.database import Database, error_line, resolve_database
from safedrop.pg.lockschedule import LockSchedule
from safedrop.pg.runlock import one_run_at_a_time, stop_if_another_run_awaits_approval
from safedrop.results import RunEnding, RunReport, Status
from safedrop.runlog import run_logger
from safedrop.steps import running_plain
from safedrop.store import credentials as store_credentials
from tasks.activity import activity_check
from tasks.backup import BackupOptions, backup, backup_destination
from tasks.cleanup import cleanup_check
from tasks.code_references import code_scan
from tasks.connection import connection_precheck
from tasks.dependencies import dependency_scan
from tasks.drop import DropRequest, drop, outcome_of_failed_step, read_back_drop
from tasks.rehearsal import rehearsal
from tasks.smoke_checks import smoke_checks
from tasks.summary import RunRecord, plan_digest_of, report_of, summary
from tasks.verification import survivor_structure, verification

RUN_RECORDS: ContextVar[list[RunRecord] | None] = ContextVar("safedrop_run_records", default=None)


@contextmanager
def recording_runs() -> Iterator[list[RunRecord]]:
    """The records of the runs of this flow started within the block, as the flow fills them in: what
    the command line reports from when Prefect itself fails after a drop committed (its API gone, the
    run's final state not recorded), so the facts are never lost with the run's state."""
    records: list[RunRecord] = []
    token = RUN_RECORDS.set(records)
    try:
        yield records
    finally:
        RUN_RECORDS.reset(token)


def report_after_prefect_failed(record: RunRecord, error: BaseException) -> RunReport:
    """The report of a run whose drop committed and whose flow run Prefect could not finish."""
    first = (str(error).strip().splitlines() or [""])[0]
    problem = f"Prefect could not finish the flow run ({type(error).__name__}: {first})"
    return report_of(record, "failed", record.error, [problem])


def drop_tables(params: DropParameters, flow_run_id: str | None = None) -> RunEnding:
    """Prechecks, a verified backup, approval, one lock-safe drop, verification, smoke checks, summary.

    ``flow_run_id``: the Prefect flow run this is (None at the command line without a server).
    """
    with ExitStack() as held:  # what the run holds until it ends: the object store's credentials
        return _drop_tables(params, flow_run_id, held)


def _drop_tables(params: DropParameters, flow_run_id: str | None, held: ExitStack) -> RunEnding:
    run = RunRecord(params=params, migration=params.migration, flow_run_id=flow_run_id)
    if (records := RUN_RECORDS.get()) is not None:
        records.append(run)  # the command line reads it if Prefect itself fails after the drop
    prefix = "safedrop"
    db = request = None
    try:
        migration = load_migration(params.migration, default_schema=params.target_schema)
        run.params = params = params.for_migration(migration)  # its own keep list and code source
        run.migration, prefix = migration.name, migration.slug
        keep = parse_table_list(params.keep, params.target_schema)
        backups = backup_destination(params.backup_dir, BackupOptions.from_parameters(params))
        held.enter_context(store_credentials.from_block(params.backup_credentials_block))
        db = resolve_database(params.database_secret_block, url_env=params.database_url_env)
        run.database = db.display

        # 1. Prechecks: nothing changes until every one of them passes.
        run.connection = connection_precheck(db, migration, keep, prefix)
        if params.expected_system_identifier:  # a fleet's child: the database its plan saw, and no other
            stop_unless_same_database(params.expected_system_identifier, run.connection.identity)
        if run.connection.all_targets_absent and not run.connection.reasons:
            run.verification = verification(db, migration.targets, keep, prefix)
            run.smoke_checks = smoke_checks(db, params, None, prefix)
            return _finish(run, "already-applied", prefix)
        with one_run_at_a_time(db, run.flow_run_id, enabled=not params.dry_run) as run_lock:
            if not params.dry_run:  # a run suspended for approval holds no lock: its flow run speaks
                stop_if_another_run_awaits_approval(db, run.flow_run_id)
            oids = {t: s.oid for t, s in zip(migration.targets, run.connection.targets, strict=True) if s.oid}
            present_keep = [t for t, s in zip(keep, run.connection.keep, strict=True) if s.exists]
            run.activity = activity_check(db, list(oids.values()), migration.slug, prefix)
            run.cleanup = cleanup_check(
                db, oids, present_keep, params.allow_nonempty, prefix, lock_wait_s=params.lock_wait_budget_s
            )
            run.dependencies = dependency_scan(db, migration, oids, params.allow_cascade, prefix)
            if params.rehearse:
                run.rehearsal = rehearsal(
                    db,
                    migration,
                    run.connection.server_version_num,
                    prefix,
                    lock_wait_s=params.lock_wait_budget_s,  # its schema dump queues no longer than that
                )
            run.code = code_scan(params, migration.targets, prefix)
            unreadable = named_url_problems(params.check_url_envs, params.check_url_secret_blocks)
            if run.reasons() or unreadable:  # a smoke check this worker cannot read stops before the drop
                raise PrecheckStop(run.reasons() + unreadable)
            if params.expected_plan_digest:  # a fleet's child: held to the plan approved for this database
                stop_unless_approved(params.expected_plan_digest, plan_digest_of(run) or "", run.database)
            if params.dry_run:
                return _finish(run, "ready", prefix)

            # 2. Backup, verified readable and holding every target; it records each target's rows and
            #    content checksum in the dump's own snapshot.
            run.backup = backup(
                db,
                list(oids),
                backups,
                BackupOptions.from_parameters(params),  # scope, format, jobs, compression, timeouts, …
                server_version_num=run.connection.server_version_num,
                artifact_prefix=prefix,
                migration=migration,  # the manifest records what the drop removes, for the restore
                allow_cascade=params.allow_cascade,
                flow_run_id=run.flow_run_id,
            )

            # 3. A human approves the plan (manual runs), then the drop: lock-safe, one transaction,
            #    rechecked under the lock against what was checked, backed up and approved.
            if params.approval == "required":
                from tasks.approval import await_approval  # Prefect's run input: only runs that wait

                await_approval(
                    run.cleanup,
                    run.dependencies,
                    run.backup,
                    timeout_s=params.approval_timeout_s,
                    artifact_prefix=prefix,
                )
            structure_before = survivor_structure(db, present_keep)  # what verification holds them to
            request = DropRequest(
                migration,
                oids,
                approved=run.dependencies,
                allow_cascade=params.allow_cascade,
                expected_rows=run.cleanup.target_rows,
                backup=run.backup,
                record_in_ledger=run.connection.ledger != "unavailable",
                flow_run_id=run.flow_run_id,
                run_lock_pid=run_lock.pid,
            )
            run.drop_started = True
            try:
                run.drop = drop(
                    db, request, LockSchedule.from_parameters(params), params.statement_timeout_s, prefix
                )
            except Exception as error:
                if isinstance(error, SafedropError):
                    raise  # the drop's own word on what happened
                run.drop = outcome_of_failed_step(db, request, error)  # raised again unless it committed

        # 4. Verification: targets gone, survivors whole (row counts reported, not judged); then the
        #    operator's smoke checks.
        run.verification = verification(
            db,
            migration.targets,
            keep,
            prefix,
            structure_before=structure_before,
            cleanup=run.cleanup,
            approved=run.dependencies,
        )
        run.smoke_checks = smoke_checks(db, params, run.backup.path, prefix)
        # the drop committed but its artifact could not be published: every fact is here, the run failed
        return _finish(run, "failed" if run.reasons() else "succeeded", prefix)
    except Interrupted as stop:
        _interrupted(run, stop, db, request)  # the command line says what was and was not done
        raise
    except SafedropError as error:
        if isinstance(error, VerificationFailed):
            run.verification = error.report
        if isinstance(error, SmokeCheckFailed):
            run.smoke_checks = error.report
        # after the drop committed nothing is "stopped, nothing changed": the run failed, with the facts
        return _finish(run, "failed" if run.drop is not None else error.status, prefix, error)
    except Exception as error:
        if run.drop is None:
            raise  # nothing was dropped: a bug, which Prefect records as the run's crash
        return _finish(run, "failed", prefix, _failed_after_the_drop(run, error, db))


def _failed_after_the_drop(run: RunRecord, error: Exception, db: Database | None) -> SafedropError:
    """An error nothing expected (a revoked privilege, a server gone, Prefect's API down) after the drop
    committed: the step it ended, in one line."""
    said = error_line(error, db) if db is not None else (str(error).strip().splitlines() or [""])[0]
    return SafedropError(
        f"{run.unfinished()} failed after the drop committed ({type(error).__name__}: {said})"
    )


def _interrupted(run: RunRecord, stop: Interrupted, db: Database | None, request: DropRequest | None) -> None:
    """A signal: settle whether the drop committed (never guessed), the stage the command line names,
    and — if the tables are or may be gone — the report that says what was dropped and how to restore."""
    if run.drop is None and stop.drop is not None:
        run.drop = stop.drop  # the drop step read back that its COMMIT landed
    if run.drop is None and run.stage() == "drop" and stop.outcome is None:
        stop.outcome = "rolled back"  # the drop step never began: no DROP was sent
        if run.drop_started and db is not None and request is not None:  # it began: read back, not guess
            try:
                run.drop = read_back_drop(db, request, why=f"interrupted ({stop}) as the drop step ended")
                stop.outcome = "committed" if run.drop is not None else "rolled back"
            except (SafedropError, Interrupted) as unknown:
                stop.outcome, stop.unknown_because = "unknown", str(unknown)
    stop.stage = run.stage()
    if stop.stage == "drop" and stop.outcome == "unknown":
        stop.stage = "drop-unknown"
        line = (
            f"interrupted ({stop}) during the drop, and whether it committed could not be read back "
            f"({stop.unknown_because})"
        )
        path = run.backup.path if run.backup else None
        stop.report = report_of(
            run, "failed", SafedropError(f"{line}; if the targets are gone: {restore_command(path)}")
        )
    elif run.drop is not None:
        if stop.outcome == "committed":
            stop.stage = "drop-committed"
        elif run.verification is not None:
            stop.stage = "verified"  # during the smoke checks or the summary
        line = f"interrupted ({stop}) after the drop committed, before {run.unfinished()} finished"
        stop.report = report_of(run, "failed", SafedropError(line))


def _finish(run: RunRecord, status: Status, prefix: str, error: SafedropError | None = None) -> RunEnding:
    """5. Summary: publish the report and end the run in a state that says what happened."""
    run.error = error  # if Prefect cannot even end the run, the command line still reports it
    try:
        report: RunReport = summary(run, status, error, prefix)
    except Exception as failure:  # Prefect's API, say: the report is built here, and says so
        first = (str(failure).strip().splitlines() or [""])[0]
        problem = f"the run's summary could not be published ({type(failure).__name__}: {first})"
        status = "failed" if run.drop is not None else status
        report = report_of(run, status, error, [problem])
    message = "; ".join(report.reasons)
    logger = None if running_plain() else run_logger()  # the command line prints the report itself
    if status == "stopped" and run.params.dry_run:
        # a readiness report that says "not yet" is a finished report, not a failed run
        if logger:
            logger.warning("not ready: %s", message)
        return RunEnding(completed=True, name="Not ready", message=message, data=report)
    if status in ("stopped", "failed"):
        # a stop is an expected outcome (the report says why); a failure is an error
        if logger:
            (logger.info if status == "stopped" else logger.error)("%s: %s", status, message)
        code = error.exit_code if isinstance(error, UsageError) else None  # bad input found in the run: 2
        return RunEnding(
            completed=False,
            name=status.capitalize(),
            message=message,
            data=RunEnded(message, report=report, status=status, exit_code=code),
        )
    names = {"already-applied": "Already applied", "ready": "Ready", "succeeded": "Completed"}
    return RunEnding(completed=True, name=names[status], message=f"{status}: {report.migration}", data=report)
