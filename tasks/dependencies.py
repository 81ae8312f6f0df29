"""Dependency scan: everything `DROP TABLE … CASCADE` of the targets would remove, and what it would break.

The prediction walks ``pg_depend`` exactly as the server's ``findDependentObjects()`` does
(``src/backend/catalog/dependency.c``): forward edges of every deptype from each doomed object, and
reverse ``internal``/``extension`` edges that transfer the deletion to the owning object (a view's
``_RETURN`` rule dooms the view; one extension member dooms the whole extension). The result is the
complete removal set, object for object — tests diff it against what the server really drops.

References PostgreSQL does not track (plpgsql bodies, string-body SQL functions, pg_cron jobs) are
found by a word-boundary search of function bodies, with the triggers that call them.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from sqlalchemy.engine import Connection

from safedrop import queries
from safedrop.artifacts import md_table, publish_markdown, publish_table
from safedrop.database import Database, connect, execute_composed
from safedrop.migration import Migration, TableName, render_drop
from safedrop.report import CascadeObject, DependencyResult, UntrackedReference

Address = tuple[int, int, int]  # (classid, objid, objsubid), as in pg_depend
PG_CLASS = 1259  # pg_class's own oid, fixed in every release (RelationRelationId)
PG_PROC = 1255  # pg_proc's (ProcedureRelationId)

_RELATION_KINDS = {
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
            rows = queries.rows(
                conn,
                "depend_edges",
                classids=[a[0] for a in batch],
                objids=[a[1] for a in batch],
                objsubids=[a[2] for a in batch],
            )
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


def describe(conn: Connection, objects: Sequence[Address]) -> dict[Address, dict[str, Any]]:
    if not objects:
        return {}
    rows = queries.rows(
        conn,
        "describe_objects",
        classids=[a[0] for a in objects],
        objids=[a[1] for a in objects],
        objsubids=[a[2] for a in objects],
    )
    return {(r["classid"], r["objid"], r["objsubid"]): r for r in rows}


def removal_digest(descriptions: Iterable[str]) -> str:
    """A fingerprint of the exact removal set, stable across sessions (oids are not part of it)."""
    return hashlib.sha256("\n".join(sorted(descriptions)).encode()).hexdigest()


def _kind(info: dict[str, Any]) -> str:
    if info["contype"] == "f":
        return "foreign key"
    if info["type"] == "table constraint":
        return "constraint"
    if info["type"] == "default value":
        return "column default"
    if info["type"] == "table column":
        return "column"
    if info["type"] == "publication relation":
        return "publication membership"
    if info["relkind"] and info["objsubid"] == 0:
        if info["is_partition"] and info["relkind"] in ("r", "p", "f"):
            return "partition"
        if info["parent_rel"] and info["relkind"] in ("r", "p", "f"):
            return "inheritance child table"
        return _RELATION_KINDS.get(info["relkind"], info["type"])
    return info["type"]


def _report_name(info: dict[str, Any]) -> str:
    """The name the report prints and --allow-cascade takes."""
    identity: str = info["identity"] or info["description"]
    if info["type"] in ("table constraint", "trigger", "policy", "rule"):
        return identity.split(" on ", 1)[0]
    if info["type"] == "default value":
        return info["default_column"] or identity.removeprefix("for ")
    return identity


def classify(
    removed: dict[Address, int],
    info: dict[Address, dict[str, Any]],
    rel_names: dict[int, str],
    allow: Sequence[str],
) -> list[CascadeObject]:
    """The removals beyond the targets' own parts, one entry per object a DBA would name.

    That is what the server itself announces ("drop cascades to …": reached through a normal
    dependency, or the owner of such a thing), plus two silent removals that matter: partitions
    (their data goes), publication memberships (subscribers stop receiving the table), and whatever
    silently leaves a surviving table (a constraint trigger, an index on a removed column). Parts of
    listed objects (a view's rule, an extension's members, a constraint's triggers) are folded in.
    """
    removed_relations = {a[1] for a in removed if a[0] == PG_CLASS and a[2] == 0}
    listed: list[CascadeObject] = []
    for address, flags in removed.items():
        row = info.get(address)
        if row is None or flags & ORIGINAL:
            continue
        kind = _kind(row)
        is_relation = address[0] == PG_CLASS and address[2] == 0
        owner = None if is_relation and row["owner_rel"] == address[1] else row["owner_rel"]
        on_survivor = owner is not None and owner not in removed_relations
        announced = not flags & SILENT
        if not (
            announced
            or kind in ("partition", "publication membership")
            or (on_survivor and not flags & INTERNAL)
        ):
            continue
        owner_table = rel_names.get(owner) if on_survivor else None
        loses_data = kind in ("partition", "inheritance child table", "column", "table")
        restorable = kind not in ("column", "column default")
        name = _report_name(row)
        allowed = _is_allowed(name, row, owner_table, allow)
        listed.append(
            CascadeObject(
                kind=kind,
                name=name,
                identity=row["description"],
                owner_table=owner_table,
                loses_data=loses_data,
                restorable=restorable,
                allowed=allowed,
                why=_why(kind, loses_data, restorable, allowed),
                needs_cascade=announced,
            )
        )
    listed.sort(key=lambda o: (o.owner_table or "", o.kind, o.name))
    return listed


def _is_allowed(name: str, row: dict[str, Any], owner_table: str | None, allow: Sequence[str]) -> bool:
    candidates = {name, row["description"], row["identity"] or ""}
    if owner_table:
        candidates.add(f"{owner_table}.{name}")
    if "(" in name:  # a function may be allowed without its argument list
        candidates.add(name.split("(", 1)[0])
    return any(a.strip() in candidates for a in allow)


def _why(kind: str, loses_data: bool, restorable: bool, allowed: bool) -> str:
    if allowed:
        effect = "allowed: will be removed"
    else:
        effect = "CASCADE would remove it"
    notes = []
    if loses_data:
        notes.append("its data is lost")
    if not restorable:
        notes.append("an archive cannot restore it")
    return effect + (f" ({'; '.join(notes)})" if notes else "")


# --------------------------------------------------------------------------------------------------
# References PostgreSQL does not track
# --------------------------------------------------------------------------------------------------


def mention_pattern(name: str) -> str:
    """A PostgreSQL regex matching ``name`` as a whole identifier (bare, quoted or schema-qualified)."""
    escaped = "".join(c if c.isalnum() or c == "_" else f"\\{c}" for c in name)
    return f"(^|[^[:alnum:]_$]){escaped}($|[^[:alnum:]_$])"


def find_untracked(
    conn: Connection, targets: Sequence[TableName], removed_functions: set[int], target_oids: set[int]
) -> list[UntrackedReference]:
    patterns = [mention_pattern(t.name) for t in targets]
    names = [t.qualified for t in targets]
    found: list[UntrackedReference] = []
    for r in queries.rows(conn, "untracked_function_references", patterns=patterns, targets=names):
        if r["function_oid"] in removed_functions:
            continue  # CASCADE removes it; it is listed there
        fname = f"{r['name']}({r['arguments']})"
        live_triggers = [t for t in (r["triggers"] or []) if t["table_oid"] not in target_oids]
        for trig in live_triggers:
            found.append(
                UntrackedReference(
                    kind="trigger",
                    name=trig["trigger"],
                    owner_table=trig["table"],
                    mentions=r["target"],
                    breaks=f"every write to {trig['table']} that fires it fails: trigger "
                    f"{trig['trigger']} calls {fname} ({r['language']}), whose body uses {r['target']}",
                )
            )
        for evt in r["event_triggers"] or []:
            found.append(
                UntrackedReference(
                    kind="event trigger",
                    name=evt["event_trigger"],
                    mentions=r["target"],
                    breaks=f"{evt['event']} commands fail: event trigger {evt['event_trigger']} calls "
                    f"{fname}, whose body uses {r['target']}",
                )
            )
        if not live_triggers and not r["event_triggers"]:
            found.append(
                UntrackedReference(
                    kind=r["kind"],
                    name=fname,
                    mentions=r["target"],
                    breaks=f"{r['kind']} {fname} ({r['language']}) fails when called: its body uses "
                    f"{r['target']}, which PostgreSQL does not track",
                )
            )
    if queries.one(conn, "relation_exists", name="cron.job")["present"]:
        for r in queries.rows(conn, "cron_job_references", patterns=patterns, targets=names):
            found.append(
                UntrackedReference(
                    kind="cron job",
                    name=str(r["jobname"] or f"job {r['jobid']}"),
                    mentions=r["target"],
                    breaks=f"pg_cron job {r['jobname'] or r['jobid']} ({r['schedule']}, database "
                    f"{r['database']}) fails on every run",
                )
            )
    return found


# --------------------------------------------------------------------------------------------------
# The step
# --------------------------------------------------------------------------------------------------


def statement_oids(migration: Migration, oids: dict[TableName, int]) -> list[list[int]]:
    """The oids each DROP statement of the migration drops (absent tables left out)."""
    result = []
    for stmt in migration.statements:
        present = [oids[t] for t in stmt.tables if t in oids]
        if present:
            result.append(present)
    return result


def untracked_references(
    conn: Connection,
    migration: Migration,
    oids: dict[TableName, int],
    removed_functions: set[int],
    allow: Sequence[str],
) -> list[UntrackedReference]:
    """``find_untracked`` for the present targets; each marked allowed if --allow-cascade names it."""
    untracked = find_untracked(
        conn, [t for t in migration.targets if t in oids], removed_functions, set(oids.values())
    )
    for ref in untracked:
        ref.allowed = any(a.strip() in ref.names for a in allow)
    return untracked


def analyse(
    conn: Connection,
    migration: Migration,
    oids: dict[TableName, int],
    allow: Sequence[str] = (),
) -> DependencyResult:
    """The dependency scan on an open connection (also used inside the drop transaction)."""
    queries.rows(conn, "catalog_session")
    removed, refused = predict_removal(conn, statement_oids(migration, oids))
    info = describe(conn, list(removed))
    owners = {row["owner_rel"] for row in info.values() if row["owner_rel"]}
    rel_names = {r["oid"]: r["qualified"] for r in queries.rows(conn, "relation_names", oids=sorted(owners))}
    cascade = classify(removed, info, rel_names, allow)
    functions = {a[1] for a in removed if info.get(a, {}).get("type") in ("function", "procedure")}
    untracked = untracked_references(conn, migration, oids, functions, allow)
    reasons = []
    for target, owner in refused:
        reasons.append(
            f"{info.get(target, {}).get('description', target)} belongs to "
            f"{describe(conn, [owner]).get(owner, {}).get('description', owner)}; PostgreSQL refuses to "
            "drop it on its own — drop the owning object instead"
        )
    for obj in cascade:
        if not obj.allowed:
            where = f" on {obj.owner_table}" if obj.owner_table else ""
            reasons.append(
                f"DROP … CASCADE would also remove {obj.kind} {obj.name}{where}: {obj.why}; "
                f"remove it first, or allow it with --allow-cascade {obj.name}"
            )
    for ref in untracked:
        if not ref.allowed:
            where = f" on {ref.owner_table}" if ref.owner_table else ""
            reasons.append(
                f"{ref.kind} {ref.name}{where} still uses {ref.mentions} (PostgreSQL does not track it): "
                f"{ref.breaks}; change it first, or allow it with --allow-cascade {ref.name.split('(')[0]}"
            )
    allowed_unused = [a for a in allow if not _allow_matches_any(a, cascade, untracked)]
    warnings = [f"--allow-cascade {a} matches nothing the drop would remove or break" for a in allowed_unused]
    return DependencyResult(
        cascade=cascade,
        untracked=untracked,
        addresses=list(removed),
        removed_total=len(removed),
        digest=removal_digest(row["description"] for row in info.values()),
        reasons=reasons,
        warnings=warnings,
    )


def depend_fingerprint(conn: Connection, addresses: Sequence[Address]) -> str:
    """A fingerprint of every pg_depend edge around the removal set (one cheap indexed query)."""
    return queries.one(
        conn, "depend_fingerprint", classids=[a[0] for a in addresses], objids=[a[1] for a in addresses]
    )["fingerprint"]


def recheck_functions(
    conn: Connection,
    migration: Migration,
    oids: dict[TableName, int],
    allow: Sequence[str],
    approved: DependencyResult,
    preflight: DependencyResult,
) -> list[str]:
    """Function bodies (which pg_depend does not track) searched again: what now mentions a target unapproved.

    Creating a function takes no lock on the tables it mentions, so no lock makes this search any
    surer: the drop runs it before taking its locks.
    """
    functions = {a[1] for a in preflight.addresses if a[0] == PG_PROC}
    untracked = untracked_references(conn, migration, oids, functions, allow)
    return unapproved_changes(approved, preflight.model_copy(update={"untracked": untracked}))


def recheck_edges(
    conn: Connection,
    migration: Migration,
    oids: dict[TableName, int],
    allow: Sequence[str],
    approved: DependencyResult,
    preflight: DependencyResult,
    preflight_fingerprint: str,
) -> tuple[DependencyResult, list[str], str]:
    """What DROP … CASCADE would remove now, against the approval, cheaply when nothing changed.

    If the dependency edges around the removal set are as they were at the preflight (whose full
    analysis already matched the approval), the walk would find the same set. Otherwise the full
    analysis runs. Returns (the removal set now, what is new in it, its edges' fingerprint).
    """
    if depend_fingerprint(conn, preflight.addresses) == preflight_fingerprint:
        return preflight, [], preflight_fingerprint
    now = analyse(conn, migration, oids, allow)
    return now, unapproved_changes(approved, now), depend_fingerprint(conn, now.addresses)


def unapproved_changes(approved: DependencyResult, now: DependencyResult) -> list[str]:
    """What ``now`` would remove or break that ``approved`` did not list (empty: nothing new)."""
    known = {o.identity for o in approved.cascade} | {f"{u.kind} {u.name}" for u in approved.untracked}
    changes = [f"new: {o.kind} {o.name}" for o in now.cascade if o.identity not in known]
    changes += [f"new: {u.kind} {u.name}" for u in now.untracked if f"{u.kind} {u.name}" not in known]
    changes += [r for r in now.reasons if not any(c in r for c in changes)]
    return changes


def _allow_matches_any(a: str, cascade: list[CascadeObject], untracked: list[UntrackedReference]) -> bool:
    a = a.strip()
    for obj in cascade:
        names = {obj.name, obj.identity, obj.name.split("(", 1)[0]}
        if obj.owner_table:
            names.add(f"{obj.owner_table}.{obj.name}")
        if a in names:
            return True
    return any(a in ref.names for ref in untracked)


def scan_dependencies(
    db: Database, migration: Migration, oids: dict[TableName, int], allow: Sequence[str] = ()
) -> DependencyResult:
    with connect(db) as conn:
        with conn.begin():
            conn.exec_driver_sql("SET TRANSACTION READ ONLY")
            return analyse(conn, migration, oids, allow)


def render(result: DependencyResult) -> str:
    lines = ["# Dependency scan", ""]
    lines.append(
        f"`DROP … CASCADE` removes {result.removed_total} objects in all; "
        f"{len(result.cascade)} of them lie outside the targets' own parts."
    )
    lines.append("")
    if result.cascade:
        lines.append("## Removed by CASCADE beyond the targets")
        lines.append(
            md_table(
                [o.model_dump() for o in result.cascade],
                ["kind", "name", "owner_table", "loses_data", "restorable", "why"],
            )
        )
    else:
        lines.append("Nothing outside the targets would be removed.")
    if result.untracked:
        lines.append("## References PostgreSQL does not track")
        rows = [r.model_dump() for r in result.untracked]
        lines.append(md_table(rows, ["kind", "name", "mentions", "breaks"]))
    else:
        lines.append("\nNo function, trigger or cron job body mentions the targets.")
    return "\n".join(lines)


@task(
    name="dependency-scan",
    retries=2,
    retry_delay_seconds=[1, 5],
    cache_policy=NO_CACHE,
    retry_condition_fn=lambda task, run, state: _transient(state),
)
def dependency_scan(
    db: Database,
    migration: Migration,
    oids: dict[TableName, int],
    allow: list[str],
    artifact_prefix: str,
) -> DependencyResult:
    """Everything DROP … CASCADE would remove, and the untracked references that would break."""
    result = scan_dependencies(db, migration, oids, allow)
    get_run_logger().info(
        "dependency scan: %d objects removed in all, %d beyond the targets, %d untracked references",
        result.removed_total,
        len(result.cascade),
        len(result.untracked),
    )
    publish_markdown(f"{artifact_prefix}-dependencies", render(result), "What DROP … CASCADE would remove")
    publish_table(
        f"{artifact_prefix}-cascade",
        [o.model_dump(exclude={"identity"}) for o in result.cascade],
        "Objects outside the targets that CASCADE would remove",
    )
    return result


def _transient(state) -> bool:
    from safedrop.errors import ConnectionFailed

    error = state.result(raise_on_failure=False)
    return isinstance(error, ConnectionFailed) and error.transient
