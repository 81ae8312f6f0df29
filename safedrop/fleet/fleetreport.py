"""The fleet's report: every database's outcome, as `safedrop fleet … --json` prints it, on a terminal,
and as the fleet run's artifacts (the plan to approve, the table updated as children finish).

A database's status is the single-database run's own (``ready``, ``succeeded``, ``already-applied``,
``stopped``, ``failed``), taken from its last child run: the destructive one when it was started, else
the plan's. A database the rollout never started keeps its plan's status — ``ready`` means untouched
and still ready — with the reason it was not started.

The fleet's status: in a plan, ``failed`` if a database's plan failed, ``stopped`` if one is not ready,
``already-applied`` if every database is done, else ``ready``; in a run, ``failed`` if a database
failed, ``stopped`` if one stopped or was not started, ``already-applied`` if every database was done
before, else ``succeeded``. Exit codes as for one database: 0, 3 stopped, 1 failed (2: bad input).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable

from pydantic import BaseModel, Field

from safedrop.report.artifacts import md_list, md_table
from safedrop.results import BackupSummary, RunReport, Status

EXIT_CODES = {"ready": 0, "succeeded": 0, "already-applied": 0, "stopped": 3, "failed": 1}


class FleetDatabaseReport(BaseModel):
    """One database of the fleet."""

    name: str
    status: Status
    flow_run_id: str | None = None  # its last child run: the destructive one if started, else the plan's
    reasons: list[str] = Field(default_factory=list)
    backup: BackupSummary | None = None
    source: str = ""  # where its URL comes from: "Secret block NAME" or "$NAME" (never the URL)
    database: str | None = None  # user@host:port/dbname, as its run connected
    identity: str | None = None  # the database as its server names it (name, system id), and its source
    started: bool = False  # whether the rollout started its destructive run
    plan_flow_run_id: str | None = None
    plan_digest: str | None = None  # what the approval bound its run to
    target_rows: int | None = None  # the targets' rows (all of them; dropped when succeeded)
    dropped: list[str] = Field(default_factory=list)
    duration_s: float | None = None  # of its last child run
    url: str | None = None  # its last child run in the Prefect UI
    warnings: list[str] = Field(default_factory=list)
    running: bool = Field(False, exclude=True)  # its run has not ended yet (the table while it runs)


class FleetReport(BaseModel):
    """A fleet plan or run, as `safedrop fleet plan|run --json` prints it."""

    status: Status
    reasons: list[str] = Field(default_factory=list)
    migration: str
    dry_run: bool
    flow_run_id: str | None = None
    fleet_digest: str | None = None  # what the approval names (the plan of every database)
    canary: list[str] = Field(default_factory=list)
    max_parallel: int | None = None
    on_error: str | None = None
    databases: list[FleetDatabaseReport] = Field(default_factory=list)
    duration_s: float | None = None

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.status]


def fleet_status(statuses: Iterable[Status], *, dry_run: bool) -> Status:
    seen = list(statuses)
    if "failed" in seen:
        return "failed"
    if "stopped" in seen or (not dry_run and "ready" in seen):
        return "stopped"
    if seen and all(s == "already-applied" for s in seen):
        return "already-applied"
    return "ready" if dry_run else "succeeded"


def fleet_digest(databases: Iterable[FleetDatabaseReport]) -> str:
    """The digest of the whole plan an operator approves: each database, its plan's status and digest."""
    doc = sorted((d.name, d.status, d.plan_digest or "") for d in databases)
    return hashlib.sha256(json.dumps(doc).encode()).hexdigest()


def target_rows(report: RunReport | None) -> int | None:
    if report is None or not report.targets:
        return None
    counted = [t.rows for t in report.targets if t.rows is not None]
    return sum(counted) if counted else None


def headline(report: FleetReport) -> str:
    done = sum(d.status in ("succeeded", "already-applied") for d in report.databases)
    total = len(report.databases)
    if report.dry_run:
        ready = sum(d.status == "ready" for d in report.databases)
        return {
            "ready": f"READY — all {total} databases passed every precheck",
            "already-applied": f"ALREADY APPLIED — the tables are gone from all {total} databases",
            "stopped": f"NOT READY — {ready} of {total} databases ready; the others say why",
            "failed": f"FAILED — the plan of a database failed ({ready} of {total} ready)",
        }.get(report.status, report.status.upper())
    return {
        "succeeded": f"SUCCEEDED — {done} of {total} databases done (backed up, dropped and verified, or "
        "already done)",
        "already-applied": f"ALREADY APPLIED — the tables were already gone from all {total} databases",
        "stopped": f"STOPPED — {done} of {total} databases done; the others say why",
        "failed": f"FAILED — {done} of {total} databases done; a database failed",
    }.get(report.status, report.status.upper())


