"""Restore: put back exactly what a safedrop drop removed, from the archive its backup step wrote.

What goes back comes from the archive's manifest (``<archive>.manifest.json``, written by
``tasks/backup.py`` in the dump's own snapshot): every catalog object the drop removes — the targets
with their rows, sequences (and their values), defaults, constraints, indexes, triggers, policies,
rules, row security, partitions, grants and comments, and what CASCADE took from elsewhere (foreign
keys on surviving tables, views, materialized views, functions) — identified by the oids the archive
itself records. The archive's ``pg_restore --list`` is filtered down to those entries (plus the
comments, grants, sequence values and partition attachments that depend on them) and replayed with
``pg_restore --single-transaction --exit-on-error --use-list``: all of it, or nothing.

Refusals (nothing changed, exit code 3): no manifest beside the archive; the archive's size or sha256
differs from the manifest (corrupted or truncated); the installed pg_restore cannot read the archive;
a target, or anything else to restore, already exists. Two exceptions, both when every target is
there with exactly the manifest's rows: if everything else is there too, it is "already restored"
(nothing to do); if only some other removed objects are missing (say foreign keys dropped by hand, or
by a drop that committed them separately before its table drop gave up), only those go back.
Afterwards each
target's row count and
content checksum, each sequence's value and each restored object's presence are compared with the
manifest; a difference raises.

The password reaches pg_restore only through its environment (``PGPASSWORD``), never argv.
"""

from __future__ import annotations

import re
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import sh
import sqlalchemy as sa
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from sqlalchemy.engine import Connection

from safedrop import queries
from safedrop.artifacts import md_list, md_table, publish_markdown
from safedrop.database import Database, connect
from safedrop.errors import BackupFailed, ConnectionFailed, SafedropError, UsageError, VerificationFailed
from safedrop.migration import TableName
from safedrop.report import (
    BackupManifest,
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
    pin_text_settings,
    read_manifest,
    read_toc,
    run_logger,
    sequence_states,
    table_checksums,
)

NOTHING_CHANGED = "nothing was changed"
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


# --------------------------------------------------------------------------------------------------
# The archive and its manifest
# --------------------------------------------------------------------------------------------------


def locate_backup(path: str | Path) -> tuple[Path, BackupManifest]:
    """The archive (a ``.dump`` file or a ``.dumpdir`` directory; its manifest's path is accepted too)
    and its manifest. A missing archive is a usage error; a missing or unreadable manifest a refusal."""
    raw = Path(path).expanduser()
    if raw.name.endswith(MANIFEST_SUFFIX):
        raw = raw.with_name(raw.name[: -len(MANIFEST_SUFFIX)])
    archive = raw.absolute()
    if not archive.exists():
        raise UsageError(
            f"backup {archive} does not exist; pass the archive the drop wrote (backup_dir/<db>-<time>.dump)"
        )
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
    plan = RestorePlan(archive, manifest, tools, entries, objects, check, warnings=warnings)
    all_match = compared and all(t.rows_found == t.rows_expected and t.checksum_matches for t in compared)
    if all_match and len(present) == len(objects):
        plan.already_restored = True
        return plan
    if all_match:
        # The tables are there with exactly the backup's rows, but some of what the drop removes is
        # gone (foreign keys dropped by hand, or committed before a table drop gave up): put back only that.
        missing = [o for o in objects if o not in present]
        plan.entries = only_entries_for(entries, missing)
        plan.objects, plan.repair = missing, True
        note = (
            "the tables are there with exactly the backup's contents; putting back only what is missing: "
            + ", ".join(o.description for o in missing)
        )
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

    def line(self, text: str) -> None:
        if self._LINE.match(text):
            self.done += 1

    def tick(self) -> None:
        self.reporter.update(
            min(self.done / self.total, 0.99), f"{min(self.done, self.total)} of {self.total} entries"
        )


