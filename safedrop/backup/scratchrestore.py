"""Proving an archive by restoring it: the definitions and the targets' rows into a scratch database,
compared with what the dump's snapshot counted.

This module provides:

- ``require_createdb(conn, role)``: ``BackupFailed`` when the role may not create a scratch database;
- ``scratch_database(db)``: a new empty database on the same server, dropped afterwards even on failure;
- ``verify_by_restore(…)``: ``pg_restore --section=pre-data``, then only the targets' TABLE DATA and the
  removed sequences' values, then each row count, checksum and sequence compared with the manifest's
  (``BackupFailed`` naming every difference).
"""

from __future__ import annotations

import secrets
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from psycopg2 import sql
from sqlalchemy.engine import Connection

from safedrop.backup.archive import TocEntry
from safedrop.backup.dumpplan import DumpPlan
from safedrop.errors import DID_NOT_RUN, BackupFailed
from safedrop.migration import TableName
from safedrop.pg import queries
from safedrop.pg.catalog import PG_CLASS
from safedrop.pg.checksums import checksum_methods, pin_text_settings, sequence_states, table_checksums
from safedrop.pg.database import Database, connect, database_from_url, execute_composed
from safedrop.pg.pgtools import PgTools
from safedrop.pg.processes import ToolFailed, dbname_arg, run, stderr_summary, tool_env
from safedrop.report.progress import Progress
from safedrop.results import SequenceState, TableChecksum


def database_named(db: Database, name: str) -> Database:
    """The same server, role and password, another database."""
    url = db.url.set(database=name)
    return database_from_url(url.render_as_string(hide_password=False), db.source)


def require_createdb(conn: Connection, current_user: str) -> None:
    if not queries.one(conn, "role_can_create_database")["can_create"]:
        raise BackupFailed(
            f"verify_restore needs a role that may create a scratch database: role {current_user} has "
            f"no CREATEDB; grant it (ALTER ROLE {current_user} CREATEDB) or turn verify_restore off; "
            f"{DID_NOT_RUN}"
        )


@contextmanager
def scratch_database(db: Database, *, prefix: str = "safedrop_verify_") -> Iterator[Database]:
    """A new empty database ``<prefix><random>`` on the same server, dropped afterwards even on failure."""
    name = f"{prefix}{secrets.token_hex(6)}"
    engine = db.engine(isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            execute_composed(
                conn, sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(name))
            )
        try:
            yield database_named(db, name)
        finally:
            with engine.connect() as conn:
                version = int(conn.exec_driver_sql("SHOW server_version_num").scalar())
                force = " WITH (FORCE)" if version >= 130000 else ""
                execute_composed(
                    conn, sql.SQL("DROP DATABASE IF EXISTS {}" + force).format(sql.Identifier(name))
                )
    finally:
        engine.dispose()


def _restore_failure(failed: ToolFailed, db: Database, what: str) -> str:
    if failed.kind == "timeout":
        return f"{what} did not finish in time"
    return f"{what} failed: {stderr_summary(failed.stderr, db) or f'exit code {failed.exit_code}'}"


def _data_entries(entries: list[TocEntry], plan: DumpPlan) -> list[TocEntry]:
    """The TABLE DATA of the targets (and everything below them) and the SEQUENCE SET of the removed
    sequences."""
    data_oids = {r["oid"] for r in plan.tables if r["target"]}
    seq_ids = {
        e.dump_id
        for e in entries
        if e.desc == "SEQUENCE" and any(o.classid == PG_CLASS and o.objid == e.oid for o in plan.removed)
    }
    return [
        e
        for e in entries
        if (e.desc == "TABLE DATA" and e.oid in data_oids)
        or (e.desc == "SEQUENCE SET" and any(d in seq_ids for d in e.deps))
    ]


def _differences(
    expected: list[TableChecksum],
    found: dict[TableName, tuple[int, str]],
    sequences: list[SequenceState],
    seqs: dict[str, SequenceState],
) -> list[str]:
    problems = []
    for t in expected:
        rows, checksum = found.get(TableName(t.schema_name, t.table_name), (None, None))
        if rows != t.rows or checksum != t.checksum:
            problems.append(
                f"{t.name} restored {rows} rows (checksum {checksum}), the database had {t.rows} (checksum "
                f"{t.checksum})"
            )
    for s in sequences:
        got = seqs.get(s.name)
        if got is None or (got.last_value, got.is_called) != (s.last_value, s.is_called):
            problems.append(
                f"sequence {s.name} restored as {got and got.last_value}, expected {s.last_value}"
            )
    return problems


def verify_by_restore(
    db: Database,
    tools: PgTools,
    archive: Path | str,
    entries: list[TocEntry],
    plan: DumpPlan,
    expected: list[TableChecksum],
    sequences: list[SequenceState],
    *,
    timeout_s: float = 3600,
    progress: Progress | None = None,
    stream: Callable[[], Iterable[bytes]] | None = None,
) -> None:
    """Restore the definitions and the targets' rows into a scratch database; compare with the manifest.

    Runs ``pg_restore --section=pre-data`` (every definition, no constraints or indexes, no owners or
    grants), then a list holding only the TABLE DATA of the targets (and everything below them) and the
    SEQUENCE SET of the sequences the drop removes. Raises BackupFailed on any difference.

    ``stream``: the archive's bytes, read afresh for each pass (an object in the store, ``archive`` its
    URI) — pg_restore reads them from stdin; the data list keeps the archive's order, as a stream needs.
    """
    reporter = progress or Progress("verify_restore")
    kept = f"the archive {archive} is kept for inspection but did not restore faithfully; {DID_NOT_RUN}"
    with scratch_database(db) as scratch, tempfile.TemporaryDirectory(prefix="safedrop-verify-") as tmp:
        env = {**tool_env(), **scratch.libpq_env("pg_restore")}
        listing = Path(tmp) / "data.list"
        listing.write_text("".join(e.line + "\n" for e in _data_entries(entries, plan)))
        steps = [
            (
                "restoring the definitions",
                ["--section=pre-data", "--no-owner", "--no-acl", "--exit-on-error"],
            ),
            (
                "restoring the targets' rows",
                [f"--use-list={listing}", "--exit-on-error", "--no-owner", "--no-acl"],
            ),
        ]
        for index, (what, args) in enumerate(steps):
            reporter.update(index / len(steps), what)
            target = dbname_arg(scratch.url.database or "")
            try:
                source = [] if stream is not None else [str(archive)]
                run(
                    tools.pg_restore,
                    [*args, "--no-password", target, *source],
                    env=env,
                    timeout_s=timeout_s,
                    stdin=stream() if stream is not None else None,
                )
            except ToolFailed as exc:
                if exc.kind == "not-started":
                    raise
                failure = _restore_failure(exc, scratch, what + " into a scratch database")
                raise BackupFailed(f"verify_restore: {failure}; {kept}") from None
        with connect(scratch) as conn:
            with conn.begin():
                pin_text_settings(conn)
                tables = [TableName(t.schema_name, t.table_name) for t in expected]
                found = table_checksums(conn, tables, methods=checksum_methods(expected))
                seqs = {s.name: s for s in sequence_states(conn, sorted(set(plan.sequences)))}
        reporter.finish("compared")
    problems = _differences(expected, found, sequences, seqs)
    if problems:
        raise BackupFailed(f"verify_restore: {'; '.join(problems)}; {kept}")
