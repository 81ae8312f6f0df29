"""The fleet's record and its report: what every database's children found, as one FleetReport, and the
artifacts that show it (the fleet table, updated as children finish; the summary at the end)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from uuid import UUID

from prefect.client.schemas.objects import FlowRun
from prefect.utilities.urls import url_for

from safedrop.fleet.fleetfile import FleetParameters
from safedrop.fleet.fleetreport import (
    FleetDatabaseReport,
    FleetReport,
    fleet_status,
    headline,
    summary_markdown,
    table_rows,
    target_rows,
)
from safedrop.report.artifacts import publish_markdown, publish_table
from safedrop.results import RunReport, Status


@dataclass
class DatabaseRecord:
    """One database as the fleet knows it so far: its plan, and its destructive run if started."""

    name: str
    source: str
    plan_status: Status = "ready"
    plan_reasons: list[str] = field(default_factory=list)
    plan: RunReport | None = None
    plan_run: FlowRun | None = None
    started: bool = False
    status: Status | None = None  # of the destructive run, once it ended
    reasons: list[str] = field(default_factory=list)
    report: RunReport | None = None
    run: FlowRun | None = None
    run_id: UUID | None = None


@dataclass
class FleetRecord:
    """What the fleet run found so far; the flow fills it in as it goes."""

    params: FleetParameters
    flow_run_id: str | None
    migration: str
    slug: str = "fleet"
    databases: dict[str, DatabaseRecord] = field(default_factory=dict)
    fleet_digest: str | None = None
    not_started_reason: str = ""  # why the databases that were ready were not started
    started: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        fleet = self.params.fleet
        if not self.databases:
            self.databases = {d.name: DatabaseRecord(d.name, d.source) for d in fleet.databases}


def _duration(run: FlowRun | None, report: RunReport | None) -> float | None:
    if run is not None and run.total_run_time:
        return round(run.total_run_time.total_seconds(), 1)
    return report.duration_s if report else None


def _url(run: FlowRun | None) -> str | None:
    if run is None:
        return None
    try:
        return url_for("flow-run", obj_id=run.id)
    except Exception:  # no UI URL configured: the id says enough
        return None


def database_report(record: FleetRecord, d: DatabaseRecord) -> FleetDatabaseReport:
    dry_run = record.params.dry_run
    if d.started:
        status: Status = d.status or "failed"
        reasons, report, run = list(d.reasons), d.report, d.run
    else:
        status, reasons, report, run = d.plan_status, list(d.plan_reasons), d.plan, d.plan_run
        if status == "ready" and not dry_run and record.not_started_reason:
            reasons = [record.not_started_reason]
    running = d.started and d.status is None
    if running:
        status, reasons = "ready", []
    return FleetDatabaseReport(
        name=d.name,
        status=status,
        flow_run_id=str(run.id) if run else (str(d.run_id) if d.run_id else None),
        reasons=reasons,
        backup=report.backup if report else None,
        source=d.source,
        database=(report or d.plan).database if (report or d.plan) else None,
        identity=_identity(report or d.plan),
        started=d.started,
        plan_flow_run_id=str(d.plan_run.id) if d.plan_run else None,
        plan_digest=d.plan.plan_digest if d.plan else None,
        target_rows=target_rows(report or d.plan),
        dropped=list(report.dropped) if report else [],
        duration_s=_duration(run, report),
        url=_url(run),
        warnings=list(report.warnings) if report else [],
        running=running,
    )


_WORSE = {"failed": 2, "stopped": 1}


def build_fleet_report(
    record: FleetRecord, extra_reasons: list[str] | None = None, *, at_least: str | None = None
) -> FleetReport:
    """The fleet report so far. ``extra_reasons``: the fleet's own (not approved, no deployment, …);
    ``at_least``: the status they imply (a fleet that was not approved did nothing, it stopped)."""
    fleet = record.params.fleet
    order = fleet.order
    databases = [database_report(record, record.databases[name]) for name in order]
    status = fleet_status((d.status for d in databases), dry_run=record.params.dry_run)
    reasons = [*(extra_reasons or [])]
    reasons += [
        f"{d.name}: {'; '.join(d.reasons)}"
        for d in databases
        if d.status in ("stopped", "failed") and d.reasons
    ]
    if at_least in _WORSE and _WORSE[at_least] > _WORSE.get(status, 0):
        status = at_least  # type: ignore[assignment]
    return FleetReport(
        status=status,
        reasons=reasons,
        migration=record.migration,
        dry_run=record.params.dry_run,
        flow_run_id=record.flow_run_id,
        fleet_digest=record.fleet_digest,
        canary=list(fleet.rollout.canary),
        max_parallel=fleet.rollout.max_parallel,
        on_error=fleet.rollout.on_error,
        databases=databases,
        duration_s=round(time.monotonic() - record.started, 2),
    )


def publish_fleet_table(record: FleetRecord) -> None:
    """The fleet table artifact (re-created under its key: the UI shows the newest)."""
    report = build_fleet_report(record)
    publish_table(f"{record.slug}-fleet", table_rows(report), f"The fleet: {headline(report)}")


def fleet_summary(
    record: FleetRecord, extra_reasons: list[str] | None = None, *, at_least: str | None = None
) -> FleetReport:
    """The fleet report, published as the fleet run's summary and final table."""
    report = build_fleet_report(record, extra_reasons, at_least=at_least)
    publish_table(f"{record.slug}-fleet", table_rows(report), f"The fleet: {headline(report)}")
    publish_markdown(f"{record.slug}-fleet-summary", summary_markdown(report), headline(report))
    return report


def _identity(report) -> str | None:
    identity = report.database_identity if report else None
    return identity.line if identity else None
