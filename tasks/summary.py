"""Summary: the whole run as one report — the CLI's --json, and the run's summary artifact."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from safedrop.analysis.smokechecks import restore_command
from safedrop.errors import SafedropError
from safedrop.fleet.plandigest import plan_digest
from safedrop.parameters import DropParameters
from safedrop.report.artifacts import publish_markdown, publish_table
from safedrop.report.json_artifact import REPORT_ARTIFACT, report_json_markdown
from safedrop.report.markdown import HEADLINES, render_markdown
from safedrop.results import (
    ActivityResult,
    BackupResult,
    BackupSummary,
    CleanupResult,
    CodeScanResult,
    ConnectionResult,
    DependencyResult,
    DropResult,
    RunReport,
    SmokeCheckResult,
    Status,
    StepResult,
    VerificationResult,
)
from safedrop.steps import step


@dataclass
class RunRecord:
    """What the steps found so far; the flow fills it in as it goes."""

    params: DropParameters
    migration: str
    flow_run_id: str | None = None
    database: str | None = None
    started_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    started: float = field(default_factory=time.monotonic)
    connection: ConnectionResult | None = None
    activity: ActivityResult | None = None
    rehearsal: StepResult | None = None
    cleanup: CleanupResult | None = None
    dependencies: DependencyResult | None = None
    code: CodeScanResult | None = None
    backup: BackupResult | None = None
    drop: DropResult | None = None
    verification: VerificationResult | None = None
    smoke_checks: SmokeCheckResult | None = None
    drop_started: bool = False  # the drop step was called: from here a signal may find it committed
    error: SafedropError | None = None  # what the run ended with (its summary may not be published)

    def stage(self) -> str:
        """Where the run is: prechecks, backup, drop (from the backup's end to the drop's commit), or
        verification."""
        if self.drop is not None:
            return "verification"
        if self.backup is not None:
            return "drop"
        if self.code is not None:
            return "backup"
        return "prechecks"

    @property
    def steps(self) -> list[StepResult]:
        return [
            s
            for s in (
                self.connection,
                self.activity,
                self.cleanup,
                self.dependencies,
                self.rehearsal,
                self.code,
                self.backup,
                self.drop,
                self.verification,
                self.smoke_checks,
            )
            if s is not None
        ]

    def unfinished(self) -> str:
        """The step after the drop that has not finished: the one a failure after the commit was in."""
        if self.verification is None:
            return "verification"
        if self.smoke_checks is None:
            return "the smoke checks"
        return "the run's summary"

    def reasons(self) -> list[str]:
        return list(dict.fromkeys(r for s in self.steps for r in s.reasons))

    def warnings(self) -> list[str]:
        return list(dict.fromkeys(w for s in self.steps for w in s.warnings))


def plan_digest_of(record: RunRecord) -> str | None:
    """The plan digest of what the prechecks found (None before the cleanup check and the dependency
    scan ran): what a fleet's approval binds a database's run to."""
    if record.cleanup is None or record.dependencies is None:
        return None
    deps = record.dependencies
    identity = record.connection.identity if record.connection else None
    return plan_digest(
        record.database, record.cleanup.target_rows, deps.cascade, deps.untracked, identity=identity
    )


def after_the_drop(record: RunRecord) -> str | None:
    """What a run that failed after its drop committed must still say: what was dropped, where the
    backup is, the exact command that puts the tables back (None before the drop)."""
    if record.drop is None:
        return None
    dropped = ", ".join(record.drop.dropped) or "no table"
    path = record.backup.path if record.backup else None
    where = f"; the backup is {path}" if path else ""
    return f"the drop committed: {dropped} dropped{where}; to put them back: {restore_command(path)}"


def build_report(
    record: RunRecord, status: Status, error: SafedropError | None = None, problems: Sequence[str] = ()
) -> RunReport:
    """The run report. ``problems``: failures outside any step's result (the summary's own publication).
    A failed run whose drop committed ends its reasons with what was dropped and how to restore it."""
    reasons = record.reasons()
    own = list(getattr(error, "reasons", None) or ([str(error)] if error is not None else []))
    if error is not None and not reasons:
        reasons = own  # a stop outside the prechecks (run lock, approval) or a failure
    elif error is not None and status == "failed":
        reasons = [*reasons, *own]
    elif error is not None:
        reasons = list(dict.fromkeys([*reasons, *own]))
    reasons = [*reasons, *problems]
    facts = after_the_drop(record) if status == "failed" else None
    if facts and not any(
        restore_command(record.backup.path if record.backup else None) in r for r in reasons
    ):
        reasons.append(facts)
    conn = record.connection
    targets = conn.targets if conn else []
    if record.cleanup:
        for t in targets:
            t.rows = record.cleanup.target_rows.get(t.name)
    if record.drop:  # the report tells the end state: a dropped target no longer exists
        gone = set(record.drop.dropped)
        targets = [t.model_copy(update={"exists": False}) if t.name in gone else t for t in targets]
    keep = conn.keep if conn else []
    if record.cleanup:
        for t in keep:
            t.rows = record.cleanup.keep_rows.get(t.name)
    return RunReport(
        status=status,
        reasons=reasons,
        warnings=record.warnings(),
        migration=record.migration,
        dry_run=record.params.dry_run,
        database=record.database,
        database_identity=conn.identity if conn else None,
        server_version=conn.server_version if conn else None,
        targets=targets,
        keep=keep,
        inbound_foreign_keys=record.cleanup.inbound_foreign_keys if record.cleanup else [],
        cascade=record.dependencies.cascade if record.dependencies else [],
        untracked=record.dependencies.untracked if record.dependencies else [],
        activity=record.activity.tables if record.activity else [],
        code_scan=record.code.status if record.code else "not-run",
        code_references=record.code.references if record.code else [],
        code_sources=record.code.sources if record.code else [],
        backup=BackupSummary(path=record.backup.path, bytes=record.backup.bytes, sha256=record.backup.sha256)
        if record.backup
        else None,
        dropped=record.drop.dropped if record.drop else [],
        drop=record.drop,
        verification=record.verification,
        smoke_checks=record.smoke_checks,
        flow_run_id=record.flow_run_id,
        started_at=record.started_at,
        duration_s=round(time.monotonic() - record.started, 2),
        plan_digest=plan_digest_of(record),
    )


def report_of(
    record: RunRecord, status: Status, error: SafedropError | None = None, problems: Sequence[str] = ()
) -> RunReport:
    """The run report, published nowhere: when the summary step itself failed. Even if building the
    full report fails, a short one still says what was dropped, the backup and the restore command."""
    try:
        return build_report(record, status, error, problems)
    except Exception as exc:  # a bug in the report: the facts are still owed
        reasons = [str(error)] if error is not None else []
        first = (str(exc).strip().splitlines() or [""])[0]
        reasons += [*problems, f"the run report could not be built ({type(exc).__name__}: {first})"]
        facts = after_the_drop(record) if status == "failed" else None
        return RunReport(
            status=status,
            reasons=[*reasons, *([facts] if facts else [])],
            migration=record.migration,
            dry_run=record.params.dry_run,
            database=record.database,
            backup=BackupSummary(
                path=record.backup.path, bytes=record.backup.bytes, sha256=record.backup.sha256
            )
            if record.backup
            else None,
            dropped=record.drop.dropped if record.drop else [],
            flow_run_id=record.flow_run_id,
        )


@step("summary")
def summary(
    record: RunRecord, status: Status, error: SafedropError | None, artifact_prefix: str
) -> RunReport:
    """The run report, published as the run's summary artifact."""
    report = build_report(record, status, error)
    publish_markdown(f"{artifact_prefix}-summary", render_markdown(report), HEADLINES[report.status])
    publish_table(
        f"{artifact_prefix}-table-status",
        [{"table": t.name, "role": "target", "exists": t.exists, "rows": t.rows} for t in report.targets]
        + [{"table": t.name, "role": "keep", "exists": t.exists, "rows": t.rows} for t in report.keep],
        "Table status",
    )
    # the report as `--json` prints it, for programs: the fleet flow reads its children's here
    publish_markdown(
        f"{artifact_prefix}-{REPORT_ARTIFACT}", report_json_markdown(report), "The run report (JSON)"
    )
    return report
