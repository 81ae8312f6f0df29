"""The run report as a short text for a terminal."""

from __future__ import annotations

from safedrop.report import RunReport

_HEADLINE = {
    "ready": "READY — every precheck passed; `safedrop run` would drop the targets",
    "succeeded": "SUCCEEDED — backed up, dropped and verified",
    "already-applied": "ALREADY APPLIED — the targets are gone and the survivors are intact",
    "stopped": "STOPPED — nothing was changed",
    "failed": "FAILED",
}


def _size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def render_text(report: RunReport) -> str:
    lines = [f"safedrop: {_HEADLINE[report.status]}"]
    where = report.database or "?"
    version = f" (PostgreSQL {report.server_version})" if report.server_version else ""
    lines.append(f"  migration {report.migration} on {where}{version}")
    for reason in report.reasons:
        lines.append(f"  ✗ {reason}")
    for warning in report.warnings:
        lines.append(f"  ! {warning}")
    if report.targets:
        lines.append("  targets:")
        for t in report.targets:
            rows = f", {t.rows:,} rows" if t.rows is not None else ""
            lines.append(f"    {t.name:<45} {'exists' if t.exists else 'absent'}{rows}")
    if report.keep:
        lines.append("  must survive:")
        for t in report.keep:
            rows = f", {t.rows:,} rows" if t.rows is not None else ""
            lines.append(f"    {t.name:<45} {'exists' if t.exists else 'MISSING'}{rows}")
    if report.cascade:
        lines.append("  CASCADE would also remove:")
        for o in report.cascade:
            owner = f" on {o.owner_table}" if o.owner_table else ""
            lines.append(f"    {o.kind} {o.name}{owner} — {o.why}")
    if report.code_scan == "done":
        lines.append(f"  code references: {len(report.code_references)}")
        for source in report.code_sources:
            if source.commit:
                lines.append(f"    scanned {source.root} at commit {source.commit}")
        for ref in report.code_references[:10]:
            lines.append(f"    {ref.root}/{ref.path}:{ref.line}:{ref.column} {ref.identifier}")
    if report.backup:
        lines.append(
            f"  backup: {report.backup.path} ({_size(report.backup.bytes)}, sha256 {report.backup.sha256})"
        )
    if report.dropped:
        lines.append(f"  dropped: {', '.join(report.dropped)}")
    if report.drop and report.drop.all_blocked_ms is not None:
        lines.append(
            f"    locked {report.drop.all_blocked_ms:.1f} ms against every query, "
            f"{report.drop.writes_blocked_ms:.1f} ms against writes; {report.drop.attempts} attempt(s)"
        )
    if report.verification and not report.verification.reasons:
        lines.append("  verification: passed")
        for s in report.verification.survivors:
            after = "?" if s.rows_after is None else f"{s.rows_after:,}"
            before = "?" if s.rows_before is None else f"{s.rows_before:,}"
            how = " (estimate)" if s.rows_after_estimated else ""
            lines.append(f"    {s.table:<45} intact, rows {before} → {after}{how}")
    if report.smoke_checks and report.smoke_checks.checks:
        passed = sum(1 for c in report.smoke_checks.checks if not c.problem)
        lines.append(f"  smoke checks: {passed} of {len(report.smoke_checks.checks)} passed")
    if report.duration_s is not None:
        lines.append(f"  took {report.duration_s} s")
    return "\n".join(lines) + "\n"
