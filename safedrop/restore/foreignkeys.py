"""The restore's foreign keys: read from the archive, added NOT VALID in one short lock-safe transaction,
then validated one by one while writes go on.

Adding a key with validation holds SHARE ROW EXCLUSIVE on both of its tables for a whole scan of the
referencing one — writers of ``credits`` would wait for it. ``NOT VALID`` makes that lock last
milliseconds; ``VALIDATE CONSTRAINT`` then scans holding only SHARE UPDATE EXCLUSIVE (writes go on). A
key that rows violate stays NOT VALID (still enforced for new rows) and is named with what to do.

This module provides:

- ``ForeignKey``: a key as the archive defines it, and its state in the database;
- ``parse_foreign_keys`` / ``read_foreign_keys``: the keys (and comments on them) in pg_restore's SQL;
- ``foreign_key_states(conn, keys)``: present? validated? and the statement that validates each;
- ``add_foreign_keys`` / ``validate_foreign_key``: the two lock-safe steps, each returning outcomes;
- ``key_state`` / ``key_problems``: how the verification names a key, and what is wrong with it.
"""

from __future__ import annotations

import re
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import sqlalchemy as sa
from pglast import ast, enums, parse_sql
from pglast.parser import ParseError
from psycopg2 import sql
from sqlalchemy.engine import Connection

from safedrop.backup.archive import TocEntry
from safedrop.errors import NOTHING_CHANGED, ConnectionFailed, RestoreRefused
from safedrop.migration import TableName
from safedrop.pg import queries
from safedrop.pg.database import Database, connect, error_line, execute_composed
from safedrop.pg.locks import describe_blockers
from safedrop.pg.lockschedule import (
    LockSchedule,
    gave_up,
    is_retryable,
    lock_waits,
    run_lock_safe,
    set_local_timeouts,
)
from safedrop.pg.pgtools import PgTools
from safedrop.pg.processes import ToolFailed, run, stderr_summary, tool_env
from safedrop.restore.tocfilter import split_foreign_keys
from safedrop.results import ForeignKeyOutcome, RestoreResult
from safedrop.runlog import run_logger

FOREIGN_KEY_VIOLATION = "23503"
_PSQL_META = re.compile(r"^\\(?:un)?restrict [A-Za-z0-9]+$", re.MULTILINE)


@dataclass(frozen=True)
class ForeignKey:
    """A foreign key the restore puts back, as the archive defines it, and its state in the database."""

    table: TableName  # the referencing table
    name: str
    references: TableName
    statement: str  # ALTER TABLE … ADD CONSTRAINT … FOREIGN KEY …, as pg_restore prints it (no ';')
    valid: bool  # validated when it was dumped (pg_dump writes NOT VALID for a key that was not)
    comments: tuple[str, ...] = ()  # COMMENT ON CONSTRAINT statements, as pg_restore prints them
    present: bool = False  # it exists already (a re-run): only validated
    validated: bool = False
    validate_command: str = ""  # ALTER TABLE … VALIDATE CONSTRAINT …, quoted by the server
    survivor: bool = False  # it locks a table that survived the drop (writers wait for its lock)

    @property
    def label(self) -> str:
        return f"{self.name} on {self.table.qualified}"

    def add_statement(self, *, validate: bool) -> str:
        """The archive's statement, with ``NOT VALID`` unless ``validate`` (or it was not valid anyway)."""
        return self.statement if validate or not self.valid else f"{self.statement} NOT VALID"


def _table(node) -> TableName:
    if not node.schemaname:  # pg_dump qualifies every name (since 10.3)
        raise ValueError(f"unqualified table {node.relname}")
    return TableName(node.schemaname, node.relname)


def _foreign_key(stmt, text: str) -> ForeignKey | None:
    """The ForeignKey an ``ALTER TABLE … ADD CONSTRAINT … FOREIGN KEY`` statement adds, else None."""
    if not isinstance(stmt, ast.AlterTableStmt) or len(stmt.cmds or ()) != 1:
        return None
    cmd = stmt.cmds[0]
    constraint = cmd.def_
    if cmd.subtype != enums.AlterTableType.AT_AddConstraint or not isinstance(constraint, ast.Constraint):
        return None
    if constraint.contype != enums.ConstrType.CONSTR_FOREIGN or not constraint.conname:
        return None
    return ForeignKey(
        table=_table(stmt.relation),
        name=constraint.conname,
        references=_table(constraint.pktable),
        statement=text,
        valid=not constraint.skip_validation,
    )


