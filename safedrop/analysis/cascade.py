"""What the drop would remove beyond the targets and what it would break, classified for a person.

``analyse`` turns the catalog walk (``safedrop.pg.catalog``) into the objects a DBA would name — views,
foreign keys, policies, partitions, a column typed by a target's row — each allowed or not by
``--allow-cascade``, plus the references PostgreSQL does not track (plpgsql bodies, string-body SQL
functions, pg_cron jobs: a word-boundary search of function bodies, with the triggers that call
them). The drop reruns it, cheaply, under its lock (``Recheck``).

pg_cron keeps its jobs in one database of the server (``cron.database_name``, default ``postgres``).
When that is another database, its ``cron.job`` is read there over a second, read-only connection with
the same credentials; when that cannot be read, or row security hides other roles' jobs, the scan says
so in a warning — it never reports "no cron job" for jobs it could not see.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from pydantic import SecretStr
from sqlalchemy.engine import Connection

from safedrop.errors import SafedropError
from safedrop.migration import Migration, TableName
from safedrop.pg import queries
from safedrop.pg.catalog import (
    INTERNAL,
    ORIGINAL,
    PG_CLASS,
    PG_PROC,
    RELATION_KINDS,
    SILENT,
    Address,
    depend_fingerprint,
    describe,
    predict_removal,
    removal_digest,
    statement_oids,
)
from safedrop.pg.database import Database, error_line, reading
from safedrop.results import CascadeObject, DependencyResult, UntrackedReference

CRON_WARNING = "pg_cron jobs: "  # how the scan's warnings about pg_cron begin
CRON_READ_TIMEOUT_MS = 10_000  # the statement and lock timeouts of the read in pg_cron's database
CRON_CONNECT_TIMEOUT_S = "5"
CRON_DEFAULT_DATABASE = "postgres"  # pg_cron's default cron.database_name


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
        return RELATION_KINDS.get(info["relkind"], info["type"])
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


def _regex_escape(text: str) -> str:
    return "".join(c if c.isalnum() or c == "_" else f"\\{c}" for c in text)


def mention_pattern(name: str) -> str:
    """A PostgreSQL regex (for the case-sensitive ``~``) matching ``name`` as a whole identifier, bare or
    schema-qualified: unquoted in any case (PostgreSQL folds it: ``FROM Credit_Allocations``), or quoted
    as spelt (``"credit_allocations"``). A quoted ``"Credit_Allocations"`` is another table: no match."""
    unquoted = "".join(
        f"[{c.lower()}{c.upper()}]" if c.isascii() and c.isalpha() else _regex_escape(c) for c in name
    )
    quoted = _regex_escape('"' + name.replace('"', '""') + '"')
    return f'(^|[^[:alnum:]_$"]){unquoted}($|[^[:alnum:]_$])|{quoted}'


def find_untracked(
    conn: Connection,
    targets: Sequence[TableName],
    removed_functions: set[int],
    target_oids: set[int],
    warnings: list[str] | None = None,
) -> list[UntrackedReference]:
    """Function bodies and pg_cron jobs that mention a target; what could not be observed (pg_cron's
    jobs elsewhere) is added to ``warnings``."""
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
    found += cron_references(conn, patterns, names, warnings if warnings is not None else [])
    return found


def cron_references(
    conn: Connection, patterns: list[str], names: list[str], warnings: list[str]
) -> list[UntrackedReference]:
    """The pg_cron jobs that run in this database and mention a target: from ``cron.job`` here, else from
    the database ``cron.database_name`` names (a second connection: same credentials, read-only,
    bounded). Nothing when pg_cron is not loaded; a warning when its jobs cannot be seen.

    ``cron.database_name`` is a superuser-only setting: a role that may not read it, on a server where
    pg_cron is installed, looks in pg_cron's default database, ``postgres``.
    """
    where = queries.one(conn, "cron_location")
    here = where["here"]
    if where["present"]:
        savepoint = conn.begin_nested()  # a role without rights on cron.job must not end the scan
        try:
            found = _cron_jobs(conn, here, patterns, names, warnings)
        except sa.exc.DBAPIError as exc:
            savepoint.rollback()
            warnings.append(
                f"{CRON_WARNING}not observable from this database (cron.job could not be read: "
                f"{error_line(exc, _database_named(conn, here))}); check its jobs by hand"
            )
            return []
        savepoint.commit()
        return found
    if where["readable"]:
        home = where["cron_database"]
        if not home or home == here:
            return []  # pg_cron is not loaded on this server, or its extension was never created: no jobs
        return _cron_jobs_in(conn, home, here, patterns, names, warnings, guessed=False)
    if not where["installed"]:
        return []  # pg_cron is not installed on this server: no jobs
    if here == CRON_DEFAULT_DATABASE:
        warnings.append(
            f"{CRON_WARNING}not observable from this database (pg_cron is installed on this server, and "
            "this role may not read cron.database_name to find cron.job); check its jobs by hand"
        )
        return []
    return _cron_jobs_in(conn, CRON_DEFAULT_DATABASE, here, patterns, names, warnings, guessed=True)


def _cron_jobs_in(
    conn: Connection,
    home: str,
    here: str,
    patterns: list[str],
    names: list[str],
    warnings: list[str],
    *,
    guessed: bool,
) -> list[UntrackedReference]:
    """The jobs running in ``here`` read from ``cron.job`` in the database ``home`` (``guessed``: pg_cron's
    default, this role may not read the setting), or a warning saying why they cannot be."""
    elsewhere = _database_named(conn, home)
    lives = (
        f"this role may not read cron.database_name; pg_cron's default is database {home}"
        if guessed
        else f"cron.job lives in database {home}"
    )
    try:
        with reading(
            elsewhere, lock_timeout_ms=CRON_READ_TIMEOUT_MS, statement_timeout_ms=CRON_READ_TIMEOUT_MS
        ) as other:
            if queries.one(other, "cron_location")["present"]:
                return _cron_jobs(other, here, patterns, names, warnings)
            if not guessed:
                return []  # pg_cron is loaded, but CREATE EXTENSION pg_cron never ran there: no jobs
            why = "it has no cron.job"
    except (SafedropError, sa.exc.DBAPIError) as exc:
        why = str(exc) if isinstance(exc, SafedropError) else error_line(exc, elsewhere)
    warnings.append(
        f"{CRON_WARNING}not observable from this database ({lives}: {why}); check there by hand that no "
        f"job running in {here} uses the targets"
    )
    return []


def _database_named(conn: Connection, name: str) -> Database:
    """The database ``name`` on this connection's server, with its credentials and a short connect
    timeout (unless the URL sets its own)."""
    url = conn.engine.url.set(database=name)
    if "connect_timeout" not in url.query:
        url = url.update_query_dict({"connect_timeout": CRON_CONNECT_TIMEOUT_S})
    return Database(SecretStr(url.render_as_string(hide_password=False)), f"pg_cron's database {name}")


def _cron_jobs(
    conn: Connection, database: str, patterns: list[str], names: list[str], warnings: list[str]
) -> list[UntrackedReference]:
    """The jobs of ``cron.job`` on this connection that run in ``database`` and mention a target; a
    warning when row security shows this role only its own."""
    rows = queries.rows(conn, "cron_job_references", patterns=patterns, targets=names, database=database)
    if not queries.one(conn, "cron_job_visibility")["sees_all"]:
        warnings.append(
            f"{CRON_WARNING}only this role's own jobs are visible (row security on cron.job hides the other "
            "roles'); run as a superuser, or check cron.job for the other roles' jobs by hand"
        )
    return [
        UntrackedReference(
            kind="cron job",
            name=str(r["jobname"] or f"job {r['jobid']}"),
            mentions=r["target"],
            breaks=f"pg_cron job {r['jobname'] or r['jobid']} ({r['schedule']}, database "
            f"{r['database']}) fails on every run",
        )
        for r in rows
    ]


# --------------------------------------------------------------------------------------------------
# The step
# --------------------------------------------------------------------------------------------------


def untracked_references(
    conn: Connection,
    migration: Migration,
    oids: dict[TableName, int],
    removed_functions: set[int],
    allow: Sequence[str],
    warnings: list[str] | None = None,
) -> list[UntrackedReference]:
    """``find_untracked`` for the present targets; each marked allowed if --allow-cascade names it."""
    untracked = find_untracked(
        conn, [t for t in migration.targets if t in oids], removed_functions, set(oids.values()), warnings
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
    unobserved: list[str] = []
    untracked = untracked_references(conn, migration, oids, functions, allow, unobserved)
    reasons = []
    for target, owner in refused:
        reasons.append(
            f"{info.get(target, {}).get('description', target)} belongs to "
            f"{describe(conn, [owner]).get(owner, {}).get('description', owner)}; PostgreSQL refuses to "
            "drop it on its own — drop the owning object instead"
        )
    reasons += [
        f"DROP … CASCADE would also remove {o.kind} {o.name}{_on(o.owner_table)}: {o.why}; "
        f"remove it first, or allow it with --allow-cascade {o.name}"
        for o in cascade
        if not o.allowed
    ]
    reasons += [
        f"{u.kind} {u.name}{_on(u.owner_table)} still uses {u.mentions} (PostgreSQL does not track it): "
        f"{u.breaks}; change it first, or allow it with --allow-cascade {u.name.split('(')[0]}"
        for u in untracked
        if not u.allowed
    ]
    allowed_unused = [a for a in allow if not _allow_matches_any(a, cascade, untracked)]
    warnings = unobserved + [
        f"--allow-cascade {a} matches nothing the drop would remove or break" for a in allowed_unused
    ]
    return DependencyResult(
        cascade=cascade,
        untracked=untracked,
        addresses=list(removed),
        removed_total=len(removed),
        digest=removal_digest(row["description"] for row in info.values()),
        reasons=reasons,
        warnings=warnings,
    )


def _on(owner_table: str | None) -> str:
    return f" on {owner_table}" if owner_table else ""


@dataclass(frozen=True)
class Recheck:
    """What the drop rechecks against under its lock: the approved scan and the one it made just
    before its first attempt (which matched the approval), for this migration and these targets."""

    migration: Migration
    oids: dict[TableName, int]
    allow: Sequence[str]
    approved: DependencyResult
    preflight: DependencyResult
    preflight_fingerprint: str  # the pg_depend edges around the preflight's removal set

    def functions(self, conn: Connection) -> list[str]:
        """Function bodies (which pg_depend does not track) searched again: what now mentions a target
        unapproved. Creating a function takes no lock on the tables it mentions, so no lock makes this
        search any surer: the drop runs it before taking its locks."""
        functions = {a[1] for a in self.preflight.addresses if a[0] == PG_PROC}
        untracked = untracked_references(conn, self.migration, self.oids, functions, self.allow)
        return unapproved_changes(self.approved, self.preflight.model_copy(update={"untracked": untracked}))

    def edges(self, conn: Connection) -> tuple[DependencyResult, list[str], str]:
        """What DROP … CASCADE would remove now, against the approval, cheaply when nothing changed.

        If the dependency edges around the removal set are as they were at the preflight (whose full
        analysis already matched the approval), the walk would find the same set. Otherwise the full
        analysis runs. Returns (the removal set now, what is new in it, its edges' fingerprint).
        """
        if depend_fingerprint(conn, self.preflight.addresses) == self.preflight_fingerprint:
            return self.preflight, [], self.preflight_fingerprint
        now = analyse(conn, self.migration, self.oids, self.allow)
        return now, unapproved_changes(self.approved, now), depend_fingerprint(conn, now.addresses)


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