def _size(n: int | None) -> str:
    if n is None:
        return ""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return str(n)


def _not_started(d: FleetDatabaseReport, report: FleetReport) -> str:
    return " (not started)" if d.status == "ready" and not d.started and not report.dry_run else ""


def table_rows(report: FleetReport) -> list[dict[str, object]]:
    """The fleet table artifact: a row per database."""
    return [
        {
            "database": d.name,
            "status": "running" if d.running else d.status + _not_started(d, report),
            "rows dropped": f"{d.target_rows:,}"
            if d.status == "succeeded" and d.target_rows is not None
            else "",
            "backup": d.backup.path if d.backup else "",
            "backup size": _size(d.backup.bytes) if d.backup else "",
            "duration": f"{d.duration_s:.1f} s" if d.duration_s is not None else "",
            "child run": d.url or d.flow_run_id or "",
            "why": "; ".join(d.reasons),
        }
        for d in report.databases
    ]


def render_text(report: FleetReport) -> str:
    """The fleet report on a terminal."""
    what = "plan" if report.dry_run else "run"
    lines = [f"safedrop fleet {what}: {headline(report)}"]
    lines.append(
        f"  migration {report.migration}; rollout: canary {', '.join(report.canary) or 'none'}, "
        f"max_parallel {report.max_parallel}, on_error {report.on_error}"
    )
    width = max([len(d.name) for d in report.databases] + [8])
    for d in report.databases:
        status = d.status + _not_started(d, report)
        detail = []
        if d.status == "succeeded" and d.backup:
            detail.append(f"backup {d.backup.path} ({_size(d.backup.bytes)})")
        if d.duration_s is not None:
            detail.append(f"{d.duration_s:.1f} s")
        lines.append(
            f"  {d.name:<{width}}  {status:<20} {d.database or d.source}  {', '.join(detail)}".rstrip()
        )
        lines += [f"  {'':<{width}}    - {reason}" for reason in d.reasons]
    lines += [
        f"  {reason}"
        for reason in report.reasons
        if not any(reason.startswith(d.name + ": ") for d in report.databases)
    ]
    if report.flow_run_id:
        lines.append(f"  fleet run {report.flow_run_id}")
    return "\n".join(lines) + "\n"


def plan_markdown(report: FleetReport, plans: dict[str, RunReport]) -> str:
    """The fleet plan, as the approval form and the plan artifact show it."""
    title = "Approve the fleet?" if not report.dry_run else "The fleet plan"
    text = f"# {title}\n\n{headline(report)}\n\n"
    rows = []
    for d in report.databases:
        plan = plans.get(d.name)
        rows.append(
            {
                "database": d.name,
                "where": d.database or d.source,
                "plan": d.status,
                "target rows": "" if d.target_rows is None else f"{d.target_rows:,}",
                "CASCADE also removes": ", ".join(o.name for o in plan.cascade) if plan else "",
                "untracked": ", ".join(u.name for u in plan.untracked) if plan else "",
                "code references": len(plan.code_references) if plan else "",
                "plan digest": (d.plan_digest or "")[:12],
            }
        )
    text += md_table(rows)
    blocked = [f"**{d.name}**: {'; '.join(d.reasons)}" for d in report.databases if d.reasons]
    if blocked:
        text += "\n## What the plan found\n\n" + md_list(blocked)
    refs = [
        f"{d.name}: {r.root}/{r.path}:{r.line} {r.identifier}"
        for d in report.databases
        for r in (plans[d.name].code_references if d.name in plans else [])[:5]
    ]
    if refs:
        text += "\n## Code references\n\n" + md_list(refs)
    text += (
        f"\nRollout: canary {', '.join(report.canary) or 'none'}, then at most {report.max_parallel} at "
        f"once, on_error {report.on_error}. Each database's run is held to its plan digest: if its rows, "
        "what CASCADE removes or its untracked references change, it stops with nothing changed.\n"
    )
    if report.fleet_digest:
        text += f"\nFleet digest: `{report.fleet_digest}`\n"
    return text


def summary_markdown(report: FleetReport) -> str:
    text = f"# {headline(report)}\n\n" + md_table(table_rows(report))
    if report.reasons:
        text += "\n## Why\n\n" + md_list(report.reasons)
    return text
