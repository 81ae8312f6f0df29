"""What a dump must hold, read in the dump's own snapshot.

This module provides:

- ``check_row_security(db, targets)``: ``BackupFailed`` when row-level security would cut a target's
  dump short for the role we connect as (before anything is dumped);
- ``exported_snapshot(db)``: a REPEATABLE READ, READ ONLY transaction and its exported snapshot, open
  for the block (pg_dump ``--snapshot`` reads the very same data);
- ``DumpPlan`` / ``plan_dump(conn, targets, scope=…)``: the targets that exist and their partitions,
  the table data to leave out (scope ``targets``), each table's weight for progress, and every
  catalog object the drop removes (``safedrop.pg.catalog.predict_removal``) with its portable address.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from safedrop.analysis.cascade import classify
from safedrop.errors import DID_NOT_RUN, BackupFailed, ConnectionFailed
from safedrop.migration import Migration, TableName
from safedrop.pg import queries
from safedrop.pg.catalog import PG_CLASS, describe, predict_removal, rows_by_address, statement_oids
from safedrop.pg.checksums import pin_text_settings
from safedrop.pg.database import Database, connect, describe_connect_error
from safedrop.results import RemovedObject
from safedrop.retries import backup_failure

Scope = Literal["database", "targets"]


def _rls_problem(rows: list[dict], why: str) -> str:
    tables = ", ".join(TableName(r["schema_name"], r["table_name"]).qualified for r in rows)
    return f"a dump would be cut short by row-level security on {tables}{why}"


def check_row_security(db: Database, targets: Sequence[TableName]) -> None:
    """Stop if row-level security would cut a target's dump short for the role we connect as."""
    if not targets:
        return
    try:
        with connect(db) as conn:
            blockers = queries.rows(
                conn,
                "backup_rls_blockers",
                schemas=[t.schema for t in targets],
                names=[t.name for t in targets],
            )
    except ConnectionFailed as exc:
        message = re.sub(r"[ \t]+", " ", str(exc))
        raise backup_failure(f"{message}; {DID_NOT_RUN}") from None
    if not blockers:
        return
    plain = [r for r in blockers if not (r["forced"] and r["is_owner"])]
    forced = [r for r in blockers if r["forced"] and r["is_owner"]]
    parts = []
    if plain:
        owners = ", ".join(sorted({r["owner"] for r in plain}))
        parts.append(_rls_problem(plain, f"; run as the table owner ({owners}) or a BYPASSRLS role"))
    if forced:
        parts.append(
            _rls_problem(
                forced,
                " (FORCE ROW LEVEL SECURITY applies to its owner too); "
                "run as a superuser or a BYPASSRLS role",
            )
        )
    raise BackupFailed(f"{'; '.join(parts)}; {DID_NOT_RUN}")


