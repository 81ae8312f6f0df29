"""Rehearsal (optional, ``--rehearse``): prove the CASCADE prediction on a scratch copy.

Copies the database's schema (``pg_dump --schema-only --lock-wait-timeout``: it never queues behind a
lock for longer than the lock-wait budget) into a scratch database on the same server,
predicts the removal set there from the catalogs, then lets PostgreSQL really run the migration in a
transaction that is rolled back while a ``sql_drop`` event trigger records every dropped object, and
compares the two object for object. The production database is only read (by pg_dump). Needs a
superuser (event triggers, CREATE DATABASE); the scratch database is always dropped afterwards.
"""

from __future__ import annotations

import secrets
import tempfile
from pathlib import Path

from psycopg2 import sql
from pydantic import SecretStr

from safedrop.backup.pgdump import dump_failure
from safedrop.errors import PrecheckStop, UsageError
from safedrop.migration import Migration
from safedrop.pg.catalog import describe, predict_removal, rehearse, statement_oids, table_status
from safedrop.pg.database import Database, connect, execute_composed
from safedrop.pg.pgtools import find_pg_dump
from safedrop.pg.processes import ToolFailed, run, tool_env
from safedrop.report.artifacts import md_list, publish_markdown
from safedrop.results import StepResult
from safedrop.runlog import run_logger
from safedrop.steps import step


class RehearsalResult(StepResult):
    predicted: int
    removed_by_server: int
    missing: list[str]  # the server removed them, the prediction did not say so
    extra: list[str]  # predicted, but the server kept them


def _admin(db: Database, statement: sql.Composable) -> None:
    engine = db.engine(isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            execute_composed(conn, statement)
    finally:
        engine.dispose()


def _scratch(db: Database, name: str) -> Database:
    return Database(
        SecretStr(db.url.set(database=name).render_as_string(hide_password=False)), "scratch copy"
    )


def rehearse_on_copy(
    db: Database, migration: Migration, server_version_num: int, *, lock_wait_s: float = 120
) -> RehearsalResult:
    """``lock_wait_s``: how long the schema dump may wait for each table's lock (``--lock-wait-timeout``;
    a schema-only dump locks every table too) before the run stops, naming who holds it."""
    with connect(db) as conn:
        superuser = conn.exec_driver_sql(
            "SELECT rolsuper FROM pg_roles WHERE rolname = current_user"
        ).scalar()
    if not superuser:
        raise UsageError(
            "--rehearse needs a superuser (it creates a scratch database and an event trigger); "
            "run the rehearsal as one, or drop --rehearse"
        )
    tools = find_pg_dump(server_version_num)
    name = f"safedrop_rehearsal_{secrets.token_hex(4)}"
    _admin(db, sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        with tempfile.TemporaryDirectory(prefix="safedrop-rehearsal-") as tmp:
            schema = Path(tmp) / "schema.dump"
            env = {**tool_env(), **db.libpq_env("rehearsal")}
            lock_wait_ms = max(1, int(lock_wait_s * 1000))
            dump = ["--schema-only", "--format=custom", f"--file={schema}", "--no-password"]
            dump.append(f"--lock-wait-timeout={lock_wait_ms}ms")
            try:
                run(tools.pg_dump, dump, env=env, timeout_s=600)
            except ToolFailed as exc:
                if exc.kind not in ("exit", "signal"):
                    raise
                said = dump_failure(exc, db, lock_wait_ms)  # a lock it could not get names the holder
                raise PrecheckStop([f"could not copy the schema for the rehearsal: {said}"]) from None
            try:
                run(
                    tools.pg_restore,
                    ["--exit-on-error", "--no-password", f"--dbname={name}", str(schema)],
                    env=env,
                    timeout_s=600,
                )
            except ToolFailed as exc:
                if exc.kind not in ("exit", "signal"):  # pg_restore failed
                    raise
                first = exc.stderr.strip().splitlines()[:1]
                raise PrecheckStop(
                    [f"could not copy the schema for the rehearsal: {' '.join(first)}"]
                ) from None
        copy = _scratch(db, name)
        with connect(copy) as conn:
            rows = table_status(conn, migration.targets)
            oids = {t: r["oid"] for t, r in zip(migration.targets, rows, strict=True) if r["oid"]}
            removed, _ = predict_removal(conn, statement_oids(migration, oids))
            conn.rollback()
            truth = rehearse(conn, migration)
            info = describe(conn, list(set(removed) | truth))
    finally:
        _admin(db, sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
    label = {a: info.get(a, {}).get("description", str(a)) for a in set(removed) | truth}
    missing = sorted(label[a] for a in truth - set(removed))
    extra = sorted(label[a] for a in set(removed) - truth)
    reasons = []
    if missing or extra:
        reasons.append(
            f"the CASCADE prediction differs from PostgreSQL's own rehearsal (missing {missing[:5]}, extra "
            f"{extra[:5]}); nothing was changed — please report this with the rehearsal artifact"
        )
    return RehearsalResult(
        predicted=len(removed), removed_by_server=len(truth), missing=missing, extra=extra, reasons=reasons
    )


def render(result: RehearsalResult) -> str:
    verdict = "matches" if not (result.missing or result.extra) else "DIFFERS FROM"
    text = (
        f"# Rehearsal on a scratch copy\n\nThe prediction ({result.predicted} objects) {verdict} what "
        f"PostgreSQL removed when the migration ran and was rolled back ({result.removed_by_server}).\n"
    )
    if result.missing:
        text += "\n## Removed by the server, not predicted\n\n" + md_list(result.missing)
    if result.extra:
        text += "\n## Predicted, not removed by the server\n\n" + md_list(result.extra)
    return text


@step("rehearsal")
def rehearsal(
    db: Database,
    migration: Migration,
    server_version_num: int,
    artifact_prefix: str,
    *,
    lock_wait_s: float = 120,
) -> RehearsalResult:
    """Prove the CASCADE prediction against the server on a scratch copy of the schema (its dump waits
    at most ``lock_wait_s`` for each table's lock)."""
    result = rehearse_on_copy(db, migration, server_version_num, lock_wait_s=lock_wait_s)
    run_logger().info(
        "rehearsal: predicted %d, server removed %d", result.predicted, result.removed_by_server
    )
    publish_markdown(
        f"{artifact_prefix}-rehearsal", render(result), "CASCADE prediction vs the server's rehearsal"
    )
    return result
