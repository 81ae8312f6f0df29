"""Restore: put back exactly what a safedrop drop removed, from the archive its backup step wrote.

What goes back comes from the archive's manifest (``<archive>.manifest.json``, written by the backup
step in the dump's own snapshot): every catalog object the drop removes — the targets with their rows,
sequences (and their values), defaults, constraints, indexes, triggers, policies, rules, row
security, partitions, grants and comments, and what CASCADE took from elsewhere (foreign keys on
surviving tables, views, materialized views, functions) — identified by the oids the archive itself
records (``safedrop.restore.tocfilter``).

Without queueing production behind it, in three steps:

1. Everything but the foreign keys: ``pg_restore --single-transaction --exit-on-error --use-list``,
   all of it or nothing, its lock waits bounded from outside and retried within the lock-wait budget
   (``safedrop.restore.restoring``); when the budget is spent nothing was restored, and the message names the
   sessions holding the locks.
2. The foreign keys, ``NOT VALID`` (no scan), in one short lock-safe transaction: SHARE ROW EXCLUSIVE
   on both tables of each key — which makes writers of ``credits`` wait — lasts milliseconds instead of
   a whole scan (``safedrop.restore.foreignkeys``).
3. Each key validated in its own transaction (SHARE UPDATE EXCLUSIVE: writes go on). A key that rows
   violate stays NOT VALID — enforced for new rows — and is named, with the rows and what to do.

Refusals (nothing changed, exit code 3): no manifest beside the archive; the archive's size or sha256
differs from the manifest (corrupted or truncated); the database is not the one the backup was taken
of — another name, or the same name on another cluster (``system_identifier``) — unless the operator
chose it (``into_other_database``); the installed pg_restore cannot read the archive;
a target, or anything else to restore, already exists; the locks could not be had within the budget.
Two exceptions, both when every target is there with exactly the manifest's rows: if everything else
is there too, and every foreign key validated, it is "already restored" (nothing to do); if only some
other removed objects are missing (say foreign keys dropped by hand, or by a drop that committed them
separately before its table drop gave up) or a restored foreign key is still NOT VALID, only those go
back or are validated. Afterwards each target's row count and content checksum, each sequence's
value, each restored object's presence and each foreign key's validation are compared with the
manifest; a difference raises.

This module is the three steps — ``plan_restore`` (the precheck), ``run_restore``, ``verify_restored``
— with their tasks and reports. The password reaches pg_restore only through its environment
(``PGPASSWORD``), never argv.
"""

from __future__ import annotations

import time
from pathlib import Path

import sqlalchemy as sa

from safedrop.backup.archive import read_toc
from safedrop.backup.manifest import check_archive, locate_backup, manifest_path
from safedrop.errors import NOTHING_CHANGED, RestoreFailed, RestoreRefused, VerificationFailed
from safedrop.pg import queries
from safedrop.pg.checksums import pin_text_settings, sequence_states
from safedrop.pg.database import Database, connect, error_line, identify, reading
from safedrop.pg.lockschedule import Attempts, LockSchedule
from safedrop.pg.pgtools import find_pg_restore
from safedrop.report.artifacts import publish_markdown, run_progress
from safedrop.report.progress import RestoreProgress, human_bytes
from safedrop.restore.foreignkeys import (
    add_foreign_keys,
    foreign_key_states,
    key_problems,
    key_state,
    read_foreign_keys,
    validate_foreign_key,
)
from safedrop.restore.restoreplan import (
    Existing,
    RestorePlan,
    compare_tables,
    manifest_targets,
    object_exists,
    read_existing,
    repair_note,
)
from safedrop.restore.restorereport import render_check, render_restore, render_verification
from safedrop.restore.restoring import replay_tables
from safedrop.restore.tocfilter import (
    SESSION_ENTRIES,
    entry_names,
    not_restorable,
    only_entries_for,
    restored_objects,
    select_entries,
    split_foreign_keys,
)
from safedrop.results import (
    BackupManifest,
    DatabaseIdentity,
    ForeignKeyOutcome,
    RestoreCheck,
    RestoredTable,
    RestoreResult,
    RestoreVerification,
)
from safedrop.runlog import run_logger
from safedrop.steps import step

# --------------------------------------------------------------------------------------------------
# 1. The precheck: every refusal, before anything changes
# --------------------------------------------------------------------------------------------------


