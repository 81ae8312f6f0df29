"""The way back: restore the tables a safedrop drop removed, with everything CASCADE took, from its backup.

``restore_tables`` is the runbook as plain Python; the Prefect flow ``restore-dropped-tables``
(flows/restore_dropped_tables.py) runs it as a flow run, the command line without a server directly.
"""

from __future__ import annotations

import time

from safedrop.errors import SafedropError
from safedrop.parameters import RestoreParameters
from safedrop.pg.database import resolve_database
from safedrop.pg.lockschedule import LockSchedule
from safedrop.report.artifacts import md_list, md_table, publish_markdown
from safedrop.restore.fetch import fetched, locate
from safedrop.results import RestoreCheck, RestoreReport, RestoreStatus, RestoreVerification, RunEnding
from safedrop.runlog import run_logger
from safedrop.steps import running_plain
from safedrop.store import credentials as store_credentials
from tasks.restore import restore, restore_precheck, restore_verification

_HEADLINES = {
    "restored": "Restored: the dropped tables and what CASCADE removed are back, and verified",
    "already-restored": "Already restored: the tables are there with exactly the backup's contents",
    "ready": "Ready: the archive checks out and nothing it would restore exists",
    "refused": "Refused: nothing was changed",
    "failed": "Failed",
}


def restore_tables(params: RestoreParameters, flow_run_id: str | None = None) -> RunEnding:
    """Precheck, one lock-safe restore, verification against the manifest, summary.

    ``flow_run_id``: the Prefect flow run this is (None at the command line without a server).
    """
    report = RestoreReport(
        status="failed", backup=params.backup_path, dry_run=params.dry_run, flow_run_id=flow_run_id
    )
    started = time.monotonic()
    prefix = "restore"
    try:
        db = resolve_database(params.database_secret_block, url_env=params.database_url_env)
        report.database = db.display

        with (
            store_credentials.from_block(params.backup_credentials_block),
            fetched(locate(params.backup_path)) as archive,  # from object storage: here, proven
        ):
            # 1. Precheck: the archive is what its manifest says, this is its database (or another, chosen);
            #    nothing to restore exists.
            plan = restore_precheck(db, archive, prefix, params.into_other_database)
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


def _finish(report: RestoreReport, status: RestoreStatus, prefix: str, started: float) -> RunEnding:
    """4. Summary: the report as an artifact, and a state that says what happened."""
    report.status = status
    report.duration_s = round(time.monotonic() - started, 2)
    publish_markdown(f"{prefix}-summary", render(report), _HEADLINES[status])
    if status in ("refused", "failed"):
        if not running_plain():  # the command line prints the report itself
            run_logger().error("%s: %s", status, "; ".join(report.reasons))
        return RunEnding(
            completed=False, name=status.capitalize(), message="; ".join(report.reasons), data=report
        )
    names = {"restored": "Restored", "already-restored": "Already restored", "ready": "Ready"}
    return RunEnding(completed=True, name=names[status], message=f"{status}: {report.backup}", data=report)


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
