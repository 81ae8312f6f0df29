"""The catalog walk: everything ``DROP TABLE … CASCADE`` of the targets removes, object for object.

The prediction walks ``pg_depend`` exactly as the server's ``findDependentObjects()`` does
(``src/backend/catalog/dependency.c``): forward edges of every deptype from each doomed object, and
reverse ``internal``/``extension`` edges that transfer the deletion to the owning object (a view's
``_RETURN`` rule dooms the view; one extension member dooms the whole extension). The result is the
complete removal set — tests diff it against what the server really drops (``rehearse``).
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.engine import Connection

from safedrop.migration import Migration, TableName, render_drop
from safedrop.pg import queries
from safedrop.pg.database import execute_composed

Address = tuple[int, int, int]  # (classid, objid, objsubid), as in pg_depend
PG_CLASS = 1259  # pg_class's own oid, fixed in every release (RelationRelationId)
PG_PROC = 1255  # pg_proc's (ProcedureRelationId)

RELATION_KINDS = {
    "r": "table",
    "p": "partitioned table",
    "v": "view",
    "m": "materialized view",
    "f": "foreign table",
    "S": "sequence",
    "c": "composite type",
    "i": "index",
    "I": "partitioned index",
    "t": "TOAST table",
}


# --------------------------------------------------------------------------------------------------
# The exact walk
# --------------------------------------------------------------------------------------------------


@dataclass
class DependGraph:
    """The slice of pg_depend reachable from the targets, fetched level by level."""

    dependents: dict[Address, list[tuple[Address, str]]] = field(default_factory=lambda: defaultdict(list))
    owners: dict[Address, list[tuple[Address, str]]] = field(default_factory=lambda: defaultdict(list))

    @classmethod
    def fetch(cls, conn: Connection, roots: Iterable[Address]) -> DependGraph:
        graph = cls()
        fetched: set[Address] = set()
        frontier = list(dict.fromkeys(roots))
        while frontier:
            batch = [a for a in frontier if a not in fetched]
            fetched.update(batch)
            if not batch:
                break
            rows = address_rows(conn, "depend_edges", batch)
            frontier = []
            for r in rows:
                source = (r["from_classid"], r["from_objid"], r["from_objsubid"])
                other = (r["classid"], r["objid"], r["objsubid"])
                if source[2] == 0 and other[:2] == source[:2]:
                    continue  # a whole object's link to its own column (partition keys): the server skips it
                edges = graph.dependents if r["direction"] == "dependent" else graph.owners
                edges[source].append((other, r["deptype"]))
                if other not in fetched:
                    frontier.append(other)
        return graph


# findDependentObjects()'s flags: how an object was reached (dependency.c, DEPFLAG_*)
ORIGINAL, NORMAL, AUTO, INTERNAL, PARTITION, EXTENSION, REVERSE = 1, 2, 4, 8, 16, 32, 64
_EDGE_FLAG = {
    "n": NORMAL,
    "a": AUTO,
    "x": AUTO,
    "i": INTERNAL,
    "P": PARTITION,
    "S": PARTITION,
    "e": EXTENSION,
}
SILENT = AUTO | INTERNAL | PARTITION | EXTENSION  # reached this way: "drop auto-cascades to", no NOTICE


class _Walk:
    """findDependentObjects(), over a fetched graph.

    ``removed`` maps each object to its accumulated flags, in the server's insertion order. Objects
    without ORIGINAL or any SILENT flag are exactly those the server announces as "drop cascades to"
    (and that DROP … RESTRICT refuses for).
    """

    def __init__(self, graph: DependGraph) -> None:
        self.graph = graph
        self.removed: dict[Address, int] = {}
        self._columns: dict[tuple[int, int], list[Address]] = defaultdict(list)  # sub-objects in removed
        self.refused: list[tuple[Address, Address]] = []  # (target, owner) the server would refuse

    def _present_add_flags(self, obj: Address, flags: int) -> bool:
        if obj in self.removed:
            self.removed[obj] |= flags
            return True
        if obj[2] != 0 and (obj[0], obj[1], 0) in self.removed:
            return True  # a column of a table already going
        if obj[2] == 0:
            for column in self._columns.get(obj[:2], ()):
                self.removed[column] |= flags  # a column went first; the whole object still goes
        return False

    @staticmethod
    def _stack_add_flags(obj: Address, flags: int, stack: list[list]) -> bool:
        found = False
        for entry in stack:
            addr = entry[0]
            if addr[:2] != obj[:2]:
                continue
            if addr[2] == obj[2]:
                entry[1] |= flags
                found = True
            elif addr[2] == 0:
                found = True
            elif obj[2] == 0:
                entry[1] |= flags
        return found

    def visit(self, obj: Address, flags: int, stack: list[list], pending: set[Address]) -> None:
        if self._stack_add_flags(obj, flags, stack) or self._present_add_flags(obj, flags):
            return
        for owner, _deptype in self.graph.owners.get(obj, ()):
            if not stack:  # an original target that is part of something else
                if owner not in pending:
                    self.refused.append((obj, owner))
                return
            if self._stack_add_flags(owner, 0, stack):
                continue
            self.visit(owner, REVERSE, stack, pending)  # the deletion transfers to the owner
            self._present_add_flags(obj, flags)
            return
        entry = [obj, flags]
        stack.append(entry)
        # the server visits dependents newest first: oid descending, then classid, then subid
        dependents = sorted(self.graph.dependents.get(obj, ()), key=lambda d: (-d[0][1], d[0][0], d[0][2]))
        for dependent, deptype in dependents:
            self.visit(dependent, _EDGE_FLAG.get(deptype, NORMAL), stack, pending)
        stack.pop()
        self.removed[obj] = entry[1]
        if obj[2] != 0:
            self._columns[obj[:2]].append(obj)


def predict_removal(
    conn: Connection, statements: Sequence[Sequence[int]]
) -> tuple[dict[Address, int], list[tuple[Address, Address]]]:
    """Every object the DROP statements remove (each statement: the table oids it drops, in order).

    Returns the removal set with each object's flags (the targets themselves included), and the
    targets the server would refuse to drop because they belong to something else (an extension).
    """
    roots = [(PG_CLASS, oid, 0) for stmt in statements for oid in stmt]
    graph = DependGraph.fetch(conn, roots)
    walk = _Walk(graph)
    for stmt in statements:
        pending = {(PG_CLASS, oid, 0) for oid in stmt}
        for oid in stmt:
            walk.visit((PG_CLASS, oid, 0), ORIGINAL, [], pending)
    return walk.removed, walk.refused


def rehearse(conn: Connection, migration: Migration) -> set[Address]:
    """What the server really removes: the migration run in a transaction that is rolled back.

    A ``sql_drop`` event trigger records every dropped object (complete past the NOTICE list's
    100-object cap). Needs a superuser. For tests and ``--rehearse`` on a scratch copy only: the
    production path reads the catalogs and never runs a DROP it has not approved.
    """
    with conn.begin() as tx:
        conn.exec_driver_sql(queries.load("rehearsal_capture_setup").text)
        for statement in migration.statements:
            execute_composed(conn, render_drop(statement))
        rows = queries.rows(conn, "rehearsal_captured")
        tx.rollback()
    return {(r["classid"], r["objid"], r["objsubid"]) for r in rows}


# --------------------------------------------------------------------------------------------------
# Describing and classifying the removal set
# --------------------------------------------------------------------------------------------------


def address_rows(conn: Connection, query: str, objects: Sequence[Address]) -> list[dict[str, Any]]:
    """The rows of a catalog query over objects passed as ``classids``/``objids``/``objsubids`` arrays."""
    return queries.rows(
        conn,
        query,
        classids=[a[0] for a in objects],
        objids=[a[1] for a in objects],
        objsubids=[a[2] for a in objects],
    )


def rows_by_address(
    conn: Connection, query: str, objects: Sequence[Address]
) -> dict[Address, dict[str, Any]]:
    """``address_rows`` keyed by each row's (classid, objid, objsubid)."""
    if not objects:
        return {}
    return {(r["classid"], r["objid"], r["objsubid"]): r for r in address_rows(conn, query, objects)}