def _server_info(db: Database) -> tuple[dict, DatabaseIdentity]:
    """The server's version and role, and which database this is; refuses a read-only standby."""
    with connect(db) as conn:
        info = queries.one(conn, "server_info")
        identity = identify(conn, db)
        conn.rollback()
    if info["in_recovery"]:
        raise RestoreRefused(
            f"the server at {db.display} is a read-only standby; point the database URL at the primary; "
            f"{NOTHING_CHANGED}"
        )
    return info, identity


def _backup_identity(manifest: BackupManifest) -> DatabaseIdentity:
    """Which database the backup was taken of, as its manifest records it."""
    address = manifest.server.rpartition("@")[2].partition("/")[0]  # host:port
    return DatabaseIdentity(
        source="the backup's manifest",
        host=address,
        database=manifest.database,
        system_identifier=manifest.system_identifier,
    )


def _named(identity: DatabaseIdentity, unknown: str) -> str:
    system = f"system {identity.system_identifier}" if identity.system_identifier else unknown
    return f"database {identity.database!r} ({system})"


def _check_identity(
    archive: Path, manifest: BackupManifest, target: DatabaseIdentity, into_other_database: bool
) -> list[str]:
    """Refuse a restore into another database than the backup's (another name, or the same name on
    another cluster) unless ``into_other_database``; the warnings of what could not be compared."""
    backup = _backup_identity(manifest)
    theirs = _named(backup, "system identifier not recorded")
    ours = _named(target, "system identifier unreadable")
    if backup.differs_from(target):
        if into_other_database:
            return [
                f"restoring into {ours}, as asked (--into-other-database); the backup was taken of {theirs}"
            ]
        if backup.database != target.database:
            what = f"another database; restore it into {backup.database!r}"
            here = repr(target.database)
        else:
            what = (
                f"the same name on another cluster; restore it into {backup.database!r} on the cluster with "
                f"system identifier {backup.system_identifier}"
            )
            here = "this one"
        raise RestoreRefused(
            f"the backup {archive} was taken of {theirs}, and this is {ours}: {what}, or pass "
            f"--into-other-database (parameter into_other_database) to restore it into {here} on purpose; "
            f"{NOTHING_CHANGED}"
        )
    if not backup.system_identifier:
        return [
            "the backup's manifest records no system identifier (written before safedrop recorded one, or "
            "by a role that may not read it): it was compared with this database by name only "
            f"({target.database!r}), so the same name on another cluster would not have been told apart"
        ]
    if not target.system_identifier:
        return [
            "this role may not read the cluster's system identifier (pg_control_system()): the backup was "
            f"compared with this database by name only ({target.database!r})"
        ]
    return []


def _warnings(manifest: BackupManifest, existing: Existing, lost: list[str]) -> list[str]:
    warnings: list[str] = []
    for row in existing.ledger:
        if row["backup_sha256"] and row["backup_sha256"] != manifest.sha256:
            warnings.append(
                f"the ledger says {row['schema_name']}.{row['table_name']} was dropped on "
                f"{row['dropped_at']:%Y-%m-%d %H:%M} UTC after the backup {row['backup_path']}, not this one"
            )
    if not existing.ledger and not existing.present_targets:
        warnings.append("safedrop's ledger has no record of dropping these tables")
    return warnings + [f"not in the archive, so not restored: {item}" for item in lost]


def _refuse_collisions(plan: RestorePlan, existing: Existing) -> None:
    """Refuse (nothing changed) when a target or another object to restore exists, or a table the
    restored objects belong on is gone."""
    present_targets, check = existing.present_targets, plan.check
    if present_targets:
        one = len(present_targets) == 1
        differs = " with other contents than the backup's" if existing.compared else ""
        names = ", ".join(t.name for t in present_targets)
        raise RestoreRefused(
            f"{names} already exist{'s' if one else ''}{differs}; restore puts back only tables that are "
            f"gone — rename or drop {'it' if one else 'them'} first; "
            f"{NOTHING_CHANGED}",
            report=check,
        )
    if existing.present:
        raise RestoreRefused(
            f"{', '.join(o.description for o in existing.present)} already exist(s), and restoring would "
            f"collide with it; remove or rename it first; {NOTHING_CHANGED}",
            report=check,
        )
    if existing.missing_survivors:
        one = len(existing.missing_survivors) == 1
        raise RestoreRefused(
            f"{', '.join(existing.missing_survivors)} no longer exist(s), but what the drop removed from "
            f"{'it' if one else 'them'} (foreign keys, triggers, …) would have to go back onto it; "
            f"{NOTHING_CHANGED}",
            report=check,
        )


