"""Drop: the migration's statements in ONE transaction, lock-safe, rechecked under the lock.

The transaction sets ``lock_timeout`` and ``statement_timeout`` locally, takes ACCESS EXCLUSIVE on
the targets first (a lock timeout there leaves nothing held and nothing dropped), then — holding the
locks, so nothing can change underneath — recomputes the exact CASCADE set and the targets' row
counts and refuses to go on if either differs from what the prechecks approved. Then it runs the
DROP statements in file order and records each dropped table in safedrop's own ledger.
"""

from __future__ import annotations

import json
import time

import sqlalchemy as sa
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from psycopg2 import sql
from sqlalchemy.engine import Connection

from safedrop import queries
from safedrop.artifacts import md_list, publish_markdown
from safedrop.database import Database, connect
from safedrop.errors import DropFailed
from safedrop.migration import DropStatement, Migration, TableName
from safedrop.report import DropResult
from tasks.cleanup import count_rows
from tasks.dependencies import analyse

LOCK_NOT_AVAILABLE = "55P03"
QUERY_CANCELED = "57014"


def _tables(tables: list[TableName]) -> sql.Composable:
    return sql.SQL(", ").join(sql.Identifier(t.schema, t.name) for t in tables)


def render_drop(statement: DropStatement) -> sql.Composed:
    """A DROP TABLE statement rebuilt from the parsed file, identifiers quoted by the driver."""
    return sql.SQL("DROP TABLE {if_exists}{tables} {behavior}").format(
        if_exists=sql.SQL("IF EXISTS " if statement.if_exists else ""),
        tables=_tables(list(statement.tables)),
        behavior=sql.SQL("CASCADE" if statement.cascade else "RESTRICT"),
    )


def _execute(conn: Connection, statement: sql.Composable) -> None:
    raw = conn.connection.dbapi_connection
    conn.exec_driver_sql(statement.as_string(raw))


def describe_blockers(db: Database, oids: list[int], exclude_pids: list[int]) -> list[str]:
    """Who holds the locks we waited for: pid, application, state, transaction age, query."""
    try:
        with connect(db) as conn:
            rows = queries.rows(conn, "lock_blockers", oids=oids, exclude_pids=exclude_pids)
    except Exception:
        return []
    seen, out = set(), []
    for r in rows:
        if r["pid"] in seen or not r["granted"]:
            continue
        seen.add(r["pid"])
        out.append(
            f"pid {r['pid']} ({r['application_name'] or 'no application_name'}, {r['state']}, "
            f"transaction open {r['xact_seconds']} s, holds {r['mode']} on {r['relation']}): {r['query']}"
        )
    return out