def parse_foreign_keys(script: str) -> list[ForeignKey]:
    """The foreign keys (and the comments on them) in pg_restore's SQL for FK CONSTRAINT entries.

    Read with PostgreSQL's own parser; the statements are kept as pg_restore printed them (every name
    qualified and quoted by pg_dump). Anything but pg_restore's session settings, such ALTER TABLEs and
    COMMENT ON CONSTRAINT raises ValueError.
    """
    text = _PSQL_META.sub("", script)  # \restrict <key> / \unrestrict <key>: psql's, not SQL
    keys: dict[tuple[str, str, str], ForeignKey] = {}
    comments: list[tuple[tuple[str, ...], str]] = []
    for raw in parse_sql(text):
        end = raw.stmt_location + raw.stmt_len if raw.stmt_len else len(text)  # 0: the rest of the text
        stmt, source = raw.stmt, text[raw.stmt_location : end].strip().removesuffix(";").rstrip()
        if isinstance(stmt, ast.VariableSetStmt | ast.SelectStmt):
            continue  # SET …, SELECT pg_catalog.set_config('search_path', '', false): never executed
        if isinstance(stmt, ast.CommentStmt) and stmt.objtype == enums.ObjectType.OBJECT_TABCONSTRAINT:
            comments.append((tuple(part.sval for part in stmt.object), source))
            continue
        key = _foreign_key(stmt, source)
        if key is None:
            raise ValueError(f"unexpected statement {source[:80]!r}")
        keys[(key.table.schema, key.table.name, key.name)] = key
    for address, source in comments:
        if address not in keys:
            raise ValueError(f"a comment on an unknown constraint: {source[:80]!r}")
        key = keys[address]  # type: ignore[index]
        keys[address] = replace(key, comments=(*key.comments, source))  # type: ignore[index]
    return list(keys.values())


def read_foreign_keys(
    db: Database, archive: Path, tools: PgTools, entries: list[TocEntry]
) -> list[ForeignKey]:
    """The foreign keys among ``entries``, from the archive (``pg_restore --file=-``: nothing executed)."""
    _, later = split_foreign_keys(entries)
    if not later:
        return []
    with tempfile.TemporaryDirectory(prefix="safedrop-keys-") as tmp:
        listing = Path(tmp) / "keys.list"
        listing.write_text("".join(e.line + "\n" for e in later))
        try:
            args = ["--file=-", f"--use-list={listing}", str(archive)]
            script = run(tools.pg_restore, args, env=tool_env(), timeout_s=300)
        except ToolFailed as exc:
            detail = stderr_summary(exc.stderr, db) or str(exc)
            raise RestoreRefused(
                f"pg_restore cannot print the foreign keys of {archive} ({detail}); {NOTHING_CHANGED}"
            ) from None
    try:
        return parse_foreign_keys(script)
    except (ParseError, ValueError) as exc:
        raise RestoreRefused(
            f"the foreign keys in {archive} do not read as foreign keys ({exc}); {NOTHING_CHANGED}"
        ) from None


def _key_rows(conn: Connection, keys: list[ForeignKey]) -> list[dict]:
    return queries.rows(
        conn,
        "foreign_key_states",
        schemas=[k.table.schema for k in keys],
        tables=[k.table.name for k in keys],
        names=[k.name for k in keys],
    )


def foreign_key_states(conn: Connection, keys: list[ForeignKey]) -> list[ForeignKey]:
    """``keys`` with their state now: present, validated; and the statement that validates each."""
    if not keys:
        return []
    return [
        replace(k, present=r["present"], validated=r["validated"], validate_command=r["validate_command"])
        for k, r in zip(keys, _key_rows(conn, keys), strict=True)
    ]


