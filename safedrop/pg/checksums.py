"""Content checksums of tables, and the values of sequences: how a backup, a drop and a restore agree
that they speak of the same rows.

This module provides:

- ``pin_text_settings(conn)``: the row-text settings a checksum depends on, and no silent row-level
  security filtering (this transaction only);
- ``table_checksums(conn, tables)``: each table's exact row count and order-independent content
  checksum, ``"<method>:<value>"``; ``checksum_methods`` reads the methods back from a manifest;
- ``sequence_states(conn, names)``: each sequence's ``last_value`` and ``is_called``;
- ``CHECKSUM_METHOD``: the description the manifest records.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from safedrop.migration import TableName
from safedrop.pg import queries
from safedrop.results import SequenceState, TableChecksum

CHECKSUM_METHOD = (
    "per table: count(*), and the sum over all rows of a 64-bit row hash, order-independent; the prefix of "
    "each checksum names the hash: 'hash:' = hash_record_extended(row, 0) (PostgreSQL 14+, every column "
    "type hashable), 'md5:' = ('x' || left(md5(row::text), 16))::bit(64)::bigint with DateStyle ISO/YMD, "
    "IntervalStyle postgres, TimeZone UTC, extra_float_digits 1, bytea_output hex, lc_monetary C"
)
# Checksum methods, recorded as the prefix of each checksum ("hash:…", "md5:…") so a restore recomputes
# each table's checksum the way the backup took it.
CHECKSUM_QUERIES = {"hash": "table_checksums_hashed", "md5": "table_checksums"}
UNDEFINED_FUNCTION = "42883"


def pin_text_settings(conn: Connection) -> None:
    """The row-text settings checksums depend on (this transaction only), and no silent RLS filtering."""
    queries.rows(conn, "checksum_settings")
    conn.exec_driver_sql("SET LOCAL row_security = off")


def _hashed_rows(conn: Connection, params: dict, query: str = CHECKSUM_QUERIES["hash"]) -> list[dict] | None:
    """The fast checksum's rows, or None when a column type has no extended hash function (json, xml,
    point, …): the caller falls back to md5 of the row text."""
    savepoint = conn.begin_nested()
    try:
        rows = queries.rows(conn, query, **params)
        savepoint.commit()
        return rows
    except sa.exc.DBAPIError as exc:
        savepoint.rollback()
        if getattr(exc.orig, "pgcode", None) != UNDEFINED_FUNCTION:
            raise
        return None


def table_checksums(
    conn: Connection, tables: Sequence[TableName], *, methods: dict[TableName, str] | None = None
) -> dict[TableName, tuple[int, str]]:
    """Exact row count and content checksum (``"<method>:<value>"``) of each table.

    ``methods`` (from a manifest) says how each table was checksummed; without it, the fast
    ``hash_record_extended`` (PostgreSQL 14+, ~3x cheaper than md5 of the row text) where every column
    type has an extended hash function, else md5 of the row's text (call pin_text_settings first).
    """
    out: dict[TableName, tuple[int, str]] = {}
    fast = int(conn.exec_driver_sql("SHOW server_version_num").scalar() or 0) >= 140000
    for table in tables:
        method = (methods or {}).get(table) or ("hash" if fast else "md5")
        params = {"schemas": [table.schema], "names": [table.name]}
        rows = None
        if methods is None and method == "hash":
            rows = _hashed_rows(conn, params)
            method = "hash" if rows is not None else "md5"
        if rows is None:
            rows = queries.rows(conn, CHECKSUM_QUERIES[method], **params)
        for r in rows:
            out[TableName(r["schema_name"], r["table_name"])] = (
                int(r["row_count"]),
                f"{method}:{r['checksum']}",
            )
    return out


@dataclass(frozen=True)
class Contents:
    """A target's rows as one scan saw them."""

    rows: int
    checksum: str  # "<method>:<value>", as table_checksums gives it
    xmins: str  # the sum of a 64-bit hash of every row's xmin: which transactions wrote the rows


def target_contents(
    conn: Connection, tables: Sequence[TableName], *, methods: dict[TableName, str] | None = None
) -> dict[TableName, Contents]:
    """Each table's row count, content checksum and the hash of its rows' xmins, in one (parallel) scan
    (sql/queries/target_contents.sql); the checksum method chosen as ``table_checksums`` chooses it
    (call pin_text_settings first).

    The backup takes it in the dump's own snapshot; the drop takes it again under its lock. A row
    written after that snapshot, by any transaction or subtransaction, carries an xid no row of the
    snapshot carries: equal ``rows`` and ``xmins`` prove the very same row versions, whatever the
    column types hash to (numeric 1.0 and 1.00, citext case) — and freezing keeps each row's xmin.
    """
    out: dict[TableName, Contents] = {}
    fast = int(conn.exec_driver_sql("SHOW server_version_num").scalar() or 0) >= 140000
    for table in tables:
        method = (methods or {}).get(table) or ("hash" if fast else "md5")
        params = {"schemas": [table.schema], "names": [table.name]}
        rows = None
        if methods is None and method == "hash":
            rows = _hashed_rows(conn, {**params, "method": "hash"}, "target_contents")
            method = "hash" if rows is not None else "md5"
        if rows is None:
            rows = queries.rows(conn, "target_contents", **params, method=method)
        for r in rows:
            out[TableName(r["schema_name"], r["table_name"])] = Contents(
                rows=int(r["row_count"]), checksum=f"{method}:{r['checksum']}", xmins=str(r["xmins"])
            )
    return out


def checksum_methods(checksums: Iterable[TableChecksum]) -> dict[TableName, str]:
    """How each table in a manifest was checksummed (the prefix of its checksum)."""
    return {TableName(t.schema_name, t.table_name): t.checksum.split(":", 1)[0] for t in checksums}


def sequence_states(conn: Connection, names: Sequence[str]) -> list[SequenceState]:
    """Each sequence's ``last_value`` and ``is_called``, by qualified name."""
    if not names:
        return []
    rows = queries.rows(conn, "sequence_values", names=list(names))
    return [
        SequenceState(name=r["qualified"], last_value=r["last_value"], is_called=r["is_called"]) for r in rows
    ]
