"""Verification: the targets are gone, and every table that must survive is whole.

On a live database the survivors take writes throughout, so their row counts are reported before and
after as figures, never judged. What is judged is structure: each survivor still has every column,
constraint, index, trigger and policy it had just before the drop — except what an allowed CASCADE
removed — and nothing on it is left invalid (an index not valid or not ready, a constraint no longer
validated). Fails by raising: a check that only logs has verified nothing.
"""

from __future__ import annotations

from collections import defaultdict

from sqlalchemy.engine import Connection

from safedrop.errors import VerificationFailed
from safedrop.migration import TableName
from safedrop.pg import queries
from safedrop.pg.catalog import table_status
from safedrop.pg.database import Database, reading
from safedrop.pg.rowcounts import count_bounded
from safedrop.report.artifacts import md_table, publish_markdown
from safedrop.results import (
    CascadeObject,
    CleanupResult,
    DependencyResult,
    SurvivorCheck,
    TablePart,
    VerificationResult,
)
from safedrop.runlog import run_logger
from safedrop.steps import step


def table_structure(conn: Connection, tables: list[TableName]) -> dict[str, list[TablePart]]:
    """Every part of each existing table (columns, constraints, indexes, triggers, policies)."""
    found = [r for r in table_status(conn, tables) if r["oid"] is not None]
    names = {r["oid"]: r["qualified"] for r in found}
    out: dict[str, list[TablePart]] = {r["qualified"]: [] for r in found}
    if names:
        for row in queries.rows(conn, "table_structure", oids=list(names)):
            out[names[row["table_oid"]]].append(
                TablePart(kind=row["kind"], name=row["name"], detail=row["detail"], healthy=row["healthy"])
            )
    return out


def survivor_structure(db: Database, keep: list[TableName]) -> dict[str, list[TablePart]]:
    """The survivors' structure as it is now: what verification holds them to after the drop."""
    with reading(db) as conn:
        return table_structure(conn, keep)


def compare_structure(
    before: list[TablePart], after: list[TablePart], removable: set[str]
) -> tuple[list[str], list[str]]:
    """(problems, notes) for one survivor: parts lost or broken, and parts added or already unhealthy.

    ``removable``: names of the parts an allowed CASCADE removes from this table (a foreign key into a
    target, a policy, a column default) — their going is expected.
    """
    was = {(p.kind, p.name): p for p in before}
    now = {(p.kind, p.name): p for p in after}
    problems, notes = [], []
    for key, part in was.items():
        kind, name = key
        if key not in now:
            if name not in removable:
                problems.append(f"lost its {kind} {name}")
        elif now[key].detail != part.detail and name not in removable:
            problems.append(f"{kind} {name} changed: {part.detail} → {now[key].detail}")
    for key, part in now.items():
        kind, name = key
        if key not in was:
            notes.append(f"{kind} {name} was added meanwhile")
        if not part.healthy:
            state = "not valid" if kind == "constraint" else "not valid or not ready"
            if key in was and not was[key].healthy:
                notes.append(f"{kind} {name} is {state}, as it was before the drop")
            else:
                problems.append(f"{kind} {name} is {state}")
    return problems, notes


def allowed_removals(cascade: list[CascadeObject]) -> dict[str, set[str]]:
    """Per surviving table, the names of the parts an allowed CASCADE removes from it."""
    out: dict[str, set[str]] = defaultdict(set)
    for obj in cascade:
        if obj.allowed and obj.owner_table:
            out[obj.owner_table] |= {obj.name, obj.name.rsplit(".", 1)[-1]}
    return dict(out)


