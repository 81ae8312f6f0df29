"""How a restore reads to people: the markdown of its artifacts, and its report on a terminal.

This module provides ``render_check`` (the precheck: the archive, the targets, the entries to
restore), ``render_restore`` (what went back, and each foreign key), ``render_verification`` (rows,
checksums, sequences and foreign keys against the manifest) and ``render_text`` (a ``RestoreReport``
for ``safedrop restore``).
"""

from __future__ import annotations

from safedrop.pg.database import Database
from safedrop.report.artifacts import md_list, md_table
from safedrop.restore.restoreplan import RestorePlan
from safedrop.results import BackupManifest, RestoreCheck, RestoreResult, RestoreVerification


def render_check(check: RestoreCheck, manifest: BackupManifest | None = None) -> str:
    text = (
        f"# Restore precheck\n\nArchive `{check.archive}` ({check.scope} scope, "
        f"taken {check.backup_created_at}) "
        f"matches its manifest `{check.manifest}`; pg_restore: {check.pg_restore_version}.\n\n"
    )
    if manifest is not None:
        text += "## Targets\n\n" + md_table(
            [{"table": t.name, "rows": f"{t.rows:,}", "checksum": t.checksum} for t in manifest.targets]
        )
    text += f"\n## Entries to restore ({len(check.entries)})\n\n" + md_list(check.entries)
    if check.present:
        text += "\n## Already present\n\n" + md_list(check.present)
    if check.warnings:
        text += "\n## Warnings\n\n" + md_list(check.warnings)
    return text


def render_verification(result: RestoreVerification) -> str:
    verdict = "passed" if not result.reasons else "FAILED: " + "; ".join(result.reasons)
    rows = [
        {
            "table": t.name,
            "rows expected": f"{t.rows_expected:,}",
            "rows found": "missing" if t.rows_found is None else f"{t.rows_found:,}",
            "checksum": "matches" if t.checksum_matches else "DIFFERS",
        }
        for t in result.tables
    ]
    text = f"# Restore verification {verdict}\n\n{md_table(rows)}\n"
    text += f"{result.objects_back} restored objects present.\n"
    if result.foreign_keys:
        text += "\n## Foreign keys\n\n" + md_list(result.foreign_keys)
    if result.sequences:
        text += "\n## Sequences\n\n" + md_list(result.sequences)
    return text


def render_restore(result: RestoreResult, plan: RestorePlan, db: Database) -> str:
    text = (
        f"# Restore\n\n{result.entries} entries of `{plan.archive}` restored into `{db.display}` in "
        f"{result.duration_s:.2f} s. The tables, their rows and everything but the foreign keys went back "
        f"in one pg_restore transaction ({result.tables_s or 0:.2f} s, {result.attempts} attempt(s), "
        f"{result.lock_timeouts} lock timeout(s), first lock_timeout {result.lock_timeout_ms} ms); then "
        "each foreign key was added NOT VALID in one short transaction and validated in its own:\n\n"
        f"{md_list(plan.check.entries)}"
    )
    if result.foreign_keys:
        rows = [
            {
                "foreign key": o.name,
                "state": o.state,
                "note": o.detail or "",
                "validation": o.duration_s or "",
            }
            for o in result.foreign_keys
        ]
        text += "\n## Foreign keys\n\n" + md_table(rows)
    return text


def render_text(report) -> str:
    """A RestoreReport as a short text for a terminal (``safedrop restore``)."""
    headline = {
        "restored": "RESTORED — the dropped tables and what CASCADE removed are back, and verified",
        "already-restored": "ALREADY RESTORED — the tables are there with exactly the backup's contents",
        "ready": "READY — the archive checks out; `safedrop restore` without --dry-run would restore it",
        "refused": "REFUSED — nothing was changed",
        "failed": "FAILED",
    }[report.status]
    lines = [f"safedrop: {headline}", f"  backup {report.backup} into {report.database or '?'}"]
    lines += [f"  ✗ {reason}" for reason in report.reasons]
    lines += [f"  ! {warning}" for warning in report.warnings]
    if report.check and report.status in ("ready", "restored"):
        lines.append(
            f"  {'restored' if report.restore else 'would restore'} {len(report.check.entries)} entries:"
        )
        lines += [f"    {entry}" for entry in report.check.entries]
    if report.verification:
        for t in report.verification.tables:
            rows = "no" if t.rows_found is None else f"{t.rows_found:,}"
            checksum = "matches" if t.checksum_matches else "DIFFERS"
            lines.append(f"  verified {t.name}: {rows} rows, checksum {checksum}")
        lines += [f"  sequence {s}" for s in report.verification.sequences]
        lines += [f"  foreign key {k}" for k in report.verification.foreign_keys]
    if report.restore and report.restore.attempts > 1:
        lines.append(
            f"  pg_restore: {report.restore.attempts} attempts "
            f"({report.restore.lock_timeouts} lock timeouts, each rolled back)"
        )
    if report.duration_s is not None:
        lines.append(f"  took {report.duration_s} s")
    return "\n".join(lines) + "\n"
