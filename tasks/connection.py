"""Connection precheck: reach the server, learn its version and role, and the guide's "Table Status".

Stops (as reasons, nothing changed) when the server is a read-only standby, a schema is unknown,
a target is not a table or may not be dropped by this role, a table that must survive is missing,
or a target is absent without safedrop's ledger saying it dropped it (a typo, not a re-run).
"""

from __future__ import annotations

from safedrop.errors import UsageError
from safedrop.migration import Migration, TableName
from safedrop.pg import queries
from safedrop.pg.catalog import ledger_entries, table_status
from safedrop.pg.database import Database, connect, identify
from safedrop.report.artifacts import md_table, publish_markdown
from safedrop.results import ConnectionResult, TableStatus
from safedrop.runlog import run_logger
from safedrop.steps import step

_KINDS = {
    "v": "a view",
    "m": "a materialized view",
    "f": "a foreign table",
    "S": "a sequence",
    "i": "an index",
    "c": "a composite type",
}


def check_connection(db: Database, migration: Migration, keep: list[TableName]) -> ConnectionResult:
    """The server, the ledger and every table's status, in one session; what stops the run."""
    targets = migration.targets
    overlap = sorted(str(t) for t in set(targets) & set(keep))
    if overlap:
        raise UsageError(
            f"{', '.join(overlap)} is both a target of the migration and a table to keep; fix --keep"
        )
    with connect(db) as conn:
        info = queries.one(conn, "server_info")
        identity = identify(conn, db)
        target_rows = table_status(conn, targets)
        keep_rows = table_status(conn, keep)
        ledger = queries.one(conn, "ledger_status")
        absent = [t for t, r in zip(targets, target_rows, strict=True) if r["oid"] is None]
        dropped_before = ledger_entries(conn, absent) if absent and ledger["ledger_exists"] else {}
        conn.rollback()
    reasons = (
        [
            f"the server at {db.display} is a read-only standby (pg_is_in_recovery); point the database URL "
            "at the primary"
        ]
        if info["in_recovery"]
        else []
    )
    statuses = []
    for table, row in zip(targets, target_rows, strict=True):
        statuses.append(
            TableStatus(
                name=row["qualified"],
                exists=row["oid"] is not None,
                oid=row["oid"],
                owner=row["owner"],
                can_drop=row["can_drop"],
            )
        )
        reasons += _target_reasons(table, row, dropped_before, info["current_user"])
    keep_status = [
        TableStatus(name=r["qualified"], exists=r["oid"] is not None, oid=r["oid"], owner=r["owner"])
        for r in keep_rows
    ]
    reasons += [
        f"{r['qualified']} must survive the drop but does not exist; check --keep for a typo"
        for r in keep_rows
        if r["oid"] is None
    ]
    ledger_state = _ledger_state(ledger)
    warnings = []
    if ledger_state == "unavailable" and any(s.exists for s in statuses):
        warnings.append(
            "safedrop cannot keep its ledger here (no CREATE on the database, or no INSERT on "
            "safedrop.dropped_tables): a later run will not tell 'already dropped' from 'never existed'"
        )
    return ConnectionResult(
        server=db.display,
        server_version=info["server_version"],
        server_version_num=info["server_version_num"],
        current_user=info["current_user"],
        in_recovery=info["in_recovery"],
        targets=statuses,
        keep=keep_status,
        ledger=ledger_state,
        already_dropped=[str(t) for t in dropped_before],
        identity=identity,
        reasons=reasons,
        warnings=warnings,
    )


def _ledger_state(ledger: dict) -> str:
    if ledger["ledger_exists"] and ledger["can_record"]:
        return "present"
    return "creatable" if not ledger["ledger_exists"] and ledger["can_create_schema"] else "unavailable"


def _target_reasons(table: TableName, row: dict, dropped_before: dict, current_user: str) -> list[str]:
    """Why this target cannot be dropped (none, usually): no such schema or table, not a table, not ours."""
    if not row["schema_exists"]:
        return [f"schema {table.schema} does not exist; check --schema and the migration's table names"]
    if row["oid"] is None:
        if table in dropped_before:
            return []  # dropped by an earlier run: already applied
        return [
            f"{row['qualified']} does not exist and safedrop's ledger has no record of dropping it: "
            "check the migration's table names and --schema (if it was dropped by hand, remove it "
            "from the migration)"
        ]
    if row["relkind"] not in ("r", "p"):
        return [
            f"{row['qualified']} is {_KINDS.get(row['relkind'], 'not a table')}, not a table; "
            "a safedrop migration drops tables only"
        ]
    if not row["can_drop"]:
        return [
            f"role {current_user} may not drop {row['qualified']} (owner {row['owner']}); run as "
            f"{row['owner']}, a member of it, or the schema's owner"
        ]
    return []


def render(result: ConnectionResult) -> str:
    rows = [
        {
            "table": t.name,
            "role": "target",
            "status": "exists" if t.exists else "absent",
            "owner": t.owner,
            "may drop": t.can_drop,
        }
        for t in result.targets
    ] + [
        {
            "table": t.name,
            "role": "keep",
            "status": "exists" if t.exists else "MISSING",
            "owner": t.owner,
            "may drop": "",
        }
        for t in result.keep
    ]
    text = (
        f"# Connection precheck\n\nConnected to `{result.server}` — PostgreSQL {result.server_version}, "
        f"as `{result.current_user}`{' (read-only standby)' if result.in_recovery else ''}.\n\n"
        f"## Table status\n\n{md_table(rows)}"
    )
    if result.already_dropped:
        text += f"\nAlready dropped by safedrop earlier: {', '.join(result.already_dropped)}\n"
    return text


@step("connection-precheck", retry_delays=(1, 2, 4), jitter=0.2)
def connection_precheck(
    db: Database, migration: Migration, keep: list[TableName], artifact_prefix: str
) -> ConnectionResult:
    """Connect, read the server version and role, and the status of every target and survivor."""
    logger = run_logger()
    logger.info("connecting to %s", db.display)
    result = check_connection(db, migration, keep)
    logger.info(
        "PostgreSQL %s; targets present: %s",
        result.server_version,
        ", ".join(t.name for t in result.targets if t.exists) or "none",
    )
    publish_markdown(f"{artifact_prefix}-connection", render(result), "Connection precheck and table status")
    return result