@contextmanager
def exported_snapshot(db: Database) -> Iterator[tuple[Connection, dict[str, str]]]:
    """A REPEATABLE READ, READ ONLY transaction and its exported snapshot (``snapshot_id`` for pg_dump,
    ``txid_snapshot`` to tell later writes), open for the block."""
    try:
        conn = db.shared_engine().connect()
    except sa.exc.OperationalError as exc:
        raise backup_failure(f"{describe_connect_error(exc, db)}; {DID_NOT_RUN}") from None
    try:
        conn.exec_driver_sql("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        pin_text_settings(conn)
        yield conn, queries.one(conn, "export_snapshot")
    finally:
        try:  # the session may be gone (terminated): never hide the error that got us here
            conn.rollback()
            conn.close()
        except Exception:
            pass


def pattern(*parts: str) -> str:
    """An exact-match pg_dump pattern: each part double-quoted (inside quotes, * ? . are literal)."""
    return ".".join('"' + p.replace('"', '""') + '"' for p in parts)


@dataclass
class DumpPlan:
    """What the snapshot says: the targets' tables, what to leave out, what the drop removes."""

    tables: list[dict[str, Any]]  # backup_tables rows
    targets: list[TableName]  # the targets that exist
    layout: dict[TableName, tuple[str, list[TableName]]]
    below: dict[TableName, list[str]]
    exclude_data: list[str]
    weights: dict[str, int]  # "schema.name" (as pg_dump --verbose prints it) -> bytes on disk
    removed: list[RemovedObject]
    cascade: list[Any]
    sequences: list[str]  # the sequences the drop removes (qualified)


@dataclass
class _Layout:
    present: list[TableName]  # the targets that exist
    roots: dict[TableName, dict[str, Any]]  # each existing target's own row
    layout: dict[TableName, tuple[str, list[TableName]]]  # (relkind, leaf partitions if partitioned)
    below: dict[TableName, list[str]]  # everything below each target (partitions, children)


def _layout(tables: list[dict[str, Any]], targets: Sequence[TableName]) -> _Layout:
    roots = {
        TableName(r["schema_name"], r["table_name"]): r for r in tables if r["target"] and r["parent"] is None
    }
    found = _Layout([t for t in targets if t in roots], roots, {}, {})
    for table in found.present:
        root = roots[table]
        tree = [r for r in tables if r["target"] == root["target"] and r["oid"] != root["oid"]]
        leaves = [TableName(r["schema_name"], r["table_name"]) for r in tree if r["relkind"] == "r"]
        found.layout[table] = (root["relkind"], leaves if root["relkind"] == "p" else [])
        found.below[table] = [r["qualified"] for r in tree]
    return found


def _excluded_data(tables: list[dict[str, Any]], scope: Scope) -> list[str]:
    """``--exclude-table-data`` patterns: for scope ``targets``, every table's but the targets'."""
    if scope != "targets":
        return []
    exclude: list[str] = []
    kept_schemas = {r["schema_name"] for r in tables if r["target"]}
    for schema in sorted({r["schema_name"] for r in tables}):
        others = [r for r in tables if r["schema_name"] == schema and not r["target"] and r["relkind"] == "r"]
        if schema not in kept_schemas:
            exclude.append(pattern(schema) + ".*")
        else:
            exclude += [pattern(schema, r["table_name"]) for r in others]
    return exclude


def _removal(
    conn: Connection, oids: dict[TableName, int], migration: Migration | None, allow_cascade: Sequence[str]
) -> tuple[list[RemovedObject], list[Any], list[str]]:
    """(every object the drop removes, what CASCADE removes beyond the targets, the removed sequences)."""
    if migration is not None:
        statements = statement_oids(migration, oids)
    else:
        statements = [list(oids.values())] if oids else []
    removed = predict_removal(conn, statements)[0] if statements else {}
    info = describe(conn, list(removed))
    owners = {row["owner_rel"] for row in info.values() if row["owner_rel"]}
    rel_names = {r["oid"]: r["qualified"] for r in queries.rows(conn, "relation_names", oids=sorted(owners))}
    cascade = classify(removed, info, rel_names, list(allow_cascade))
    addresses = rows_by_address(conn, "object_addresses", list(removed))  # type, names, args
    objects = [
        RemovedObject(
            classid=address[0],
            objid=address[1],
            objsubid=address[2],
            description=info[address]["description"],
            type=addresses[address]["type"],
            names=list(addresses[address]["object_names"] or []),
            args=list(addresses[address]["object_args"] or []),
        )
        for address in removed
        if address in info and address in addresses
    ]
    sequences = [
        info[a]["identity"]
        for a in removed
        if a[0] == PG_CLASS and a[2] == 0 and info.get(a, {}).get("relkind") == "S"
    ]
    return objects, cascade, sorted(sequences)


def plan_dump(
    conn: Connection,
    targets: Sequence[TableName],
    *,
    scope: Scope,
    migration: Migration | None = None,
    allow_cascade: Sequence[str] = (),
) -> DumpPlan:
    """Read, in the open snapshot, the targets' tables, the data to leave out and the removal set."""
    tables = queries.rows(
        conn, "backup_tables", schemas=[t.schema for t in targets], names=[t.name for t in targets]
    )
    found = _layout(tables, targets)
    in_scope = [r for r in tables if r["relkind"] == "r" and (scope == "database" or r["target"])]
    oids = {t: found.roots[t]["oid"] for t in found.present}
    removed, cascade, sequences = _removal(conn, oids, migration, allow_cascade)
    return DumpPlan(
        tables=tables,
        targets=found.present,
        layout=found.layout,
        below=found.below,
        exclude_data=_excluded_data(tables, scope),
        weights={f"{r['schema_name']}.{r['table_name']}": max(int(r["bytes"]), 8192) for r in in_scope},
        removed=removed,
        cascade=cascade,
        sequences=sequences,
    )