def verify_drop(
    db: Database,
    targets: list[TableName],
    keep: list[TableName],
    *,
    structure_before: dict[str, list[TablePart]] | None = None,
    rows_before: dict[str, int] | None = None,
    estimated_before: dict[str, str] | None = None,
    removable: dict[str, set[str]] | None = None,
) -> VerificationResult:
    """Targets gone, survivors present and whole; row counts reported, not judged.

    ``structure_before`` None (the targets were already gone) checks presence and health only.
    """
    with reading(db, snapshot=True) as conn:
        target_rows = table_status(conn, targets)
        keep_rows = table_status(conn, keep)
        present_keep = [t for t, r in zip(keep, keep_rows, strict=True) if r["oid"] is not None]
        structure = table_structure(conn, present_keep)
        counts, estimated = count_bounded(conn, present_keep)
    gone = [r["qualified"] for r in target_rows if r["oid"] is None]
    still = [r["qualified"] for r in target_rows if r["oid"] is not None]
    problems = [f"{t} still exists" for t in still]
    notes: list[str] = []
    survivors = []
    for row in keep_rows:
        name = row["qualified"]
        check = SurvivorCheck(
            table=name,
            exists=row["oid"] is not None,
            rows_before=(rows_before or {}).get(name),
            rows_after=counts.get(name),
            rows_before_estimated=(estimated_before or {}).get(name, ""),
            rows_after_estimated=estimated.get(name, ""),
        )
        if not check.exists:
            check.problems = ["must survive but is gone"]
        else:
            before = (structure_before or {}).get(name, structure[name])
            check.problems, check.notes = compare_structure(
                before, structure[name], (removable or {}).get(name, set())
            )
            check.parts = len(structure[name])
        problems += [f"{name} {p}" for p in check.problems]
        notes += [f"{name}: {n}" for n in check.notes]
        survivors.append(check)
    result = VerificationResult(
        targets_gone=gone, targets_present=still, survivors=survivors, reasons=problems, warnings=notes
    )
    if problems:
        raise VerificationFailed(
            "verification failed: "
            + "; ".join(problems)
            + " — check the backup and the drop's artifact before anything else",
            report=result,
        )
    return result


def _rows(count: int | None, estimated: str) -> str:
    if count is None:
        return "?"
    return f"~{count:,} (estimate)" if estimated else f"{count:,}"


def render(result: VerificationResult) -> str:
    rows = [
        {"table": t, "expected": "gone", "found": "gone", "rows before → after": ""}
        for t in result.targets_gone
    ]
    rows += [
        {"table": t, "expected": "gone", "found": "STILL THERE", "rows before → after": ""}
        for t in result.targets_present
    ]
    for s in result.survivors:
        found = "MISSING" if not s.exists else ("intact" if not s.problems else "; ".join(s.problems))
        rows.append(
            {
                "table": s.table,
                "expected": f"present, its {s.parts} columns/constraints/indexes/triggers/policies intact",
                "found": found,
                "rows before → after": f"{_rows(s.rows_before, s.rows_before_estimated)} → "
                f"{_rows(s.rows_after, s.rows_after_estimated)}",
            }
        )
    verdict = "passed" if not result.reasons else "FAILED: " + "; ".join(result.reasons)
    text = f"# Verification {verdict}\n\n{md_table(rows)}"
    text += (
        "\nRow counts are figures, not a verdict: the surviving tables take writes while the run works. "
        "An estimate is the planner's (reltuples), used where an exact count would scan a huge table or "
        "could not get its lock in time.\n"
    )
    if result.warnings:
        text += "\n" + "".join(f"- {w}\n" for w in result.warnings)
    return text


@step("verification")
def verification(
    db: Database,
    targets: list[TableName],
    keep: list[TableName],
    artifact_prefix: str,
    *,
    structure_before: dict[str, list[TablePart]] | None = None,
    cleanup: CleanupResult | None = None,
    approved: DependencyResult | None = None,
) -> VerificationResult:
    """Targets gone; survivors present, structurally intact (but for what the ``approved`` CASCADE
    removes), nothing invalid; row counts reported against the ``cleanup`` check's."""
    try:
        result = verify_drop(
            db,
            targets,
            keep,
            structure_before=structure_before,
            rows_before=cleanup.keep_rows if cleanup else None,
            estimated_before=cleanup.keep_estimated if cleanup else None,
            removable=allowed_removals(approved.cascade) if approved else None,
        )
    except VerificationFailed as exc:
        publish_markdown(f"{artifact_prefix}-verification", render(exc.report), "Verification")
        raise
    run_logger().info("verification passed: %s gone", ", ".join(result.targets_gone) or "no target")
    publish_markdown(f"{artifact_prefix}-verification", render(result), "Verification")
    return result
