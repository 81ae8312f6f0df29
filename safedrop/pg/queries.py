"""The one loader for ``sql/queries/*.sql``: one query per file, bind parameters only."""

from __future__ import annotations

from functools import cache
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from safedrop import SQL_DIR

QUERY_DIR = SQL_DIR / "queries"


@cache
def load(name: str) -> sa.TextClause:
    """The query in ``sql/queries/<name>.sql`` as a SQLAlchemy text clause."""
    return sa.text((QUERY_DIR / f"{name}.sql").read_text())


def rows(conn: Connection, query: str, /, **params: Any) -> list[dict[str, Any]]:
    """Run a query file and return its rows as dicts."""
    return [dict(r._mapping) for r in conn.execute(load(query), params)]


def one(conn: Connection, query: str, /, **params: Any) -> dict[str, Any]:
    result = rows(conn, query, **params)
    if len(result) != 1:
        raise RuntimeError(f"query {query} returned {len(result)} rows, expected 1")
    return result[0]
