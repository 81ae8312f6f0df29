"""The run report as Markdown: the run's summary artifact (and the plan a pull request can show)."""

from __future__ import annotations

from safedrop.report.artifacts import md_list, md_table
from safedrop.report.text import files_by_references, reasons_once
from safedrop.results import RunReport, SurvivorCheck

HEADLINES = {
    "ready": "Ready: every precheck passed; the drop would go ahead",
    "succeeded": "Succeeded: backed up, dropped and verified",
    "already-applied": "Already applied: the targets are gone and the survivors are intact",
    "stopped": "Stopped before any change",
    "failed": "Failed",
}
CODE_FILES = 20  # files with references shown; the JSON report has every reference


def render_markdown(report: RunReport) -> str:
    sections = (_heading, _why, _tables, _cascade, _code, _backup, _dropped, _verification, _smoke_checks)
    return "\n".join(line for section in sections for line in section(report))


def _heading(report: RunReport) -> list[str]:
    version = f" (PostgreSQL {report.server_version})" if report.server_version else ""
    dry = " — dry run" if report.dry_run else ""
    identity = f"Database: {report.database_identity.line}." if report.database_identity else ""
    return [
        f"# {HEADLINES[report.status]}",
        "",
        f"Migration `{report.migration}` on `{report.database or '?'}`{version}{dry}; {report.duration_s} s.",
        "",
        *([identity, ""] if identity else []),
    ]


def _why(report: RunReport) -> list[str]:
    out = ["## Why", "", md_list(reasons_once(report))] if report.reasons else []
    return out + (["## Warnings", "", md_list(report.warnings)] if report.warnings else [])


def _tables(report: RunReport) -> list[str]:
    if not (report.targets or report.keep):
        return []
    rows = [
        {"table": t.name, "role": "target", "status": "exists" if t.exists else "absent", "rows": t.rows}
        for t in report.targets
    ]
    rows += [
        {"table": t.name, "role": "keep", "status": "exists" if t.exists else "MISSING", "rows": t.rows}
        for t in report.keep
    ]
    return ["## Table status", "", md_table(rows)]


def _cascade(report: RunReport) -> list[str]:
    out = []
    if report.cascade:
        rows = [{"": "✓" if o.allowed else "✗", **o.model_dump()} for o in report.cascade]
        rows.sort(key=lambda row: (row["kind"], row["name"]))
        out += [
            "## CASCADE would also remove",
            "",
            md_table(rows, ["", "kind", "name", "owner_table", "why"]),
        ]
    if report.untracked:
        rows = [{"": "✓" if u.allowed else "✗", **u.model_dump()} for u in report.untracked]
        out += ["## References PostgreSQL does not track", "", md_table(rows, ["", "kind", "name", "breaks"])]
    return out


def _code(report: RunReport) -> list[str]:
    if report.code_scan == "skipped":
        return ["## Code references", "", "Skipped: the application's code was not scanned.", ""]
    if report.code_scan != "done":
        return []
    scanned = [
        f"`{s.root}`"
        + (f" at commit `{s.commit}`" if s.commit else "")
        + (f" ({s.files_read:,} files read)" if s.files_read is not None else "")
        for s in report.code_sources
    ]
    files = files_by_references(report.code_references)
    out = ["## Code references", ""] + ([f"Scanned {', '.join(scanned)}.", ""] if scanned else [])
    if files:
        out.append(f"{len(report.code_references):,} references in {len(files):,} files:")
        out.append("")
        rows = [
            {"file": f"`{path}`", "references": n, "first": f"line {ref.line}: `{ref.identifier}`"}
            for path, n, ref in files[:CODE_FILES]
        ]
        out.append(md_table(rows))
        if len(files) > CODE_FILES:
            out += [f"… and {len(files) - CODE_FILES:,} more files.", ""]
    return out


def _backup(report: RunReport) -> list[str]:
    if not report.backup:
        return []
    backup = report.backup
    return ["## Backup", "", f"`{backup.path}` — {backup.bytes:,} bytes, sha256 `{backup.sha256}`", ""]


def _dropped(report: RunReport) -> list[str]:
    return ["## Dropped", "", md_list(report.dropped)] if report.dropped else []


def _survivor_row(s: SurvivorCheck) -> dict[str, str]:
    after = "" if s.rows_after is None else f"{s.rows_after:,}"
    return {
        "table": s.table,
        "rows before": f"{s.rows_before:,}" if s.rows_before is not None else "",
        "rows after": f"~{after} (estimate)" if after and s.rows_after_estimated else after,
        "structure": "intact" if not s.problems else "; ".join(s.problems),
    }


def _verification(report: RunReport) -> list[str]:
    verification = report.verification
    if not verification:
        return []
    verdict = "passed" if not verification.reasons else md_list(verification.reasons)
    return ["## Verification", "", verdict, "", md_table([_survivor_row(s) for s in verification.survivors])]


def _smoke_checks(report: RunReport) -> list[str]:
    if not (report.smoke_checks and report.smoke_checks.checks):
        return []
    rows = [
        {"check": f"{c.kind}: {c.check}", "result": c.problem or "passed"} for c in report.smoke_checks.checks
    ]
    return ["## Smoke checks", "", md_table(rows)]
