"""The way back: restore the tables a safedrop drop removed, with everything CASCADE took, from its backup."""

from __future__ import annotations

import time

from prefect import flow
from prefect.runtime import flow_run
from prefect.states import Completed, Failed, State

from safedrop.artifacts import md_list, md_table, publish_markdown
from safedrop.database import resolve_database
from safedrop.errors import SafedropError
from safedrop.lockschedule import LockSchedule
from safedrop.parameters import RestoreParameters
from safedrop.report import RestoreCheck, RestoreReport, RestoreStatus, RestoreVerification
from safedrop.runlog import run_logger
from safedrop.steps import running_plain
from tasks.restore import restore, restore_precheck, restore_verification

_HEADLINES = {
    "restored": "Restored: the dropped tables and what CASCADE removed are back, and verified",
    "already-restored": "Already restored: the tables are there with exactly the backup's contents",
    "ready": "Ready: the archive checks out and nothing it would restore exists",
    "refused": "Refused: nothing was changed",
    "failed": "Failed",
}


@flow(name="restore-dropped-tables", log_prints=False, validate_parameters=True)
def restore_dropped_tables(params: RestoreParameters) -> State:
    """Restore the tables a drop-deprecated-tables run removed, from the backup it took before the drop.

    The archive must match its manifest (size and sha256); the manifest says exactly what the drop
    removed: the tables with their rows, sequences and values, indexes, constraints, triggers, policies,
    grants and comments, and what CASCADE took from surviving objects (foreign keys, views). Nothing
    to restore may exist yet, and the database must be the one the backup was taken of (its name and
    its cluster's system identifier) unless into_other_database is set. Everything but the foreign
    keys goes back in ONE pg_restore transaction, lock-safe: a lock wait longer than lock_timeout
    rolls it back, and it is retried with a longer one (backoff, jitter) within lock_wait_budget_s,
    else nothing is restored and the blocking sessions are
    named. Then the foreign keys are added NOT VALID (no scan, so writers of the tables they reference
    wait milliseconds, not a whole scan) and validated one by one while writes go on. Last, every
    table's row count and checksum, every sequence's value and every foreign key's validation are
    compared with the manifest. The database URL comes only from the source the parameters name — the
    Secret block, or the environment variable database_url_env — and only when neither is named from
    DATABASE_URL (environment or .env).
    """
    report = RestoreReport(
        status="failed", backup=params.backup_path, dry_run=params.dry_run, flow_run_id=flow_run.get_id()
    )
    started = time.monotonic()
    prefix = "restore"
    try:
        db = resolve_database(params.database_secret_block, url_env=params.database_url_env)
        report.database = db.display

        # 1. Precheck: the archive is what its manifest says, this is its database (or another, chosen);
        #    nothing to restore exists.
        plan = restore_precheck(db, params.backup_path, prefix, params.into_other_database)
        report.check = plan.check
        report.warnings = list(plan.warnings)
        if plan.already_restored:
            return _finish(report, "already-restored", prefix, started)
        if params.dry_run:
            return _finish(report, "ready", prefix, started)

        # 2. Restore: the tables in one lock-safe transaction; the foreign keys NOT VALID, then validated.
        schedule = LockSchedule.from_parameters(params)
        report.restore = restore(db, plan, params.no_owner, params.timeout_s, schedule, prefix)

        # 3. Verification against the manifest, each foreign key validated.
        report.verification = restore_verification(db, plan, report.restore, prefix)
        return _finish(report, "restored", prefix, started)
    except SafedropError as error:
        if isinstance(error.report, RestoreCheck):
            report.check = error.report
        if isinstance(error.report, RestoreVerification):
            report.verification = error.report
        report.reasons = [str(error)]
        status = "refused" if error.exit_code == 3 else "failed"
        if error.exit_code == 2:  # bad input (a missing archive, a malformed URL): nothing was touched
            status = "failed"
        return _finish(report, status, prefix, started)


def _finish(report: RestoreReport, status: RestoreStatus, prefix: str, started: float) -> State:
    """4. Summary: the report as an artifact, and a state that says what happened."""
    report.status = status
    report.duration_s = round(time.monotonic() - started, 2)
    publish_markdown(f"{prefix}-summary", render(report), _HEADLINES[status])
    if status in ("refused", "failed"):
        if not running_plain():  # the command line prints the report itself
            run_logger().error("%s: %s", status, "; ".join(report.reasons))
        return Failed(name=status.capitalize(), message="; ".join(report.reasons), data=report)
    names = {"restored": "Restored", "already-restored": "Already restored", "ready": "Ready"}
    return Completed(name=names[status], message=f"{status}: {report.backup}", data=report)


def render(report: RestoreReport) -> str:
    out = [
        f"# {_HEADLINES[report.status]}",
        "",
        f"Backup `{report.backup}` into `{report.database or '?'}`"
        f"{' — dry run' if report.dry_run else ''}; {report.duration_s} s.",
        "",
    ]
    if report.reasons:
        out += ["## Why", "", md_list(report.reasons)]
    if report.warnings:
        out += ["## Warnings", "", md_list(report.warnings)]
    if report.check:
        out += [
            f"## Entries {'restored' if report.restore else 'to restore'} ({len(report.check.entries)})",
            "",
            md_list(report.check.entries),
        ]
    if report.verification:
        rows = [
            {
                "table": t.name,
                "rows": t.rows_found,
                "checksum": "matches" if t.checksum_matches else "DIFFERS",
            }
            for t in report.verification.tables
        ]
        out += ["## Verification", "", md_table(rows), md_list(report.verification.sequences)]
        if report.verification.foreign_keys:
            out += ["### Foreign keys", "", md_list(report.verification.foreign_keys)]
    return "\n".join(out)


if __name__ == "__main__":
    import sys

    restore_dropped_tables(RestoreParameters(backup_path=sys.argv[1]))