def _decide(plan: RestorePlan, existing: Existing) -> RestorePlan:
    """Already restored, a repair of what is missing, a refusal, or the whole restore."""
    if existing.tables_intact and len(existing.present) == len(plan.objects) and not plan.foreign_keys:
        plan.already_restored = True
        return plan
    if existing.tables_intact:
        # The tables are there with exactly the backup's rows, but some of what the drop removes is
        # gone (foreign keys dropped by hand, or committed before a table drop gave up), or a foreign
        # key an earlier restore put back is not validated yet: put back, or validate, only that.
        missing = [o for o in plan.objects if o not in existing.present]
        plan.entries = only_entries_for(plan.entries, missing)
        plan.objects, plan.repair = missing, True
        note = repair_note(missing, [k for k in plan.foreign_keys if k.present])
        plan.warnings.append(note)
        plan.check.warnings.append(note)
        plan.check.entries = entry_names(plan.entries)
        return plan
    _refuse_collisions(plan, existing)
    return plan


def plan_restore(db: Database, backup_path: str | Path, *, into_other_database: bool = False) -> RestorePlan:
    """Every refusal, before anything changes: the manifest, the archive's hash, the database the backup
    belongs in (unless ``into_other_database``), the tools, what exists."""
    archive, manifest = locate_backup(backup_path)
    check_archive(archive, manifest)
    info, identity = _server_info(db)
    identity_warnings = _check_identity(archive, manifest, identity, into_other_database)
    tools = find_pg_restore(info["server_version_num"], manifest)
    entries = select_entries(
        read_toc(archive, tools, failure=RestoreRefused, suffix=NOTHING_CHANGED), manifest
    )
    objects = restored_objects(entries, manifest)
    existing = read_existing(db, manifest, objects, read_foreign_keys(db, archive, tools, entries))
    lost = not_restorable(entries, manifest)
    warnings = identity_warnings + _warnings(manifest, existing, lost)
    check = RestoreCheck(
        archive=str(archive),
        manifest=str(manifest_path(archive)),
        scope=manifest.scope,
        backup_created_at=manifest.created_at,
        targets=[t.name for t in manifest.targets],
        entries=entry_names(entries),
        not_restorable=lost,
        present=[o.description for o in existing.present],
        pg_restore_version=tools.version_line,
        warnings=warnings,
    )
    plan = RestorePlan(
        archive,
        manifest,
        tools,
        entries,
        objects,
        check,
        warnings=warnings,
        server_version_num=info["server_version_num"],
        # what the restore adds NOT VALID, or (left NOT VALID by an earlier restore) only validates
        foreign_keys=[k for k in existing.keys if not k.present or (k.valid and not k.validated)],
    )
    return _decide(plan, existing)


# --------------------------------------------------------------------------------------------------
# 2. The restore: the tables in one lock-safe pg_restore, then the foreign keys NOT VALID, validated
# --------------------------------------------------------------------------------------------------


def _foreign_keys(
    db: Database, plan: RestorePlan, schedule: LockSchedule, timeout_s: float
) -> list[ForeignKeyOutcome]:
    """Add the missing keys NOT VALID in one transaction, then validate each (or say why not)."""
    seconds = max(int(timeout_s), 1)
    adding = [k for k in plan.foreign_keys if not k.present]
    targets = set(manifest_targets(plan.manifest))
    outcomes = add_foreign_keys(db, targets, adding, schedule=schedule, statement_timeout_s=seconds)
    missing = {o.name for o in outcomes}
    for key in [k for k in plan.foreign_keys if k.label not in missing]:
        if key.valid:
            outcomes.append(validate_foreign_key(db, key, schedule=schedule, statement_timeout_s=seconds))
        else:
            outcomes.append(ForeignKeyOutcome(name=key.label, state="not valid in the backup"))
    return outcomes


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
    tables = split_foreign_keys(plan.entries)[0]
    count = len([e for e in tables if e.desc not in SESSION_ENTRIES])
    progress = RestoreProgress(run_progress("pg_restore", progress_key), count)
    tally = Attempts()
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
    outcomes = _foreign_keys(db, plan, schedule, timeout_s)
    return RestoreResult(
        entries=len(entry_names(plan.entries)),
        duration_s=round(time.monotonic() - started, 3),
        tables_s=tables_s,
        attempts=tally.count,
        lock_timeouts=tally.lock_timeouts,
        lock_timeout_ms=schedule.first_timeout_ms,
        foreign_keys=outcomes,
    )


# --------------------------------------------------------------------------------------------------
# 3. The verification: rows, checksums, sequences, objects and foreign keys against the manifest
# --------------------------------------------------------------------------------------------------


