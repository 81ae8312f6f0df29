"""Summary: the whole run as one report — the CLI's --json, and the run's summary artifact."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

from safedrop.artifacts import publish_markdown, publish_table
from safedrop.errors import SafedropError
from safedrop.parameters import DropParameters
from safedrop.plandigest import plan_digest
from safedrop.report import (
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
from safedrop.report_json import REPORT_ARTIFACT, report_json_markdown
from safedrop.report_markdown import HEADLINES, render_markdown
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
    return plan_digest(record.database, record.cleanup.target_rows, deps.cascade, deps.untracked)


def build_report(record: RunRecord, status: Status, error: SafedropError | None = None) -> RunReport:
    reasons = record.reasons()
    own = list(getattr(error, "reasons", None) or ([str(error)] if error is not None else []))
    if error is not None and not reasons:
        reasons = own  # a stop outside the prechecks (run lock, approval) or a failure
    elif error is not None and status == "failed":
        reasons = [*reasons, *own]
    elif error is not None:
        reasons = list(dict.fromkeys([*reasons, *own]))
    conn = record.connection
    targets = conn.targets if conn else []
    if record.cleanup:
        for t in targets:
            t.rows = record.cleanup.target_rows.get(t.name)
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
