"""Runtime evidence that the targets are dead: scans and writes since the previous run.

Reads ``pg_stat_user_tables`` for each target and compares with the reading the previous run kept
in a Prefect Variable — or, for the command line without a Prefect server, in a file under
``safedrop.paths.state_dir()`` (the database itself is not written to on a dry run). Any read or write since
then is reported: something still uses the table. safedrop's own row count (one scan per target, in
the cleanup check that follows this step) is excluded from the next comparison.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime

from safedrop.paths import state_dir
from safedrop.pg import queries
from safedrop.pg.database import Database, connect
from safedrop.report.artifacts import md_table, publish_markdown
from safedrop.results import ActivityResult, TableActivity
from safedrop.runlog import in_run, run_logger
from safedrop.steps import step

OWN_SCANS_PER_RUN = 1  # the cleanup check's count(*) of each target


def variable_name(db: Database, migration_slug: str) -> str:
    """One Variable per database and migration (names: lowercase letters, digits, underscores)."""
    where = hashlib.sha256(db.display.encode()).hexdigest()[:10]
    return f"safedrop_activity_{migration_slug.replace('-', '_')}_{where}"[:255]


def recall(name: str) -> dict | None:
    """The previous run's reading: a Prefect Variable inside a run, else the command line's file."""
    if in_run():
        from prefect.variables import Variable

        return Variable.get(name, default=None)
    try:
        return json.loads((state_dir() / f"{name}.json").read_text())
    except (OSError, ValueError):
        return None


def remember(name: str, reading: dict) -> None:
    if in_run():
        from prefect.variables import Variable

        Variable.set(name, reading, overwrite=True)
        return
    path = state_dir() / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(reading))


def read_activity(db: Database, oids: list[int]) -> list[dict]:
    if not oids:
        return []
    with connect(db) as conn:
        return queries.rows(conn, "table_activity", oids=oids)


def compare(rows: list[dict], previous: dict | None) -> ActivityResult:
    prev_tables = (previous or {}).get("tables", {})
    prev_at = (previous or {}).get("observed_at")
    stats_reset = rows[0]["stats_reset"].isoformat() if rows and rows[0]["stats_reset"] else None
    reset_since = bool(previous and stats_reset and stats_reset != previous.get("stats_reset"))
    tables, warnings = [], []
    for r in rows:
        scans = int(r["seq_scan"] + r["idx_scan"])
        writes = int(r["n_tup_ins"] + r["n_tup_upd"] + r["n_tup_del"])
        activity = TableActivity(
            table=r["table_name"],
            scans=scans,
            inserts=r["n_tup_ins"],
            updates=r["n_tup_upd"],
            deletes=r["n_tup_del"],
            since=prev_at,
        )
        before = prev_tables.get(r["table_name"])
        if before is not None and not reset_since:
            activity.scans_since = max(0, scans - before["scans"])
            activity.writes_since = max(0, writes - before["writes"])
            if activity.scans_since or activity.writes_since:
                warnings.append(
                    f"{r['table_name']} was used since the previous run ({prev_at}): "
                    f"{activity.scans_since} scans, {activity.writes_since} rows written — something still "
                    "reads or writes it"
                )
        tables.append(activity)
    if reset_since:
        warnings.append(
            "the server's statistics were reset since the previous run: no usage evidence this time"
        )
    return ActivityResult(tables=tables, previous_at=prev_at, stats_reset=stats_reset, warnings=warnings)


def snapshot(rows: list[dict]) -> dict:
    """What the next run compares with; our own coming scan of each target is counted in advance."""
    observed = rows[0]["observed_at"] if rows else datetime.now().astimezone()
    return {
        "observed_at": observed.isoformat(timespec="seconds"),
        "stats_reset": rows[0]["stats_reset"].isoformat() if rows and rows[0]["stats_reset"] else None,
        "tables": {
            r["table_name"]: {
                "scans": int(r["seq_scan"] + r["idx_scan"]) + OWN_SCANS_PER_RUN,
                "writes": int(r["n_tup_ins"] + r["n_tup_upd"] + r["n_tup_del"]),
            }
            for r in rows
        },
    }


def render(result: ActivityResult) -> str:
    rows = [
        {
            "table": t.table,
            "scans (total)": t.scans,
            "writes (total)": t.inserts + t.updates + t.deletes,
            "scans since previous": "—" if t.scans_since is None else t.scans_since,
            "writes since previous": "—" if t.writes_since is None else t.writes_since,
        }
        for t in result.tables
    ]
    since = f"since the previous run at {result.previous_at}" if result.previous_at else "(first reading)"
    return f"# Runtime evidence {since}\n\n{md_table(rows)}"


@step("activity-check")
def activity_check(
    db: Database, oids: list[int], migration_slug: str, artifact_prefix: str
) -> ActivityResult:
    """Scans and writes on the targets since the previous run (pg_stat_user_tables)."""
    name = variable_name(db, migration_slug)
    rows = read_activity(db, oids)
    result = compare(rows, recall(name))
    if rows:
        remember(name, snapshot(rows))
    run_logger().info("activity: %s", "; ".join(result.warnings) or "no use of the targets seen")
    publish_markdown(
        f"{artifact_prefix}-activity", render(result), "Runtime evidence that the targets are dead"
    )
    return result
