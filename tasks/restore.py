"""Restore: put back exactly what a safedrop drop removed, from the archive its backup step wrote.

What goes back comes from the archive's manifest (``<archive>.manifest.json``, written by
``tasks/backup.py`` in the dump's own snapshot): every catalog object the drop removes — the targets
with their rows, sequences (and their values), defaults, constraints, indexes, triggers, policies,
rules, row security, partitions, grants and comments, and what CASCADE took from elsewhere (foreign
keys on surviving tables, views, materialized views, functions) — identified by the oids the archive
itself records. The archive's ``pg_restore --list`` is filtered down to those entries (plus the
comments, grants, sequence values and partition attachments that depend on them).

Without queueing production behind it, in three steps:

1. Everything but the foreign keys: ``pg_restore --single-transaction --exit-on-error --use-list``,
   all of it or nothing. pg_restore sets its session's ``lock_timeout`` to 0 itself (PGOPTIONS cannot
   give it one), so ``safedrop.locks.LockWatch`` cancels a statement of it that waits for a lock longer
   than the attempt's lock_timeout; the transaction rolls back and is retried with a longer one,
   backoff and jitter (``LockSchedule``), until the lock-wait budget is spent: then nothing
   was restored, and the message names the sessions holding the locks it waited for. On PostgreSQL 14+
   its session checks every second that pg_restore is still there, so a killed pg_restore leaves no
   session queued for a lock.
2. The foreign keys, ``NOT VALID`` (no scan), in one short transaction, lock-safe the same way: SHARE
   ROW EXCLUSIVE on both tables of each key — which makes writers of ``credits`` wait — lasts
   milliseconds instead of a whole scan. (A key on a partitioned table is added validated:
   PostgreSQL < 18 cannot add it NOT VALID.)
3. Each key validated in its own transaction (SHARE UPDATE EXCLUSIVE: writes go on). A key that rows
   violate stays NOT VALID — enforced for new rows — and is named, with the rows and what to do.

Refusals (nothing changed, exit code 3): no manifest beside the archive; the archive's size or sha256
differs from the manifest (corrupted or truncated); the installed pg_restore cannot read the archive;
a target, or anything else to restore, already exists; the locks could not be had within the budget.
Two exceptions, both when every target is there with exactly the manifest's rows: if everything else
is there too, and every foreign key validated, it is "already restored" (nothing to do); if only some
other removed objects are missing (say foreign keys dropped by hand, or by a drop that committed them
separately before its table drop gave up) or a restored foreign key is still NOT VALID, only those go
back or are validated. Afterwards each target's row count and content checksum, each sequence's
value, each restored object's presence and each foreign key's validation are compared with the
manifest; a difference raises.

The password reaches pg_restore only through its environment (``PGPASSWORD``), never argv.
"""

from __future__ import annotations

import re
import signal
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import sh
import sqlalchemy as sa
from pglast import ast, enums, parse_sql
from pglast.parser import ParseError
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from psycopg2 import sql
from sqlalchemy.engine import Connection

from safedrop import queries
from safedrop.artifacts import md_list, md_table, publish_markdown
from safedrop.catalog import table_status
from safedrop.database import APPLICATION_NAME, Database, connect, execute_composed
from safedrop.errors import BackupFailed, ConnectionFailed, SafedropError, UsageError, VerificationFailed
from safedrop.locks import LOCK_NOT_AVAILABLE, LockWatch, describe_blockers, lock_watch
from safedrop.lockschedule import LockSchedule, lock_waits, run_lock_safe
from safedrop.migration import TableName
from safedrop.paths import default_backup_dir
from safedrop.report import (
    BackupManifest,
    ForeignKeyOutcome,
    RemovedObject,
    RestoreCheck,
    RestoredTable,
    RestoreResult,
    RestoreVerification,
)
from tasks.backup import (
    MANIFEST_SUFFIX,
    PgTools,
    Progress,
    TocEntry,
    _dbname_arg,
    _run,
    _session_env,
    _start,
    _stderr_summary,
    _tool_env,
    _version_key,
    _wait,
    archive_digest,
    checksum_methods,
    find_pg_dump,
    human_bytes,
    manifest_path,
    manifests_of_run,
    pin_text_settings,
    read_manifest,
    read_toc,
    run_logger,
    sequence_states,
    table_checksums,
)

NOTHING_CHANGED = "nothing was changed"
NOTHING_RESTORED = "nothing was restored"
PG_RESTORE_APP = f"{APPLICATION_NAME} pg_restore"  # its sessions' application_name (libpq_env)
DEADLOCK_DETECTED = "40P01"  # we lost a lock cycle (rolled back, holding nothing): as retryable as a timeout
FOREIGN_KEY_VIOLATION = "23503"
# pg_restore's stderr when one of its statements lost a lock wait
_LOCK_FAILURES = ("canceling statement due to lock timeout", "deadlock detected")
PG_CLASS = 1259
# Entries pg_restore needs for any restore: the archive's encoding, string and search_path settings.
SESSION_ENTRIES = {"ENCODING", "STDSTRINGS", "SEARCHPATH"}
# SQLSTATE classes pg_get_object_address raises for "no such object" (undefined_*, invalid_schema_name).
_ABSENT_CLASSES = ("42", "3F")
WRONG_OBJECT_TYPE = "42809"


class RestoreRefused(SafedropError):
    """The restore did not start: the archive, its manifest or the database says no. Nothing changed."""

    exit_code = 3
    status = "refused"


class RestoreFailed(SafedropError):
    """pg_restore failed; its single transaction was rolled back."""


class RestoreLockTimeout(RestoreRefused):
    """pg_restore did not get its locks within the lock-wait budget; nothing was restored."""


# --------------------------------------------------------------------------------------------------
# The archive and its manifest
# --------------------------------------------------------------------------------------------------


