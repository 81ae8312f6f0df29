"""Verification: the targets are gone, and every table that must survive is there with its rows.

Fails by raising: a check that only logs has verified nothing.
"""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from safedrop.artifacts import md_table, publish_markdown
from safedrop.database import Database, connect
from safedrop.errors import VerificationFailed
from safedrop.migration import TableName
from safedrop.report import SurvivorCheck, VerificationResult
from tasks.cleanup import count_rows
from tasks.connection import table_status


def verify_drop(
    db: Database,
    targets: list[TableName],
    keep: list[TableName],
    keep_rows_before: dict[str, int] | None,
) -> VerificationResult:
    """Check the outcome; ``keep_rows_before`` None skips the row-count comparison."""
    with connect(db) as conn:
        with conn.begin():
            conn.exec_driver_sql("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            target_rows = table_status(conn, targets)
            keep_rows = table_status(conn, keep)
            present_keep = [t for t, r in zip(keep, keep_rows, strict=True) if r["oid"] is not None]
            counts = count_rows(conn, present_keep)
    gone = [r["qualified"] for r in target_rows if r["oid"] is None]
    still = [r["qualified"] for r in target_rows if r["oid"] is not None]
    survivors = []
    problems = [f"{t} still exists" for t in still]
    for row in keep_rows:
        name = row["qualified"]
        before = (keep_rows_before or {}).get(name)
        after = counts.get(name)
        survivors.append(
            SurvivorCheck(table=name, exists=row["oid"] is not None, rows_before=before, rows_after=after)
        )
        if row["oid"] is None:
            problems.append(f"{name} must survive but is gone")
        elif keep_rows_before is not None and before != after:
            problems.append(f"{name} had {before:,} rows before the drop and has {after:,} now")
    result = VerificationResult(
        targets_gone=gone, targets_present=still, survivors=survivors, reasons=problems
    )
    if problems:
        raise VerificationFailed(
            "verification failed: "
            + "; ".join(problems)
            + " — check the backup and the drop's artifact before anything else",
            report=result,
        )
    return result


def render(result: VerificationResult) -> str:
    rows = [{"table": t, "expected": "gone", "found": "gone"} for t in result.targets_gone]
    rows += [{"table": t, "expected": "gone", "found": "STILL THERE"} for t in result.targets_present]
    rows += [
        {
            "table": s.table,
            "expected": f"present, {s.rows_before if s.rows_before is not None else '?'} rows",
            "found": f"present, {s.rows_after} rows" if s.exists else "MISSING",
        }
        for s in result.survivors
    ]
    verdict = "passed" if not result.reasons else "FAILED: " + "; ".join(result.reasons)
    return f"# Verification {verdict}\n\n{md_table(rows)}"


@task(name="verification", cache_policy=NO_CACHE)
def verification(
    db: Database,
    targets: list[TableName],
    keep: list[TableName],
    keep_rows_before: dict[str, int] | None,
    artifact_prefix: str,
) -> VerificationResult:
    """Targets gone; survivors present with the row counts they had."""
    try:
        result = verify_drop(db, targets, keep, keep_rows_before)
    except VerificationFailed as exc:
        publish_markdown(f"{artifact_prefix}-verification", render(exc.report), "Verification")
        raise
    get_run_logger().info("verification passed: %s gone", ", ".join(result.targets_gone))
    publish_markdown(f"{artifact_prefix}-verification", render(result), "Verification")
    return result