def _key_order(keys: list[ForeignKey], rotation: int) -> list[ForeignKey]:
    """The keys that lock a surviving table first, rotated by ``rotation`` so each gets the one long
    lock wait of an attempt in turn (``run_lock_safe``: the later ones lock NOWAIT)."""
    hot = [k for k in keys if k.survivor]
    if hot:
        hot = hot[rotation % len(hot) :] + hot[: rotation % len(hot)]
    return hot + [k for k in keys if not k.survivor]


def _key_statements(key: ForeignKey, partitioned: set[TableName]) -> list[sql.Composable]:
    """The key NOT VALID, with the comments on it. PostgreSQL < 18 cannot add a NOT VALID foreign key
    to a partitioned table: that one is validated right away."""
    add = sql.SQL(key.add_statement(validate=key.table in partitioned))
    return [add, *(sql.SQL(comment) for comment in key.comments)]


def _not_added(keys: list[ForeignKey], why: str) -> list[ForeignKeyOutcome]:
    detail = (
        f"{why}; the tables are back without it — once that is resolved, re-run the restore: it adds "
        "only what is missing"
    )
    return [ForeignKeyOutcome(name=k.label, state="missing", detail=detail) for k in keys]


def _add_once(
    db: Database,
    keys: list[ForeignKey],
    attempt: int,
    timeout_ms: int,
    tables: dict[TableName, dict],
    short_ms: int,
    statement_timeout_s: int,
    pids: list[int],
) -> None:
    """One attempt at adding every key in ONE transaction (the first key's lock waits, the later ones'
    NOWAIT); its session's pid goes into ``pids``. Raises sa.exc.DBAPIError (a lock timeout: retry)
    and ConnectionFailed."""
    partitioned = {t for t, r in tables.items() if r["relkind"] == "p"}
    first, *later = _key_order(keys, attempt - 1)
    later_tables = sorted(
        {t for k in later for t in (k.table, k.references)} - {first.table, first.references}
    )
    waits = lock_waits(timeout_ms, 1 + len(later_tables), short_ms)
    with connect(db) as conn:
        with conn.begin():
            pids.append(conn.exec_driver_sql("SELECT pg_backend_pid()").scalar())
            queries.rows(conn, "restore_session_settings", statement_timeout=f"{statement_timeout_s}s")
            run_lock_safe(
                conn,
                _key_statements(first, partitioned),
                waits[0],
                {t: tables[t]["oid"] for t in later_tables if tables.get(t) and tables[t]["oid"]},
                sum(waits[1:]) or short_ms,
                [s for k in later for s in _key_statements(k, partitioned)],
                mode="SHARE ROW EXCLUSIVE",  # what ADD FOREIGN KEY takes on both tables
            )


def add_foreign_keys(
    db: Database,
    targets: set[TableName],
    keys: list[ForeignKey],
    *,
    schedule: LockSchedule,
    statement_timeout_s: int,
) -> list[ForeignKeyOutcome]:
    """Every key NOT VALID, in ONE short transaction, lock-safe: without the scan, SHARE ROW EXCLUSIVE on
    both tables of a key (writers of ``credits`` wait) lasts milliseconds. All keys go in, or none:
    returns an outcome for each key that is not there (empty when all are). ``targets``: the restored
    tables (a key on any other table locks a survivor, and goes first)."""
    if not keys:
        return []
    names = sorted({t for k in keys for t in (k.table, k.references)})
    with connect(db) as conn:
        rows = queries.rows(
            conn, "table_status", schemas=[t.schema for t in names], names=[t.name for t in names]
        )
        tables = {TableName(r["schema_name"], r["table_name"]): r for r in rows}
        short_ms = queries.one(conn, "deadlock_timeout")["deadlock_timeout_ms"] // 2
        conn.rollback()
    keys = [replace(k, survivor=bool({k.table, k.references} - targets)) for k in keys]
    attempts, pids = 0, []
    for attempt, timeout_ms in schedule.attempts():
        attempts += 1
        try:
            _add_once(db, keys, attempt, timeout_ms, tables, short_ms, statement_timeout_s, pids)
            return []
        except sa.exc.DBAPIError as exc:
            if not is_retryable(exc):
                return _not_added(keys, f"adding it failed ({error_line(exc, db)})")
            run_logger().info(
                "foreign keys: a lock wait ran out at %d ms (attempt %d); rolled back, retrying",
                timeout_ms,
                attempt,
            )
        except ConnectionFailed as exc:
            return _not_added(keys, str(exc))
    oids = [r["oid"] for r in tables.values() if r["oid"]]
    blockers = describe_blockers(db, oids, pids[-1:])
    return _not_added(keys, gave_up("adding it", attempts, schedule, blockers))