def _problems(
    plan: RestorePlan, tables: list[RestoredTable], sequences: dict, missing: list[str]
) -> list[str]:
    problems = []
    for t in tables:
        if t.rows_found != t.rows_expected or not t.checksum_matches:
            problems.append(
                f"{t.name} has {t.rows_found if t.rows_found is not None else 'no'} rows"
                f"{'' if t.checksum_matches else ' and a different checksum'}; "
                f"the backup had {t.rows_expected}"
            )
    for s in [] if plan.repair else plan.manifest.sequences:  # a repair leaves the (live) sequences alone
        got = sequences.get(s.name)
        if got is None or (got.last_value, got.is_called) != (s.last_value, s.is_called):
            found = f"{got.last_value} (is_called {got.is_called})" if got else "missing"
            problems.append(
                f"sequence {s.name} is {found}; the backup had {s.last_value} (is_called {s.is_called})"
            )
    return problems + [f"{m} is not back" for m in missing]


def verify_restored(
    db: Database, plan: RestorePlan, restored: RestoreResult | None = None
) -> RestoreVerification:
    """Rows, checksums, sequence values, objects, and each foreign key validated, compared with the
    manifest. Raises on a difference (``restored`` says why a foreign key is missing or NOT VALID)."""
    manifest = plan.manifest
    key_addresses = {("table constraint", (k.table.schema, k.table.name, k.name)) for k in plan.foreign_keys}
    others = [o for o in plan.objects if (o.type, tuple(o.names)) not in key_addresses]
    with reading(db, snapshot=True) as conn:
        pin_text_settings(conn)
        tables = compare_tables(conn, manifest)
        sequences = {s.name: s for s in sequence_states(conn, [s.name for s in manifest.sequences])}
        missing = [o.description for o in others if not object_exists(conn, o)]
        keys = foreign_key_states(conn, plan.foreign_keys)
    problems = _problems(plan, tables, sequences, missing)
    key_trouble = key_problems(keys, restored)
    result = RestoreVerification(
        tables=tables,
        sequences=[
            f"{s.name} = {s.last_value}{'' if s.is_called else ' (not called yet)'}"
            for s in sequences.values()
        ],
        objects_back=len(plan.objects) - len(missing) - len([k for k in keys if not k.present]),
        foreign_keys=[f"{k.label}: {key_state(k)}" for k in keys],
        reasons=problems + key_trouble,
    )
    if problems:
        raise VerificationFailed(
            f"restore verification failed: {'; '.join(problems + key_trouble)} — the restore committed; "
            f"compare with the archive {plan.archive} before anything else",
            report=result,
        )
    if key_trouble:
        raise VerificationFailed(
            "restore verification failed: the tables are back with every row and sequence as in the "
            f"backup, but {'; '.join(key_trouble)}",
            report=result,
        )
    return result


# --------------------------------------------------------------------------------------------------
# Artifacts and tasks
# --------------------------------------------------------------------------------------------------


@step("restore-precheck", retry_delays=(1, 5))
def restore_precheck(
    db: Database, backup_path: str, artifact_prefix: str, into_other_database: bool = False
) -> RestorePlan:
    """The archive matches its manifest; this is the database it was taken of (or another one, chosen);
    nothing to restore exists; the entries to replay."""
    logger = run_logger()
    logger.info("checking %s against its manifest, and %s", backup_path, db.display)
    try:
        plan = plan_restore(db, backup_path, into_other_database=into_other_database)
    except sa.exc.DBAPIError as exc:
        raise RestoreFailed(
            f"the restore precheck failed: {error_line(exc, db)}; {NOTHING_CHANGED}"
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


@step("restore")
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


@step("restore-verification")
def restore_verification(
    db: Database, plan: RestorePlan, restored: RestoreResult | None, artifact_prefix: str
) -> RestoreVerification:
    """Row counts, checksums, sequence values, objects and validated foreign keys, against the manifest."""
    try:
        result = verify_restored(db, plan, restored)
    except sa.exc.DBAPIError as exc:
        raise VerificationFailed(
            f"restore verification could not read the tables: {error_line(exc, db)}"
        ) from None
    except VerificationFailed as exc:
        publish_markdown(
            f"{artifact_prefix}-verification", render_verification(exc.report), "Restore verification"
        )
        raise
    run_logger().info("restore verification passed: %s", ", ".join(t.name for t in result.tables))
    publish_markdown(f"{artifact_prefix}-verification", render_verification(result), "Restore verification")
    return result