_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def find_backup(spec: str | Path) -> Path:
    """The archive ``spec`` names: a path (absolute, or relative to the working directory), a file name
    in this machine's backup directory (``SAFEDROP_BACKUP_DIR``), or the id of the flow run that took
    the backup (found by its manifest there). Raises UsageError naming where it looked."""
    raw = Path(spec).expanduser()
    if raw.name.endswith(MANIFEST_SUFFIX):
        raw = raw.with_name(raw.name[: -len(MANIFEST_SUFFIX)])
    directory = default_backup_dir()
    candidates = [raw.absolute()] + ([directory / raw] if not raw.is_absolute() else [])
    for candidate in candidates:
        if candidate.exists():
            return candidate
    if _UUID.match(str(spec).strip().lower()):
        for manifest_file, manifest in manifests_of_run(directory, str(spec).strip().lower()):
            return manifest_file.parent / manifest.archive
    raise UsageError(
        f"backup {spec} does not exist (looked in {Path.cwd()} and the backup directory {directory}); pass "
        "the archive the drop wrote, its file name in the backup directory, or the id of the flow run "
        "that dropped the tables"
    )


def locate_backup(path: str | Path) -> tuple[Path, BackupManifest]:
    """The archive (a ``.dump`` file or a ``.dumpdir`` directory; its manifest's path is accepted too,
    and whatever ``find_backup`` accepts) and its manifest. A missing archive is a usage error; a
    missing or unreadable manifest a refusal."""
    archive = find_backup(path)
    try:
        manifest = read_manifest(archive)
    except (ValueError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RestoreRefused(
            f"the manifest {manifest_path(archive)} cannot be read ({first}); without it safedrop cannot "
            f"prove what the archive holds; {NOTHING_CHANGED}"
        ) from None
    if manifest is None:
        raise RestoreRefused(
            f"no manifest beside {archive} (expected {manifest_path(archive)}); safedrop restores only "
            f"archives whose contents it can prove — use the manifest written with the backup; "
            f"{NOTHING_CHANGED}"
        )
    return archive, manifest


def check_archive(archive: Path, manifest: BackupManifest) -> None:
    """Refuse an archive whose size or sha256 differs from its manifest's (corrupted or truncated)."""
    size, digest, files = archive_digest(archive)
    if size != manifest.bytes or digest != manifest.sha256:
        detail = (
            f"{size:,} bytes, sha256 {digest}; the manifest says {manifest.bytes:,} bytes, "
            f"sha256 {manifest.sha256}"
        )
        if manifest.files:
            changed = sorted(
                n for n in set(files) | set(manifest.files) if files.get(n) != manifest.files.get(n)
            )
            detail += f"; differing files: {', '.join(changed)}"
        raise RestoreRefused(
            f"the archive {archive} does not match its manifest ({detail}): it is corrupted or truncated; "
            f"restore from another backup; {NOTHING_CHANGED}"
        )


def choose_pg_restore(server_version_num: int, manifest: BackupManifest) -> PgTools:
    """A pg_restore that suits the server and can read the archive (as new as the pg_dump that wrote it)."""
    try:
        tools = find_pg_dump(server_version_num)
    except BackupFailed as exc:
        message = str(exc).replace("pg_dump", "pg_restore").replace("the drop did not run", NOTHING_CHANGED)
        raise RestoreRefused(message) from None
    if _version_key(tools.version_num) < _version_key(manifest.pg_dump_version_num):
        raise RestoreRefused(
            f"pg_restore {tools.version} cannot read an archive written by {manifest.pg_dump_version}; "
            f"install that PostgreSQL version's client or set SAFEDROP_PG_BIN; {NOTHING_CHANGED}"
        )
    return tools


# --------------------------------------------------------------------------------------------------
# Which entries go back
# --------------------------------------------------------------------------------------------------


def select_entries(entries: list[TocEntry], manifest: BackupManifest) -> list[TocEntry]:
    """The archive's entries for exactly what the drop removed, in archive order.

    An entry with a catalog identity (TABLE, SEQUENCE, INDEX, CONSTRAINT, FK CONSTRAINT — inbound
    ones live on the surviving table —, TRIGGER, POLICY, RULE, DEFAULT, VIEW, FUNCTION, …) goes back
    when that object is in the manifest's removal set. TABLE DATA and ROW SECURITY name their table by
    oid. Entries without an identity (COMMENT, ACL, SEQUENCE SET, SEQUENCE OWNED BY, TABLE ATTACH,
    INDEX ATTACH, …) go back with any chosen entry they depend on.
    """
    removed = {(o.classid, o.objid) for o in manifest.removed if o.objsubid == 0}
    relations = {o.objid for o in manifest.removed if o.classid == PG_CLASS and o.objsubid == 0}
    chosen: set[int] = set()
    for e in entries:
        if e.desc in SESSION_ENTRIES:
            chosen.add(e.dump_id)
        elif e.catalog_oid and (e.catalog_oid, e.oid) in removed:
            chosen.add(e.dump_id)
        elif not e.catalog_oid and e.oid and e.oid in relations:
            chosen.add(e.dump_id)
    loose = [e for e in entries if not e.catalog_oid and not e.oid and e.desc not in SESSION_ENTRIES]
    grew = True
    while grew:
        grew = False
        for e in loose:
            if e.dump_id not in chosen and any(d in chosen for d in e.deps):
                chosen.add(e.dump_id)
                grew = True
    return [e for e in entries if e.dump_id in chosen]


def only_entries_for(entries: list[TocEntry], objects: list[RemovedObject]) -> list[TocEntry]:
    """The entries creating ``objects``, with the comments and grants that depend on them."""
    wanted = {(o.classid, o.objid) for o in objects}
    chosen = {e.dump_id for e in entries if e.desc in SESSION_ENTRIES or (e.catalog_oid, e.oid) in wanted}
    creating = {e.dump_id for e in entries if (e.catalog_oid, e.oid) in wanted}
    chosen |= {
        e.dump_id for e in entries if not e.catalog_oid and not e.oid and any(d in creating for d in e.deps)
    }
    return [e for e in entries if e.dump_id in chosen]


def restored_objects(entries: list[TocEntry], manifest: BackupManifest) -> list[RemovedObject]:
    """The removal-set objects the chosen entries create (one per entry with a catalog identity)."""
    by_address = {(o.classid, o.objid): o for o in manifest.removed if o.objsubid == 0}
    out = []
    for e in entries:
        obj = by_address.get((e.catalog_oid, e.oid)) if e.catalog_oid else None
        if obj is not None:
            out.append(obj)
    return out


def not_restorable(entries: list[TocEntry], manifest: BackupManifest) -> list[str]:
    """What CASCADE removed that no chosen entry brings back (e.g. a column typed by a target's row)."""
    covered = {(e.catalog_oid, e.oid) for e in entries if e.catalog_oid}
    covered |= {(PG_CLASS, e.oid) for e in entries if not e.catalog_oid and e.oid}
    by_description = {o.description: o for o in manifest.removed}
    missing = []
    for c in manifest.cascade:
        obj = by_description.get(c.identity)
        if obj is None or (obj.classid, obj.objid) not in covered:
            where = f" on {c.owner_table}" if c.owner_table else ""
            missing.append(f"{c.kind} {c.name}{where}")
    return missing


# --------------------------------------------------------------------------------------------------
# Foreign keys: not replayed by pg_restore, but added NOT VALID right after it, then validated
# --------------------------------------------------------------------------------------------------


def split_foreign_keys(entries: list[TocEntry]) -> tuple[list[TocEntry], list[TocEntry]]:
    """(what pg_restore replays, the FK CONSTRAINT entries and the comments on them).

    Adding a foreign key with validation holds SHARE ROW EXCLUSIVE on both tables while it scans the
    referencing one: writes to ``credits`` would wait for the whole scan. So the keys go back after
    pg_restore's transaction, NOT VALID (no scan), and are validated one by one (writes go on).
    """
    keys = {e.dump_id for e in entries if e.desc == "FK CONSTRAINT"}
    later = {e.dump_id for e in entries if e.dump_id in keys or (not e.catalog_oid and set(e.deps) & keys)}
    return [e for e in entries if e.dump_id not in later], [e for e in entries if e.dump_id in later]


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


_PSQL_META = re.compile(r"^\\(?:un)?restrict [A-Za-z0-9]+$", re.MULTILINE)


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
            script = _run(
                tools.pg_restore,
                ["--file=-", f"--use-list={listing}", str(archive)],
                env=_tool_env(),
                timeout_s=300,
            )
        except (sh.ErrorReturnCode, sh.TimeoutException) as exc:
            detail = _stderr_summary(getattr(exc, "stderr", b"") or b"", db) or type(exc).__name__
            raise RestoreRefused(
                f"pg_restore cannot print the foreign keys of {archive} ({detail}); {NOTHING_CHANGED}"
            ) from None
    try:
        return parse_foreign_keys(str(script))
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


# --------------------------------------------------------------------------------------------------
# The database side
# --------------------------------------------------------------------------------------------------


def object_exists(conn: Connection, obj: RemovedObject) -> bool:
    """Whether an object with this (portable) address exists now; asked inside a savepoint."""
    savepoint = conn.begin_nested()
    try:
        queries.rows(conn, "object_exists", type=obj.type, names=obj.names, args=obj.args)
    except sa.exc.DBAPIError as exc:
        savepoint.rollback()
        code = getattr(exc.orig, "pgcode", None) or ""
        if code == WRONG_OBJECT_TYPE:  # the name is taken by an object of another kind: it collides
            return True
        if code.startswith(_ABSENT_CLASSES):
            return False
        raise
    savepoint.commit()
    return True


def _quoted(*parts: str) -> str:
    return ".".join('"' + p.replace('"', '""') + '"' for p in parts)


def _targets(manifest: BackupManifest) -> list[TableName]:
    return [TableName(t.schema_name, t.table_name) for t in manifest.targets]


def ledger_entries(conn: Connection, manifest: BackupManifest) -> list[dict]:
    if not queries.one(conn, "relation_exists", name="safedrop.dropped_tables")["present"]:
        return []
    targets = _targets(manifest)
    return queries.rows(
        conn, "ledger_restore_lookup", schemas=[t.schema for t in targets], names=[t.name for t in targets]
    )


@dataclass
class RestorePlan:
    """What the precheck found: the archive, the entries to replay, and what must exist afterwards."""

    archive: Path
    manifest: BackupManifest
    tools: PgTools
    entries: list[TocEntry]
    objects: list[RemovedObject]
    check: RestoreCheck
    already_restored: bool = False
    repair: bool = False  # the tables are there, intact: only objects the drop removed first go back
    warnings: list[str] = field(default_factory=list)
    server_version_num: int = 0
    foreign_keys: list[ForeignKey] = field(default_factory=list)  # to add NOT VALID (or only to validate)


def _compare_tables(conn: Connection, manifest: BackupManifest) -> list[RestoredTable]:
    found = table_checksums(conn, _targets(manifest), methods=checksum_methods(manifest.targets))
    out = []
    for t in manifest.targets:
        rows, checksum = found.get(TableName(t.schema_name, t.table_name), (None, None))
        out.append(
            RestoredTable(
                name=t.name, rows_expected=t.rows, rows_found=rows, checksum_matches=checksum == t.checksum
            )
        )
    return out


def _repair_note(missing: list[RemovedObject], unvalidated: list[ForeignKey]) -> str:
    parts = []
    if missing:
        parts.append("putting back only what is missing: " + ", ".join(o.description for o in missing))
    if unvalidated:
        parts.append("validating the foreign keys left NOT VALID: " + ", ".join(k.label for k in unvalidated))
    return "the tables are there with exactly the backup's contents; " + "; ".join(parts)


def plan_restore(db: Database, backup_path: str | Path) -> RestorePlan:
    """Every refusal, before anything changes: the manifest, the archive's hash, the tools, what exists."""
    archive, manifest = locate_backup(backup_path)
    check_archive(archive, manifest)
    with connect(db) as conn:
        info = queries.one(conn, "server_info")
        conn.rollback()
    if info["in_recovery"]:
        raise RestoreRefused(
            f"the server at {db.display} is a read-only standby; point the database URL at the primary; "
            f"{NOTHING_CHANGED}"
        )
    tools = choose_pg_restore(info["server_version_num"], manifest)
    entries = select_entries(
        read_toc(archive, tools, failure=RestoreRefused, suffix=NOTHING_CHANGED), manifest
    )
    objects = restored_objects(entries, manifest)
    keys = read_foreign_keys(db, archive, tools, entries)
    warnings: list[str] = []
    if info["database"] != manifest.database:
        warnings.append(
            f"restoring into database {info['database']}, but the backup was taken of {manifest.database}"
        )
    with connect(db) as conn:
        with conn.begin():
            conn.exec_driver_sql("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            pin_text_settings(conn)
            present = [o for o in objects if object_exists(conn, o)]
            present_targets = [
                t
                for t in manifest.targets
                if queries.one(conn, "relation_exists", name=_quoted(t.schema_name, t.table_name))["present"]
            ]
            survivors = sorted({c.owner_table for c in manifest.cascade if c.owner_table})
            missing_survivors = [
                s for s in survivors if not queries.one(conn, "relation_exists", name=s)["present"]
            ]
            compared = (
                _compare_tables(conn, manifest) if len(present_targets) == len(manifest.targets) else []
            )
            ledger = ledger_entries(conn, manifest)
            keys = foreign_key_states(conn, keys)
    for row in ledger:
        if row["backup_sha256"] and row["backup_sha256"] != manifest.sha256:
            warnings.append(
                f"the ledger says {row['schema_name']}.{row['table_name']} was dropped on "
                f"{row['dropped_at']:%Y-%m-%d %H:%M} UTC after the backup {row['backup_path']}, not this one"
            )
    if not ledger and not present_targets:
        warnings.append("safedrop's ledger has no record of dropping these tables")
    lost = not_restorable(entries, manifest)
    warnings += [f"not in the archive, so not restored: {item}" for item in lost]
    check = RestoreCheck(
        archive=str(archive),
        manifest=str(manifest_path(archive)),
        scope=manifest.scope,
        backup_created_at=manifest.created_at,
        targets=[t.name for t in manifest.targets],
        entries=[f"{e.desc} {e.rest.rsplit(' ', 1)[0]}" for e in entries if e.desc not in SESSION_ENTRIES],
        not_restorable=lost,
        present=[o.description for o in present],
        pg_restore_version=tools.version_line,
        warnings=warnings,
    )
    # what the restore adds NOT VALID, or (left NOT VALID by an earlier restore) only validates
    pending = [k for k in keys if not k.present or (k.valid and not k.validated)]
    plan = RestorePlan(
        archive,
        manifest,
        tools,
        entries,
        objects,
        check,
        warnings=warnings,
        server_version_num=info["server_version_num"],
        foreign_keys=pending,
    )
    all_match = compared and all(t.rows_found == t.rows_expected and t.checksum_matches for t in compared)
    if all_match and len(present) == len(objects) and not pending:
        plan.already_restored = True
        return plan
    if all_match:
        # The tables are there with exactly the backup's rows, but some of what the drop removes is
        # gone (foreign keys dropped by hand, or committed before a table drop gave up), or a foreign
        # key an earlier restore put back is not validated yet: put back, or validate, only that.
        missing = [o for o in objects if o not in present]
        plan.entries = only_entries_for(entries, missing)
        plan.objects, plan.repair = missing, True
        note = _repair_note(missing, [k for k in pending if k.present])
        plan.warnings.append(note)
        check.warnings.append(note)
        check.entries = [
            f"{e.desc} {e.rest.rsplit(' ', 1)[0]}" for e in plan.entries if e.desc not in SESSION_ENTRIES
        ]
        return plan
    if present_targets:
        names = ", ".join(t.name for t in present_targets)
        differs = " with other contents than the backup's" if compared else ""
        raise RestoreRefused(
            f"{names} already exist{'s' if len(present_targets) == 1 else ''}{differs}; restore puts back "
            "only "
            f"tables that are gone — rename or drop {'it' if len(present_targets) == 1 else 'them'} first; "
            f"{NOTHING_CHANGED}",
            report=check,
        )
    if present:
        raise RestoreRefused(
            f"{', '.join(o.description for o in present)} already exist(s), and restoring would collide "
            f"with it; remove or rename it first; {NOTHING_CHANGED}",
            report=check,
        )
    if missing_survivors:
        raise RestoreRefused(
            f"{', '.join(missing_survivors)} no longer exist(s), but what the drop removed from "
            f"{'it' if len(missing_survivors) == 1 else 'them'} (foreign keys, triggers, …) would have to go "
            f"back onto it; {NOTHING_CHANGED}",
            report=check,
        )
    return plan


class RestoreProgress:
    """pg_restore --verbose prints a line per entry it processes: count them against the list."""

    _LINE = re.compile(r"^pg_restore: (creating|processing data|executing|setting owner|processing item)")

    def __init__(self, reporter: Progress, total: int) -> None:
        self.reporter, self.total, self.done = reporter, max(total, 1), 0
        self.started = time.monotonic()

    def restart(self) -> None:
        self.done = 0

    def line(self, text: str) -> None:
        if self._LINE.match(text):
            self.done += 1

    def tick(self) -> None:
        self.reporter.update(
            min(self.done / self.total, 0.99), f"{min(self.done, self.total)} of {self.total} entries"
        )


@dataclass
class Tally:
    attempts: int = 0
    lock_timeouts: int = 0


def _pgcode(exc: BaseException) -> str:
    return getattr(getattr(exc, "orig", None), "pgcode", None) or ""


def _gave_up(what: str, attempts: int, schedule: LockSchedule, blockers: list[str]) -> str:
    return (
        f"gave up {what} after {attempts} attempts within the lock-wait budget "
        f"{schedule.budget_ms / 1000:g} s (lock_timeout up to {schedule.largest_timeout_ms} ms); blocked by: "
        f"{'; '.join(blockers) or 'a session that has since finished'}"
    )


def _pg_restore_args(db: Database, plan: RestorePlan, listing: Path, no_owner: bool) -> list[str]:
    """argv: the list of entries and the database name; host, user and password are in the environment."""
    args = ["--single-transaction", "--exit-on-error", "--verbose", "--no-password", f"--use-list={listing}"]
    if no_owner:
        args.append("--no-owner")
    return [*args, _dbname_arg(db.url.database or ""), str(plan.archive)]


def _restore_once(
    db: Database,
    plan: RestorePlan,
    args: list[str],
    *,
    watch: LockWatch,
    timeout_ms: int,
    timeout_s: float,
    progress: RestoreProgress,
) -> bool:
    """One pg_restore run, one transaction: True once it committed, False when one of its lock waits
    ran out (rolled back, nothing restored). Raises RestoreFailed on anything else (rolled back too)."""
    env = _session_env(db, "pg_restore", plan.server_version_num)  # client_connection_check_interval
    watch.arm(timeout_ms)
    progress.restart()

    def tick() -> None:
        progress.tick()
        watch.check()

    try:
        running = _start(plan.tools.pg_restore, args, env=env, timeout_s=timeout_s, on_line=progress.line)
        _wait(running, on_tick=tick, tick_s=min(0.1, timeout_ms / 4000))
    except sh.TimeoutException:
        raise RestoreFailed(
            f"pg_restore did not finish within {timeout_s:g} s and was stopped; its transaction was "
            f"rolled back, {NOTHING_RESTORED}"
        ) from None
    except sh.SignalException as exc:
        number = -exc.exit_code
        name = signal.Signals(number).name if number in signal.valid_signals() else "?"
        raise RestoreFailed(
            f"pg_restore was killed by signal {name} before it finished; its transaction was rolled back, "
            f"{NOTHING_RESTORED} (check memory limits and who stops processes on this host)"
        ) from None
    except sh.ErrorReturnCode as exc:
        text = (exc.stderr or b"").decode("utf-8", "replace")
        if watch.cancelled or any(marker in text for marker in _LOCK_FAILURES):
            return False
        summary = _stderr_summary(text, db) or f"exit code {exc.exit_code}"
        raise RestoreFailed(
            f"pg_restore failed and its transaction was rolled back, {NOTHING_CHANGED}: {summary}"
        ) from None
    except OSError as exc:
        raise RestoreFailed(
            f"pg_restore could not be started ({exc.strerror or exc}); {NOTHING_CHANGED}"
        ) from None
    return True


def replay_tables(
    db: Database,
    plan: RestorePlan,
    entries: list[TocEntry],
    *,
    schedule: LockSchedule,
    no_owner: bool,
    timeout_s: float,
    progress: RestoreProgress,
    tally: Tally,
) -> None:
    """pg_restore of ``entries`` in ONE transaction; a lock wait longer than the attempt's lock_timeout
    rolls it back, and it is retried with a longer one, within the budget. Raises RestoreLockTimeout
    (nothing restored, the blockers named) when the budget is spent."""
    with (
        tempfile.TemporaryDirectory(prefix="safedrop-restore-") as tmp,
        lock_watch(db, PG_RESTORE_APP) as watch,
    ):
        listing = Path(tmp) / "restore.list"
        listing.write_text("".join(e.line + "\n" for e in entries))
        listing.chmod(0o600)
        args = _pg_restore_args(db, plan, listing, no_owner)
        try:
            for attempt, timeout_ms in schedule.attempts():
                tally.attempts += 1
                if _restore_once(
                    db, plan, args, watch=watch, timeout_ms=timeout_ms, timeout_s=timeout_s, progress=progress
                ):
                    return
                tally.lock_timeouts += 1
                run_logger().info(
                    "pg_restore: a lock wait ran out at %d ms (attempt %d); rolled back, retrying",
                    timeout_ms,
                    attempt,
                )
        except sa.exc.DBAPIError as exc:
            raise RestoreFailed(
                f"watching pg_restore's lock waits failed ({_first_line(exc, db)}); pg_restore was stopped "
                f"and its transaction rolled back, {NOTHING_RESTORED}"
            ) from None
        relations = sorted(watch.relations)
    blockers = describe_blockers(db, relations, [])
    raise RestoreLockTimeout(
        f"{_gave_up('on the restore', tally.attempts, schedule, blockers)}; {NOTHING_RESTORED} — let it "
        "finish (or end it) and re-run"
    )


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


def add_foreign_keys(
    db: Database,
    plan: RestorePlan,
    keys: list[ForeignKey],
    *,
    schedule: LockSchedule,
    statement_timeout_s: int,
) -> list[ForeignKeyOutcome]:
    """Every key NOT VALID, in ONE short transaction, lock-safe: without the scan, SHARE ROW EXCLUSIVE on
    both tables of a key (writers of ``credits`` wait) lasts milliseconds. All keys go in, or none:
    returns an outcome for each key that is not there (empty when all are)."""
    if not keys:
        return []
    targets = set(_targets(plan.manifest))
    tables = sorted({t for k in keys for t in (k.table, k.references)})
    with connect(db) as conn:
        status = {TableName(r["schema_name"], r["table_name"]): r for r in table_status(conn, tables)}
        short_ms = queries.one(conn, "deadlock_timeout")["deadlock_timeout_ms"] // 2
        conn.rollback()
    partitioned = {t for t, r in status.items() if r["relkind"] == "p"}
    keys = [replace(k, survivor=bool({k.table, k.references} - targets)) for k in keys]
    attempts, pid = 0, None
    for attempt, timeout_ms in schedule.attempts():
        attempts += 1
        first, *later = _key_order(keys, attempt - 1)
        held_first = {first.table, first.references}
        later_tables = sorted({t for k in later for t in (k.table, k.references)} - held_first)
        waits = lock_waits(timeout_ms, 1 + len(later_tables), short_ms)
        try:
            with connect(db) as conn:
                with conn.begin():
                    pid = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar()
                    queries.rows(
                        conn, "restore_session_settings", statement_timeout=f"{statement_timeout_s}s"
                    )
                    run_lock_safe(
                        conn,
                        _key_statements(first, partitioned),
                        waits[0],
                        {t: status[t]["oid"] for t in later_tables if status.get(t) and status[t]["oid"]},
                        sum(waits[1:]) or short_ms,
                        [s for k in later for s in _key_statements(k, partitioned)],
                        mode="SHARE ROW EXCLUSIVE",  # what ADD FOREIGN KEY takes on both tables
                    )
            return []
        except sa.exc.DBAPIError as exc:
            if _pgcode(exc) not in (LOCK_NOT_AVAILABLE, DEADLOCK_DETECTED):
                return _not_added(keys, f"adding it failed ({_first_line(exc, db)})")
            run_logger().info(
                "foreign keys: a lock wait ran out at %d ms (attempt %d); rolled back, retrying",
                timeout_ms,
                attempt,
            )
        except ConnectionFailed as exc:
            return _not_added(keys, str(exc))
    oids = [r["oid"] for r in status.values() if r["oid"]]
    blockers = describe_blockers(db, oids, [pid] if pid else [])
    return _not_added(keys, _gave_up("adding it", attempts, schedule, blockers))


def _not_added(keys: list[ForeignKey], why: str) -> list[ForeignKeyOutcome]:
    detail = (
        f"{why}; the tables are back without it — once that is resolved, re-run the restore: it adds "
        "only what is missing"
    )
    return [ForeignKeyOutcome(name=k.label, state="missing", detail=detail) for k in keys]


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
                    queries.rows(
                        conn,
                        "set_local_timeouts",
                        lock_timeout=f"{timeout_ms}ms",
                        statement_timeout=f"{statement_timeout_s}s",
                    )
                    execute_composed(conn, statement)
            return ForeignKeyOutcome(
                name=key.label, state="validated", duration_s=round(time.monotonic() - started, 3)
            )
        except sa.exc.DBAPIError as exc:
            if _pgcode(exc) not in (LOCK_NOT_AVAILABLE, DEADLOCK_DETECTED):
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
        detail=f"{_gave_up('validating it', attempts, schedule, blockers)}; once it is done, run "
        f"{key.validate_command} (or re-run the restore)",
    )


def _invalid(exc: sa.exc.DBAPIError, key: ForeignKey, db: Database) -> str:
    if _pgcode(exc) == FOREIGN_KEY_VIOLATION:
        detail = (getattr(getattr(exc.orig, "diag", None), "message_detail", None) or "").strip().rstrip(".")
        return (
            f"rows violate it ({detail or _first_line(exc, db)}); correct or delete them, then run "
            f"{key.validate_command} (or re-run the restore)"
        )
    return f"validating it failed ({_first_line(exc, db)}); once that is fixed, run {key.validate_command}"


def run_restore(
    db: Database,
    plan: RestorePlan,
    *,
    no_owner: bool = False,
    timeout_s: float = 3600,
    schedule: LockSchedule | None = None,
    progress_key: str | None = None,
) -> RestoreResult:
    """1. pg_restore of everything but the foreign keys in ONE transaction, lock-safe (all or nothing:
    raises RestoreFailed or RestoreLockTimeout with nothing restored). 2. The foreign keys NOT VALID, in
    one short transaction, lock-safe. 3. Each validated in its own transaction. What 2 and 3 could not
    do is in the result's ``foreign_keys`` (the verification names it)."""
    schedule = schedule or LockSchedule()
    started = time.monotonic()
    tables, _ = split_foreign_keys(plan.entries)
    count = len([e for e in tables if e.desc not in SESSION_ENTRIES])
    progress = RestoreProgress(Progress("pg_restore", progress_key), count)
    tally = Tally()
    if count:
        replay_tables(
            db,
            plan,
            tables,
            schedule=schedule,
            no_owner=no_owner,
            timeout_s=timeout_s,
            progress=progress,
            tally=tally,
        )
    progress.reporter.finish(f"{count} entries")
    tables_s = round(time.monotonic() - started, 3)
    seconds = max(int(timeout_s), 1)
    adding = [k for k in plan.foreign_keys if not k.present]
    outcomes = add_foreign_keys(db, plan, adding, schedule=schedule, statement_timeout_s=seconds)
    missing = {o.name for o in outcomes}
    for key in [k for k in plan.foreign_keys if k.label not in missing]:
        if key.valid:
            outcomes.append(validate_foreign_key(db, key, schedule=schedule, statement_timeout_s=seconds))
        else:
            outcomes.append(ForeignKeyOutcome(name=key.label, state="not valid in the backup"))
    return RestoreResult(
        entries=len([e for e in plan.entries if e.desc not in SESSION_ENTRIES]),
        duration_s=round(time.monotonic() - started, 3),
        tables_s=tables_s,
        attempts=tally.attempts,
        lock_timeouts=tally.lock_timeouts,
        lock_timeout_ms=schedule.first_timeout_ms,
        foreign_keys=outcomes,
    )


def verify_restored(
    db: Database, plan: RestorePlan, restored: RestoreResult | None = None
) -> RestoreVerification:
    """Rows, checksums, sequence values, objects, and each foreign key validated, compared with the
    manifest. Raises on a difference (``restored`` says why a foreign key is missing or NOT VALID)."""
    manifest = plan.manifest
    key_addresses = {("table constraint", (k.table.schema, k.table.name, k.name)) for k in plan.foreign_keys}
    others = [o for o in plan.objects if (o.type, tuple(o.names)) not in key_addresses]
    with connect(db) as conn:
        with conn.begin():
            conn.exec_driver_sql("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            pin_text_settings(conn)
            tables = _compare_tables(conn, manifest)
            sequences = {s.name: s for s in sequence_states(conn, [s.name for s in manifest.sequences])}
            missing = [o.description for o in others if not object_exists(conn, o)]
            keys = foreign_key_states(conn, plan.foreign_keys)
    problems = []
    for t in tables:
        if t.rows_found != t.rows_expected or not t.checksum_matches:
            problems.append(
                f"{t.name} has {t.rows_found if t.rows_found is not None else 'no'} rows"
                f"{'' if t.checksum_matches else ' and a different checksum'}; "
                f"the backup had {t.rows_expected}"
            )
    for s in [] if plan.repair else manifest.sequences:  # a repair leaves the (live) sequences alone
        got = sequences.get(s.name)
        if got is None or (got.last_value, got.is_called) != (s.last_value, s.is_called):
            found = f"{got.last_value} (is_called {got.is_called})" if got else "missing"
            problems.append(
                f"sequence {s.name} is {found}; the backup had {s.last_value} (is_called {s.is_called})"
            )
    problems += [f"{m} is not back" for m in missing]
    key_problems = _key_problems(keys, restored)
    result = RestoreVerification(
        tables=tables,
        sequences=[
            f"{s.name} = {s.last_value}{'' if s.is_called else ' (not called yet)'}"
            for s in sequences.values()
        ],
        objects_back=len(plan.objects) - len(missing) - len([k for k in keys if not k.present]),
        foreign_keys=[f"{k.label}: {_key_state(k)}" for k in keys],
        reasons=problems + key_problems,
    )
    if problems:
        raise VerificationFailed(
            f"restore verification failed: {'; '.join(problems + key_problems)} — the restore committed; "
            f"compare with the archive {plan.archive} before anything else",
            report=result,
        )
    if key_problems:
        raise VerificationFailed(
            "restore verification failed: the tables are back with every row and sequence as in the "
            f"backup, but {'; '.join(key_problems)}",
            report=result,
        )
    return result


def _key_state(key: ForeignKey) -> str:
    if not key.present:
        return "missing"
    if key.validated:
        return "validated"
    return "NOT VALID" if key.valid else "NOT VALID, as in the backup"


def _key_problems(keys: list[ForeignKey], restored: RestoreResult | None) -> list[str]:
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


# --------------------------------------------------------------------------------------------------
# Artifacts and tasks
# --------------------------------------------------------------------------------------------------


def render_check(check: RestoreCheck, manifest: BackupManifest | None = None) -> str:
    text = (
        f"# Restore precheck\n\nArchive `{check.archive}` ({check.scope} scope, "
        f"taken {check.backup_created_at}) "
        f"matches its manifest `{check.manifest}`; pg_restore: {check.pg_restore_version}.\n\n"
    )
    if manifest is not None:
        text += "## Targets\n\n" + md_table(
            [{"table": t.name, "rows": f"{t.rows:,}", "checksum": t.checksum} for t in manifest.targets]
        )
    text += f"\n## Entries to restore ({len(check.entries)})\n\n" + md_list(check.entries)
    if check.present:
        text += "\n## Already present\n\n" + md_list(check.present)
    if check.warnings:
        text += "\n## Warnings\n\n" + md_list(check.warnings)
    return text


def render_verification(result: RestoreVerification) -> str:
    verdict = "passed" if not result.reasons else "FAILED: " + "; ".join(result.reasons)
    rows = [
        {
            "table": t.name,
            "rows expected": f"{t.rows_expected:,}",
            "rows found": "missing" if t.rows_found is None else f"{t.rows_found:,}",
            "checksum": "matches" if t.checksum_matches else "DIFFERS",
        }
        for t in result.tables
    ]
    text = f"# Restore verification {verdict}\n\n{md_table(rows)}\n"
    text += f"{result.objects_back} restored objects present.\n"
    if result.foreign_keys:
        text += "\n## Foreign keys\n\n" + md_list(result.foreign_keys)
    if result.sequences:
        text += "\n## Sequences\n\n" + md_list(result.sequences)
    return text


def _first_line(exc: BaseException, db: Database) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    first = text[0] if text else type(exc).__name__
    return first.replace(db.password, "***") if db.password else first


def _transient(task, task_run, state) -> bool:
    error = state.result(raise_on_failure=False)
    return isinstance(error, ConnectionFailed) and error.transient


@task(
    name="restore-precheck",
    retries=2,
    retry_delay_seconds=[1, 5],
    retry_condition_fn=_transient,
    cache_policy=NO_CACHE,
)
def restore_precheck(db: Database, backup_path: str, artifact_prefix: str) -> RestorePlan:
    """The archive matches its manifest; nothing to restore exists; the entries to replay."""
    logger = get_run_logger()
    logger.info("checking %s against its manifest, and %s", backup_path, db.display)
    try:
        plan = plan_restore(db, backup_path)
    except sa.exc.DBAPIError as exc:
        raise RestoreFailed(
            f"the restore precheck failed: {_first_line(exc, db)}; {NOTHING_CHANGED}"
        ) from None
    except RestoreRefused as exc:
        if isinstance(exc.report, RestoreCheck):
            publish_markdown(f"{artifact_prefix}-precheck", render_check(exc.report), "Restore precheck")
        raise
    for warning in plan.warnings:
        logger.warning(warning)
    logger.info(
        "%d entries to restore from %s (%s)",
        len(plan.check.entries),
        plan.archive,
        human_bytes(plan.manifest.bytes),
    )
    publish_markdown(
        f"{artifact_prefix}-precheck", render_check(plan.check, plan.manifest), "Restore precheck"
    )
    return plan


def render_restore(result: RestoreResult, plan: RestorePlan, db: Database) -> str:
    text = (
        f"# Restore\n\n{result.entries} entries of `{plan.archive}` restored into `{db.display}` in "
        f"{result.duration_s:.2f} s. The tables, their rows and everything but the foreign keys went back "
        f"in one pg_restore transaction ({result.tables_s or 0:.2f} s, {result.attempts} attempt(s), "
        f"{result.lock_timeouts} lock timeout(s), first lock_timeout {result.lock_timeout_ms} ms); then "
        "each foreign key was added NOT VALID in one short transaction and validated in its own:\n\n"
        f"{md_list(plan.check.entries)}"
    )
    if result.foreign_keys:
        rows = [
            {
                "foreign key": o.name,
                "state": o.state,
                "note": o.detail or "",
                "validation": o.duration_s or "",
            }
            for o in result.foreign_keys
        ]
        text += "\n## Foreign keys\n\n" + md_table(rows)
    return text


@task(name="restore", cache_policy=NO_CACHE)
def restore(
    db: Database,
    plan: RestorePlan,
    no_owner: bool,
    timeout_s: int,
    schedule: LockSchedule,
    artifact_prefix: str,
) -> RestoreResult:
    """pg_restore of the tables in one lock-safe transaction, then their foreign keys NOT VALID, validated."""
    result = run_restore(
        db,
        plan,
        no_owner=no_owner,
        timeout_s=timeout_s,
        schedule=schedule,
        progress_key=f"{artifact_prefix}-progress",
    )
    logger = run_logger()
    logger.info(
        "restored %d entries into %s in %.2f s (%d pg_restore attempt(s))",
        result.entries,
        db.display,
        result.duration_s,
        result.attempts,
    )
    for outcome in result.foreign_keys:
        if outcome.state in ("missing", "not valid"):
            logger.warning("foreign key %s is %s: %s", outcome.name, outcome.state.upper(), outcome.detail)
    publish_markdown(
        f"{artifact_prefix}-restore", render_restore(result, plan, db), "What the restore put back"
    )
    return result


@task(name="restore-verification", cache_policy=NO_CACHE)
def restore_verification(
    db: Database, plan: RestorePlan, restored: RestoreResult | None, artifact_prefix: str
) -> RestoreVerification:
    """Row counts, checksums, sequence values, objects and validated foreign keys, against the manifest."""
    try:
        result = verify_restored(db, plan, restored)
    except sa.exc.DBAPIError as exc:
        raise VerificationFailed(
            f"restore verification could not read the tables: {_first_line(exc, db)}"
        ) from None
    except VerificationFailed as exc:
        publish_markdown(
            f"{artifact_prefix}-verification", render_verification(exc.report), "Restore verification"
        )
        raise
    get_run_logger().info("restore verification passed: %s", ", ".join(t.name for t in result.tables))
    publish_markdown(f"{artifact_prefix}-verification", render_verification(result), "Restore verification")
    return result


def render_text(report) -> str:
    """A RestoreReport as a short text for a terminal (``safedrop restore``)."""
    headline = {
        "restored": "RESTORED — the dropped tables and what CASCADE removed are back, and verified",
        "already-restored": "ALREADY RESTORED — the tables are there with exactly the backup's contents",
        "ready": "READY — the archive checks out; `safedrop restore` without --dry-run would restore it",
        "refused": "REFUSED — nothing was changed",
        "failed": "FAILED",
    }[report.status]
    lines = [f"safedrop: {headline}", f"  backup {report.backup} into {report.database or '?'}"]
    lines += [f"  ✗ {reason}" for reason in report.reasons]
    lines += [f"  ! {warning}" for warning in report.warnings]
    if report.check and report.status in ("ready", "restored"):
        lines.append(
            f"  {'restored' if report.restore else 'would restore'} {len(report.check.entries)} entries:"
        )
        lines += [f"    {entry}" for entry in report.check.entries]
    if report.verification:
        for t in report.verification.tables:
            rows = "no" if t.rows_found is None else f"{t.rows_found:,}"
            checksum = "matches" if t.checksum_matches else "DIFFERS"
            lines.append(f"  verified {t.name}: {rows} rows, checksum {checksum}")
        lines += [f"  sequence {s}" for s in report.verification.sequences]
        lines += [f"  foreign key {k}" for k in report.verification.foreign_keys]
    if report.restore and report.restore.attempts > 1:
        lines.append(
            f"  pg_restore: {report.restore.attempts} attempts "
            f"({report.restore.lock_timeouts} lock timeouts, each rolled back)"
        )
    if report.duration_s is not None:
        lines.append(f"  took {report.duration_s} s")
    return "\n".join(lines) + "\n"