def _invalid(exc: sa.exc.DBAPIError, key: ForeignKey, db: Database) -> str:
    if getattr(exc.orig, "pgcode", None) == FOREIGN_KEY_VIOLATION:
        detail = (getattr(getattr(exc.orig, "diag", None), "message_detail", None) or "").strip().rstrip(".")
        return (
            f"rows violate it ({detail or error_line(exc, db)}); correct or delete them, then run "
            f"{key.validate_command} (or re-run the restore)"
        )
    return f"validating it failed ({error_line(exc, db)}); once that is fixed, run {key.validate_command}"


def validate_foreign_key(
    db: Database, key: ForeignKey, *, schedule: LockSchedule, statement_timeout_s: int
) -> ForeignKeyOutcome:
    """``VALIDATE CONSTRAINT`` in its own transaction, lock-safe: it scans holding SHARE UPDATE EXCLUSIVE
    on the table and ROW SHARE on the one it references, so writes to both go on. A key that rows
    violate stays NOT VALID (still enforced for new writes), and the outcome says which rows and what
    to do."""
    started = time.monotonic()
    statement = sql.SQL("ALTER TABLE {} VALIDATE CONSTRAINT {}").format(
        sql.Identifier(key.table.schema, key.table.name), sql.Identifier(key.name)
    )
    attempts, pid = 0, None
    for attempt, timeout_ms in schedule.attempts():
        attempts += 1
        try:
            with connect(db) as conn:
                with conn.begin():
                    pid = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar()
                    set_local_timeouts(conn, timeout_ms, statement_timeout_s)
                    execute_composed(conn, statement)
            return ForeignKeyOutcome(
                name=key.label, state="validated", duration_s=round(time.monotonic() - started, 3)
            )
        except sa.exc.DBAPIError as exc:
            if not is_retryable(exc):
                return ForeignKeyOutcome(name=key.label, state="not valid", detail=_invalid(exc, key, db))
            run_logger().info(
                "validating %s: a lock wait ran out at %d ms (attempt %d); retrying",
                key.label,
                timeout_ms,
                attempt,
            )
        except ConnectionFailed as exc:
            return ForeignKeyOutcome(name=key.label, state="not valid", detail=f"validating it failed: {exc}")
    with connect(db) as conn:
        [row] = _key_rows(conn, [key])
    oids = [o for o in (row["table_oid"], row["references_oid"]) if o]
    blockers = describe_blockers(db, oids, [pid] if pid else [])
    return ForeignKeyOutcome(
        name=key.label,
        state="not valid",
        detail=f"{gave_up('validating it', attempts, schedule, blockers)}; once it is done, run "
        f"{key.validate_command} (or re-run the restore)",
    )


def key_state(key: ForeignKey) -> str:
    if not key.present:
        return "missing"
    if key.validated:
        return "validated"
    return "NOT VALID" if key.valid else "NOT VALID, as in the backup"


def key_problems(keys: list[ForeignKey], restored: RestoreResult | None) -> list[str]:
    """Each foreign key that is missing, or NOT VALID though the backup had it validated: why, what to do."""
    why = {o.name: o.detail for o in (restored.foreign_keys if restored else []) if o.detail}
    problems = []
    for k in keys:
        if not k.present:
            problems.append(f"foreign key {k.label} is missing: {why.get(k.label, 'it was not added')}")
        elif k.valid and not k.validated:
            problems.append(
                f"foreign key {k.label} is NOT VALID: {why.get(k.label, f'run {k.validate_command}')}"
            )
    return problems
