"""The run report as a short text for a terminal: each reason once, grouped, with counts.

A person reads it; ``--json`` keeps everything. Reasons that name one object each (what CASCADE would
remove, the bodies PostgreSQL does not track) are not repeated one per line: their section lists them
grouped by kind, marked ✗ (stops the run) or ✓ (allowed). Code references are grouped by file, the
files with most references first, then "… and N more files".
"""

from __future__ import annotations

from collections import Counter, defaultdict

from safedrop.results import CodeReference, RunReport

_HEADLINE = {
    "ready": "READY — every precheck passed; `safedrop run` would drop the targets",
    "succeeded": "SUCCEEDED — backed up, dropped and verified",
    "already-applied": "ALREADY APPLIED — the targets are gone and the survivors are intact",
    "stopped": "STOPPED — nothing was changed",
    "failed": "FAILED",
}
TOP_FILES = 10
PER_KIND = 8  # objects named per kind of CASCADE removal before "… and N more"
# reasons of one object each, shown in their grouped section instead
_PER_OBJECT = ("DROP … CASCADE would also remove ", "(PostgreSQL does not track it)")


def _size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def _names(items: list[str]) -> str:
    shown = ", ".join(items[:PER_KIND])
    return shown + (f", … and {len(items) - PER_KIND} more" if len(items) > PER_KIND else "")


def render_text(report: RunReport) -> str:
    sections = (_heading, _tables, _cascade, _untracked, _code, _done)
    return "\n".join(line for section in sections for line in section(report)) + "\n"


def reasons_once(report: RunReport) -> list[str]:
    """The report's reasons with those of one object each (listed, marked ✗, in the CASCADE and
    untracked sections) said once, together."""
    per_object = [r for r in report.reasons if r.startswith(_PER_OBJECT[0]) or _PER_OBJECT[1] in r]
    reasons = [r for r in report.reasons if r not in per_object]
    if per_object:
        reasons.append(
            f"{len(per_object)} object(s) marked ✗ below would be removed or broken by the drop: "
            "remove or change them first, or allow each with --allow-cascade NAME"
        )
    return reasons


def _heading(report: RunReport) -> list[str]:
    version = f" (PostgreSQL {report.server_version})" if report.server_version else ""
    lines = [
        f"safedrop: {_HEADLINE[report.status]}",
        f"  migration {report.migration} on {report.database or '?'}{version}",
    ]
    if report.database_identity:
        lines.append(f"  database: {report.database_identity.line}")
    lines += [f"  ✗ {r}" for r in reasons_once(report)]
    return lines + [f"  ! {w}" for w in report.warnings]


def _tables(report: RunReport) -> list[str]:
    lines = []
    if report.targets:
        lines.append("  targets:")
        for t in report.targets:
            rows = f", {t.rows:,} rows" if t.rows is not None else ""
            lines.append(f"    {t.name:<45} {'exists' if t.exists else 'absent'}{rows}")
    if report.keep and not report.verification:  # verification lists them again, with their rows after
        lines.append("  must survive:")
        for t in report.keep:
            rows = f", {t.rows:,} rows" if t.rows is not None else ""
            lines.append(f"    {t.name:<45} {'exists' if t.exists else 'MISSING'}{rows}")
    return lines


def _cascade(report: RunReport) -> list[str]:
    if not report.cascade:
        return []
    kinds: dict[str, list[str]] = defaultdict(list)
    for o in report.cascade:
        owner = f" on {o.owner_table}" if o.owner_table else ""
        loses = " (its data is lost)" if o.loses_data else ""
        kinds[o.kind].append(f"{'✓' if o.allowed else '✗'} {o.name}{owner}{loses}")
    lines = ["  CASCADE would also remove:"]
    lines += [f"    {kind} ({len(names)}): {_names(names)}" for kind, names in sorted(kinds.items())]
    return lines


def _untracked(report: RunReport) -> list[str]:
    if not report.untracked:
        return []
    lines = ["  would break (PostgreSQL does not track these):"]
    for u in report.untracked:
        owner = f" on {u.owner_table}" if u.owner_table else ""
        lines.append(
            f"    {'✓' if u.allowed else '✗'} {u.kind} {u.name}{owner} uses {u.mentions}: {u.breaks}"
        )
    return lines


def files_by_references(references: list[CodeReference]) -> list[tuple[str, int, CodeReference]]:
    """(file, references in it, its first reference), the files with most references first."""
    counts = Counter((r.root, r.path) for r in references)
    first: dict[tuple[str, str], CodeReference] = {}
    for r in references:
        first.setdefault((r.root, r.path), r)
    several_roots = len({r.root for r in references}) > 1
    ordered = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return [
        (f"{root}: {path}" if several_roots else path, n, first[(root, path)]) for (root, path), n in ordered
    ]


def _code(report: RunReport) -> list[str]:
    if report.code_scan != "done":
        return []
    files = files_by_references(report.code_references)
    counted = [s.files_read for s in report.code_sources if s.files_read is not None]
    read = f"; read {sum(counted):,} files" if counted else ""
    lines = [f"  code references: {len(report.code_references):,} in {len(files):,} file(s){read}"]
    lines += [
        f"    scanned {source.root} at commit {source.commit}"
        for source in report.code_sources
        if source.commit
    ]
    for path, n, ref in files[:TOP_FILES]:
        lines.append(f"    {path}  {n:,}  (first: line {ref.line}, {ref.identifier})")
    if len(files) > TOP_FILES:
        lines.append(f"    … and {len(files) - TOP_FILES:,} more files (--json lists every reference)")
    return lines


def _done(report: RunReport) -> list[str]:
    lines = []
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
    return lines