def run_restore(
    db: Database,
    plan: RestorePlan,
    *,
    no_owner: bool = False,
    timeout_s: float = 3600,
    progress_key: str | None = None,
) -> RestoreResult:
    """Replay the chosen entries in ONE transaction. Raises RestoreFailed (rolled back, nothing changed)."""
    started = time.monotonic()
    count = len([e for e in plan.entries if e.desc not in SESSION_ENTRIES])
    progress = RestoreProgress(Progress("pg_restore", progress_key), count)
    with tempfile.TemporaryDirectory(prefix="safedrop-restore-") as tmp:
        listing = Path(tmp) / "restore.list"
        listing.write_text("".join(e.line + "\n" for e in plan.entries))
        listing.chmod(0o600)
        args = [
            "--single-transaction",
            "--exit-on-error",
            "--verbose",
            "--no-password",
            f"--use-list={listing}",
        ]
        if no_owner:
            args.append("--no-owner")
        args += [_dbname_arg(db.url.database or ""), str(plan.archive)]
        env = {**_tool_env(), **db.libpq_env("pg_restore")}
        try:
            running = _start(plan.tools.pg_restore, args, env=env, timeout_s=timeout_s, on_line=progress.line)
            _wait(running, on_tick=progress.tick)
        except sh.TimeoutException:
            raise RestoreFailed(
                f"pg_restore did not finish within {timeout_s:g} s and was stopped; its transaction was "
                f"rolled back, {NOTHING_CHANGED}"
            ) from None
        except sh.ErrorReturnCode as exc:
            summary = _stderr_summary(exc.stderr or b"", db) or f"exit code {exc.exit_code}"
            raise RestoreFailed(
                f"pg_restore failed and its transaction was rolled back, {NOTHING_CHANGED}: {summary}"
            ) from None
        except OSError as exc:
            raise RestoreFailed(
                f"pg_restore could not be started ({exc.strerror or exc}); {NOTHING_CHANGED}"
            ) from None
    progress.reporter.finish(f"{count} entries")
    return RestoreResult(entries=count, duration_s=round(time.monotonic() - started, 3))


def verify_restored(db: Database, plan: RestorePlan) -> RestoreVerification:
    """Rows, checksums, sequence values and objects, compared with the manifest. Raises on a difference."""
    manifest = plan.manifest
    with connect(db) as conn:
        with conn.begin():
            conn.exec_driver_sql("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            pin_text_settings(conn)
            tables = _compare_tables(conn, manifest)
            sequences = {s.name: s for s in sequence_states(conn, [s.name for s in manifest.sequences])}
            missing = [o.description for o in plan.objects if not object_exists(conn, o)]
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
    result = RestoreVerification(
        tables=tables,
        sequences=[
            f"{s.name} = {s.last_value}{'' if s.is_called else ' (not called yet)'}"
            for s in sequences.values()
        ],
        objects_back=len(plan.objects) - len(missing),
        reasons=problems,
    )
    if problems:
        raise VerificationFailed(
            f"restore verification failed: {'; '.join(problems)} — the restore committed; compare with the "
            f"archive {plan.archive} before anything else",
            report=result,
        )
    return result


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


@task(name="restore", cache_policy=NO_CACHE)
def restore(
    db: Database, plan: RestorePlan, no_owner: bool, timeout_s: int, artifact_prefix: str
) -> RestoreResult:
    """pg_restore of the chosen entries, in one transaction."""
    result = run_restore(
        db, plan, no_owner=no_owner, timeout_s=timeout_s, progress_key=f"{artifact_prefix}-progress"
    )
    run_logger().info("restored %d entries into %s in %.2f s", result.entries, db.display, result.duration_s)
    publish_markdown(
        f"{artifact_prefix}-restore",
        f"# Restore\n\n{result.entries} entries of `{plan.archive}` replayed into `{db.display}` in one "
        f"transaction ({result.duration_s:.2f} s):\n\n{md_list(plan.check.entries)}",
        "What the restore put back",
    )
    return result


@task(name="restore-verification", cache_policy=NO_CACHE)
def restore_verification(db: Database, plan: RestorePlan, artifact_prefix: str) -> RestoreVerification:
    """Row counts, checksums, sequence values and objects compared with the manifest."""
    try:
        result = verify_restored(db, plan)
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
            lines.append(f"  verified {t.name}: {t.rows_found:,} rows, checksum matches")
        lines += [f"  sequence {s}" for s in report.verification.sequences]
    if report.duration_s is not None:
        lines.append(f"  took {report.duration_s} s")
    return "\n".join(lines) + "\n"