def describe(conn: Connection, objects: Sequence[Address]) -> dict[Address, dict[str, Any]]:
    return rows_by_address(conn, "describe_objects", objects)


def removal_digest(descriptions: Iterable[str]) -> str:
    """A fingerprint of the exact removal set, stable across sessions (oids are not part of it)."""
    return hashlib.sha256("\n".join(sorted(descriptions)).encode()).hexdigest()


def statement_oids(migration: Migration, oids: dict[TableName, int]) -> list[list[int]]:
    """The oids each DROP statement of the migration drops (absent tables left out)."""
    result = []
    for stmt in migration.statements:
        present = [oids[t] for t in stmt.tables if t in oids]
        if present:
            result.append(present)
    return result


def depend_fingerprint(conn: Connection, addresses: Sequence[Address]) -> str:
    """A fingerprint of every pg_depend edge around the removal set (one cheap indexed query)."""
    return queries.one(
        conn, "depend_fingerprint", classids=[a[0] for a in addresses], objids=[a[1] for a in addresses]
    )["fingerprint"]


def table_status(conn: Connection, tables: list[TableName]) -> list[dict]:
    return queries.rows(
        conn, "table_status", schemas=[t.schema for t in tables], names=[t.name for t in tables]
    )


def ledger_entries(conn: Connection, tables: list[TableName]) -> dict[TableName, dict]:
    rows = queries.rows(
        conn, "ledger_lookup", schemas=[t.schema for t in tables], names=[t.name for t in tables]
    )
    return {TableName(r["schema_name"], r["table_name"]): r for r in rows}
