"""Row counts of tables that must survive: figures for the report, bounded in time, never a verdict.

On a live database the survivors take writes while a run works, so their counts before and after the
drop differ for good reasons; they are reported, not compared. An exact ``count(*)`` scans the whole
table: above ``EXACT_COUNT_MAX_PAGES`` (1 GiB) the planner's estimate is used instead, and an exact
count that cannot get its lock or runs past its statement time gives way to the estimate too. Each
count says which it is.
"""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from safedrop.migration import TableName
from safedrop.pg import queries

EXACT_COUNT_MAX_PAGES = 131_072  # 1 GiB of 8 KiB pages: a count(*) of more is a long sequential scan
LOCK_NOT_AVAILABLE, QUERY_CANCELED = "55P03", "57014"


@dataclass(frozen=True)
class Limits:
    """How far an exact count may go before the estimate is used instead."""

    lock_timeout_ms: int = 2_000
    statement_timeout_ms: int = 30_000
    max_pages: int = EXACT_COUNT_MAX_PAGES


def count_rows(conn: Connection, tables: list[TableName]) -> dict[str, int]:
    """Exact row counts (``count(*)``), keyed by qualified name; waits as the session's settings say."""
    if not tables:
        return {}
    rows = queries.rows(
        conn, "row_counts", schemas=[t.schema for t in tables], names=[t.name for t in tables]
    )
    return {TableName(r["schema_name"], r["table_name"]).qualified: int(r["row_count"]) for r in rows}


def count_bounded(
    conn: Connection, tables: list[TableName], limits: Limits = Limits()
) -> tuple[dict[str, int], dict[str, str]]:
    """Row counts keyed by qualified name, and for each count that is an estimate, why.

    Must run inside a transaction: each exact count runs in a savepoint with its own lock_timeout and
    statement_timeout, so one that gives up leaves the transaction usable.
    """
    if not tables:
        return {}, {}
    sizes = {
        TableName(r["schema_name"], r["table_name"]).qualified: r
        for r in queries.rows(
            conn, "table_size_estimates", schemas=[t.schema for t in tables], names=[t.name for t in tables]
        )
    }
    counts: dict[str, int] = {}
    estimated: dict[str, str] = {}
    for table in tables:
        size = sizes.get(table.qualified) or {"estimate": 0, "analyzed": False, "pages": 0}
        if size["analyzed"] and size["pages"] > limits.max_pages:
            counts[table.qualified] = int(size["estimate"])
            estimated[table.qualified] = f"planner estimate ({size['pages']:,} pages: too large to count)"
            continue
        exact, why = _count_in_savepoint(conn, table, limits)
        if exact is not None:
            counts[table.qualified] = exact
        else:
            counts[table.qualified] = int(size["estimate"])
            estimated[table.qualified] = f"planner estimate ({why})"
    return counts, estimated


def _count_in_savepoint(conn: Connection, table: TableName, limits: Limits) -> tuple[int | None, str]:
    savepoint = conn.begin_nested()
    try:
        queries.rows(
            conn,
            "set_local_timeouts",
            lock_timeout=f"{limits.lock_timeout_ms}ms",
            statement_timeout=f"{limits.statement_timeout_ms}ms",
        )
        exact = count_rows(conn, [table])[table.qualified]
        savepoint.rollback()  # only the settings: a count changes nothing
        return exact, ""
    except sa.exc.DBAPIError as exc:
        savepoint.rollback()
        code = getattr(exc.orig, "pgcode", None)
        if code == LOCK_NOT_AVAILABLE:
            return None, f"the count waited {limits.lock_timeout_ms / 1000:g} s for a lock and gave up"
        if code == QUERY_CANCELED:
            return None, f"the count ran past {limits.statement_timeout_ms / 1000:g} s and was stopped"
        raise
