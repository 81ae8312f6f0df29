"""Cleanup check: the guide's "are they empty, and does anything still point at them?".

Counts the rows of every target exactly (any row stops the run unless the operator allowed a
non-empty drop), the rows of every table that must survive (figures for the report, bounded in time;
the planner's estimate for a huge table), and lists foreign keys on other tables that reference a
target.
"""

from __future__ import annotations

import sqlalchemy as sa

from safedrop.errors import PrecheckStop
from safedrop.migration import TableName
from safedrop.pg import queries
from safedrop.pg.catalog import table_status
from safedrop.pg.database import Database, connect, reading
from safedrop.pg.locks import describe_blockers, is_lock_timeout
from safedrop.pg.rowcounts import count_bounded, count_rows
from safedrop.report.artifacts import md_table, publish_markdown
from safedrop.results import CleanupResult, ForeignKeyIn
from safedrop.runlog import run_logger
from safedrop.steps import step


def check_cleanup(
    db: Database,
    targets: list[TableName],
    target_oids: list[int],
    keep: list[TableName],
    *,
    allow_nonempty: bool,
    lock_wait_s: float = 120,
) -> CleanupResult:
    """Counts in one snapshot. A count waits at most ``lock_wait_s`` for a table someone holds
    exclusively (a migration, a VACUUM FULL): then the run stops naming who holds it."""
    try:
        with reading(db, snapshot=True, lock_timeout_ms=int(lock_wait_s * 1000)) as conn:
            target_rows = count_rows(conn, targets)
            keep_rows, keep_estimated = count_bounded(conn, keep)
            fks = [
                ForeignKeyIn(
                    constraint=r["constraint_name"], table=r["referencing_table"], target=r["target"]
                )
                for r in queries.rows(conn, "inbound_foreign_keys", oids=target_oids)
            ]
    except sa.exc.DBAPIError as exc:
        if not is_lock_timeout(exc):
            raise
        with connect(db) as conn:
            oids = target_oids + [r["oid"] for r in table_status(conn, keep) if r["oid"]]
        blockers = describe_blockers(db, oids, [])
        raise PrecheckStop(
            [
                f"the cleanup check could not read the tables within the lock-wait budget {lock_wait_s:g} s; "
                f"blocked by: {'; '.join(blockers) or 'a session that has since finished'}. Nothing was "
                "changed — let it finish (or end it) and re-run"
            ]
        ) from None
    reasons, warnings = [], []
    for table, n in target_rows.items():
        if n and not allow_nonempty:
            reasons.append(
                f"{table} still has {n:,} rows; drop only empty tables, or pass --allow-nonempty "
                "(the backup then keeps them)"
            )
        elif n:
            warnings.append(f"{table} holds {n:,} rows; dropping them as allowed (--allow-nonempty)")
    return CleanupResult(
        target_rows=target_rows,
        keep_rows=keep_rows,
        keep_estimated=keep_estimated,
        inbound_foreign_keys=fks,
        reasons=reasons,
        warnings=warnings,
    )


def render(result: CleanupResult) -> str:
    rows = [{"table": t, "role": "target", "rows": f"{n:,}"} for t, n in result.target_rows.items()]
    rows += [
        {
            "table": t,
            "role": "keep",
            "rows": f"~{n:,} ({result.keep_estimated[t]})" if t in result.keep_estimated else f"{n:,}",
        }
        for t, n in result.keep_rows.items()
    ]
    text = f"# Cleanup check\n\n## Row counts\n\n{md_table(rows)}\n## Foreign keys into the targets\n\n"
    if result.inbound_foreign_keys:
        text += md_table([fk.model_dump() for fk in result.inbound_foreign_keys])
    else:
        text += "None.\n"
    return text


@step("cleanup-check", retry_delays=(1, 5))
def cleanup_check(
    db: Database,
    targets: dict[TableName, int],
    keep: list[TableName],
    allow_nonempty: bool,
    artifact_prefix: str,
    lock_wait_s: float = 120,
) -> CleanupResult:
    """Row counts of targets (by their oids) and survivors, and foreign keys pointing into the targets."""
    result = check_cleanup(
        db,
        list(targets),
        list(targets.values()),
        keep,
        allow_nonempty=allow_nonempty,
        lock_wait_s=lock_wait_s,
    )
    run_logger().info(
        "target rows: %s; inbound foreign keys: %d",
        ", ".join(f"{t}={n}" for t, n in result.target_rows.items()) or "none",
        len(result.inbound_foreign_keys),
    )
    publish_markdown(f"{artifact_prefix}-cleanup", render(result), "Row counts and inbound foreign keys")
    return result