def drop_targets(
    db: Database,
    migration: Migration,
    oids: dict[TableName, int],
    *,
    approved_digest: str,
    expected_rows: dict[str, int],
    allow_cascade: list[str],
    lock_timeout_ms: int,
    statement_timeout_s: int,
    record_in_ledger: bool,
    backup_path: str | None = None,
    backup_sha256: str | None = None,
    flow_run_id: str | None = None,
) -> DropResult:
    present = [t for t in migration.targets if t in oids]
    started = time.monotonic()
    pid = None
    removed_by_cascade: list[str] = []
    try:
        with connect(db) as conn:
            with conn.begin():
                pid = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar()
                queries.rows(
                    conn,
                    "set_local_timeouts",
                    lock_timeout=f"{lock_timeout_ms}ms",
                    statement_timeout=f"{statement_timeout_s}s",
                )
                if present:
                    _execute(conn, sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(_tables(present)))
                # Under the lock nothing can change: what we drop is exactly what was approved.
                now = analyse(conn, migration, oids, allow_cascade)
                if now.digest != approved_digest:
                    detail = "; ".join(now.reasons) or "see the dependency scan"
                    raise DropFailed(
                        "the database changed since the prechecks (what CASCADE would remove is "
                        f"different: {detail}); nothing was dropped — re-run"
                    )
                rows_now = count_rows(conn, present)
                changed = {
                    t: (expected_rows.get(t), n) for t, n in rows_now.items() if expected_rows.get(t) != n
                }
                if changed:
                    detail = ", ".join(f"{t} had {a} rows, now {b}" for t, (a, b) in changed.items())
                    raise DropFailed(
                        f"rows changed since the prechecks ({detail}); nothing was dropped — re-run so the "
                        "backup and checks see them"
                    )
                removed_by_cascade = [o.name for o in now.cascade]
                for statement in migration.statements:
                    _execute(conn, render_drop(statement))
                if record_in_ledger and present:
                    conn.exec_driver_sql(queries.load("ledger_setup").text)
                    for table in present:
                        queries.rows(
                            conn,
                            "ledger_record",
                            schema_name=table.schema,
                            table_name=table.name,
                            row_count=expected_rows.get(table.qualified, 0),
                            migration=migration.name,
                            removed_by_cascade=json.dumps(removed_by_cascade),
                            backup_path=backup_path,
                            backup_sha256=backup_sha256,
                            flow_run_id=flow_run_id,
                        )
    except sa.exc.DBAPIError as exc:
        code = getattr(exc.orig, "pgcode", None)
        if code == LOCK_NOT_AVAILABLE:
            blockers = describe_blockers(db, list(oids.values()), [pid] if pid else [])
            raise DropFailed(
                f"could not lock the targets within lock_timeout {lock_timeout_ms} ms; nothing was dropped. "
                f"Blocked by: {'; '.join(blockers) or 'a session that has since finished'}. "
                "Re-run when it has finished, or end it"
            ) from None
        if code == QUERY_CANCELED:
            raise DropFailed(
                f"the drop took longer than statement_timeout {statement_timeout_s} s and was rolled back; "
                "nothing was dropped"
            ) from None
        first = str(exc.orig).strip().splitlines()[0] if exc.orig else type(exc).__name__
        raise DropFailed(f"the drop failed and was rolled back, nothing was dropped: {first}") from None
    return DropResult(
        dropped=[t.qualified for t in present],
        removed_by_cascade=removed_by_cascade,
        duration_s=round(time.monotonic() - started, 3),
        lock_timeout_ms=lock_timeout_ms,
    )


def render(result: DropResult) -> str:
    text = f"# Drop\n\nDropped in one transaction ({result.duration_s:.3f} s, lock_timeout "
    text += f"{result.lock_timeout_ms} ms):\n\n{md_list(result.dropped)}"
    if result.removed_by_cascade:
        text += f"\nRemoved by CASCADE, as allowed:\n\n{md_list(result.removed_by_cascade)}"
    return text


@task(name="drop", cache_policy=NO_CACHE)
def drop(
    db: Database,
    migration: Migration,
    oids: dict[TableName, int],
    approved_digest: str,
    expected_rows: dict[str, int],
    allow_cascade: list[str],
    lock_timeout_ms: int,
    statement_timeout_s: int,
    record_in_ledger: bool,
    backup_path: str | None,
    backup_sha256: str | None,
    flow_run_id: str | None,
    artifact_prefix: str,
) -> DropResult:
    """Run the migration's DROP statements in one lock-safe transaction."""
    result = drop_targets(
        db,
        migration,
        oids,
        approved_digest=approved_digest,
        expected_rows=expected_rows,
        allow_cascade=allow_cascade,
        lock_timeout_ms=lock_timeout_ms,
        statement_timeout_s=statement_timeout_s,
        record_in_ledger=record_in_ledger,
        backup_path=backup_path,
        backup_sha256=backup_sha256,
        flow_run_id=flow_run_id,
    )
    get_run_logger().info("dropped %s in %.3f s", ", ".join(result.dropped), result.duration_s)
    publish_markdown(f"{artifact_prefix}-drop", render(result), "What the drop transaction removed")
    return result
