"""Step: a verified backup you can restore from, before anything is dropped.

``take_backup`` opens a REPEATABLE READ transaction, exports its snapshot, and runs ``pg_dump
--snapshot=<id>`` while that transaction stays open; meanwhile, in the same snapshot, it counts each
target's rows, takes an order-independent content checksum, reads the sequences the drop removes and
records every catalog object the drop removes. So the archive and the numbers in its manifest
describe the very same data.

Scope ``database`` dumps the whole database. Scope ``targets`` dumps every definition of the database
(so whatever CASCADE removes — views, foreign keys on surviving tables, functions — can be put back)
but the rows of the targets only (their partitions and inheritance children included); the other
tables' rows are left out with ``--exclude-table-data``, and large objects with ``--no-blobs``.

Then: the archive's table of contents must hold each target (a partitioned target: each of its leaf
partitions) with its data; optionally (``verify_restore``) the definitions and the targets' rows are
restored into a scratch database and compared with the manifest; the archive's sha256 is taken; and
``<archive>.manifest.json`` (0600) is written beside it. The restore trusts an archive only through
that manifest.

The password reaches pg_dump and pg_restore only through their environment (``PGPASSWORD``), never
argv; files are 0600 in a 0700 directory; a failed or interrupted dump never leaves a partial file.
Long dumps report progress (Prefect log lines, a progress artifact, a bar on a terminal).

This module is the step: ``take_backup`` (the plain function, its options in ``BackupOptions``),
``backup_of_run`` (a resumed run reuses its intact archive) and the ``backup`` task. The pieces live
in the library: ``safedrop.pg.pgtools`` (which pg_dump), ``safedrop.pg.processes``,
``safedrop.pg.checksums``, and in ``safedrop.backup``: ``snapshotdump`` (the dump in its snapshot),
``dumpplan``, ``pgdump``, ``backupfiles``, ``archive``, ``manifest`` and ``scratchrestore``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa

from safedrop import paths
from safedrop.backup.archive import TocEntry, archive_digest, read_toc, verify_archive
from safedrop.backup.backupfiles import prepare_backup_dir, reserve_backup_file, stored_archive_name
from safedrop.backup.dumpplan import Scope, check_row_security
from safedrop.backup.manifest import MANIFEST_SUFFIX, manifests_of_run, write_manifest
from safedrop.backup.scratchrestore import verify_by_restore
from safedrop.backup.snapshotdump import (
    BackupOptions,
    Dumped,
    StoreDestination,
    dump_in_snapshot,
    dump_in_snapshot_to_store,
)
from safedrop.backup.storedump import not_stored, stored_toc
from safedrop.backup.storemanifest import check_stored_archive, stored_manifests_of_run, write_stored_manifest
from safedrop.errors import DID_NOT_RUN, BackupFailed, RestoreRefused
from safedrop.migration import Migration, TableName
from safedrop.pg.checksums import CHECKSUM_METHOD
from safedrop.pg.database import Database, error_line
from safedrop.pg.pgtools import PgTools, find_pg_dump
from safedrop.report.artifacts import md_table, publish_markdown, run_progress
from safedrop.report.progress import human_bytes
from safedrop.results import BackupManifest, BackupResult
from safedrop.runlog import run_logger
from safedrop.steps import step
from safedrop.store import s3 as store
from safedrop.store.location import S3Location, parse_s3
from safedrop.store.s3 import encryption_args


def backup_destination(configured: str | None, options: BackupOptions) -> Path | S3Location:
    """Where a run's backups go (``backup_dir``, else ``$SAFEDROP_BACKUP_DIR``, else the machine's
    default): a directory, or a bucket and prefix. Raises UsageError for a malformed ``s3://`` URI or
    options no backup there can honour — checked before anything else runs."""
    options.check()
    where = paths.backup_dir(configured)
    if isinstance(where, Path):
        return where
    location = parse_s3(where, "backup_dir")
    options.check_streamable(location)
    return location


def _directory(backup_dir: Path, scope: Scope) -> tuple[Path, list[str]]:
    """The backup directory, and a warning when one we did not create is open to other users."""
    directory, created = prepare_backup_dir(backup_dir)
    mode = directory.stat().st_mode & 0o777
    if created or not mode & 0o077:
        return directory, []
    holds = "every row of the database" if scope == "database" else "every row of the targets"
    return directory, [
        f"backup directory {directory} is accessible to other users (mode {mode:04o}); "
        f"the archive holds {holds}"
    ]


def _prove_by_restore(
    db: Database,
    tools: PgTools,
    archive: Path | str,
    entries: list[TocEntry],
    dumped: Dumped,
    options: BackupOptions,
    progress_key: str | None,
    stream: Callable[[], Iterable[bytes]] | None = None,
) -> None:
    """``verify_restore``: the targets restored into a scratch database match the manifest."""
    try:
        verify_by_restore(
            db,
            tools,
            archive,
            entries,
            dumped.plan,
            dumped.checksums,
            dumped.sequences,
            timeout_s=options.timeout_s,
            progress=run_progress("verify_restore", f"{progress_key}-verify" if progress_key else None),
            stream=stream,
        )
    except sa.exc.DBAPIError as exc:
        raise BackupFailed(
            f"verify_restore: the scratch database failed: {error_line(exc, db)}; the archive {archive} is "
            f"kept for inspection; {DID_NOT_RUN}"
        ) from None


def _manifest(
    db: Database,
    archive: str,
    digest: tuple[int, str, dict[str, str]],
    options: BackupOptions,
    tools: PgTools,
    dumped: Dumped,
    *,
    migration: Migration | None,
    flow_run_id: str | None,
    created_at: str,
    duration_s: float,
) -> BackupManifest:
    """What the archive holds, as the restore will trust it: versions, scope, the snapshot's numbers."""
    size, sha256, files = digest
    return BackupManifest(
        archive=archive,
        archive_format=options.archive_format,
        bytes=size,
        sha256=sha256,
        files=files,
        database=dumped.identity.database if dumped.identity else db.url.database or "",
        system_identifier=dumped.identity.system_identifier if dumped.identity else None,
        server=db.display,
        server_version=dumped.info["server_version"],
        server_version_num=dumped.info["server_version_num"],
        pg_dump_version=tools.version_line,
        pg_dump_version_num=tools.version_num,
        scope=options.scope,
        compression=options.compression,
        jobs=options.jobs,
        snapshot=dumped.exported["snapshot_id"],
        txid_snapshot=dumped.exported["txid_snapshot"],
        migration=migration.name if migration else None,
        created_at=created_at,
        duration_s=duration_s,
        flow_run_id=flow_run_id,
        targets=dumped.checksums,
        sequences=dumped.sequences,
        removed=dumped.plan.removed,
        cascade=dumped.plan.cascade,
        checksum_method=CHECKSUM_METHOD,
        verified_by_restore=options.verify_restore,
    )


def take_backup(
    db: Database,
    targets: list[TableName],
    backup_dir: Path | S3Location,
    options: BackupOptions | None = None,
    *,
    server_version_num: int,
    migration: Migration | None = None,
    allow_cascade: Sequence[str] = (),
    flow_run_id: str | None = None,
    progress_key: str | None = None,
) -> BackupResult:
    """Dump the database (``options.scope``) to a new archive in ``backup_dir``, prove it, write its manifest.

    Order: choose pg_dump (refuses a too-old one) → row-level-security check → create the directory and
    the ``.partial`` file (the writability check) → open the snapshot transaction, read what the dump
    must hold → pg_dump ``--snapshot`` while the same snapshot counts and checksums the targets → fsync
    and rename → table-of-contents check → sha256 → optional scratch restore → manifest. Any failure
    before the rename removes the partial file; a later failure keeps the (complete) archive for
    inspection, without a manifest. Raises BackupFailed (``TransientBackupFailure`` when a retry may help).
    """
    started, created_at = time.monotonic(), datetime.now(UTC).isoformat(timespec="seconds")
    options = options or BackupOptions()
    options.check()
    if isinstance(backup_dir, S3Location):
        return _take_stored_backup(
            db,
            targets,
            backup_dir,
            options,
            server_version_num=server_version_num,
            migration=migration,
            allow_cascade=allow_cascade,
            flow_run_id=flow_run_id,
            progress_key=progress_key,
        )
    tools = find_pg_dump(server_version_num)
    check_row_security(db, targets)
    directory, warnings = _directory(Path(backup_dir), options.scope)
    partial, final = reserve_backup_file(
        directory, db.url.database or "database", directory=options.archive_format == "directory"
    )
    dumped = dump_in_snapshot(
        db,
        tools,
        targets,
        partial,
        final,
        options,
        server_version_num=server_version_num,
        migration=migration,
        allow_cascade=allow_cascade,
        progress_key=progress_key,
    )
    entries = read_toc(final, tools)
    tables = verify_archive(final, targets, tools, layout=dumped.plan.layout, entries=entries)
    size, digest, files = archive_digest(final)
    if options.verify_restore:
        _prove_by_restore(db, tools, final, entries, dumped, options, progress_key)
    manifest = _manifest(
        db,
        final.name,
        (size, digest, files),
        options,
        tools,
        dumped,
        migration=migration,
        flow_run_id=flow_run_id,
        created_at=created_at,
        duration_s=round(time.monotonic() - started, 3),
    )
    written = write_manifest(manifest, final)
    run_logger().debug("manifest %s written", written)
    return _result(
        manifest, final, written, tables, warnings, duration_s=round(time.monotonic() - started, 3)
    )


def _take_stored_backup(
    db: Database,
    targets: list[TableName],
    location: S3Location,
    options: BackupOptions,
    *,
    server_version_num: int,
    migration: Migration | None,
    allow_cascade: Sequence[str],
    flow_run_id: str | None,
    progress_key: str | None,
) -> BackupResult:
    """``take_backup`` into object storage: the archive streamed into ``location`` while pg_dump writes
    it (nothing of the database's size on local disk), its sha256 taken on the way and checked against
    what the store holds; the table of contents and the targets' presence read back from the stored
    object; the manifest an object beside it. A failure before the upload completes leaves nothing in
    the store; a later one keeps the (complete) object for inspection, without a manifest."""
    started, created_at = time.monotonic(), datetime.now(UTC).isoformat(timespec="seconds")
    options.check_streamable(location)
    tools = find_pg_dump(server_version_num)
    check_row_security(db, targets)
    try:
        s3 = store.client(location)
        store.check_writable(s3, location)
    except store.StoreError as exc:
        raise not_stored(exc) from None
    name = stored_archive_name(db.url.database or "database")
    encryption = encryption_args(options.encryption)
    destination = StoreDestination(location, name, s3, encryption)
    dumped, stored = dump_in_snapshot_to_store(
        db,
        tools,
        targets,
        destination,
        options,
        server_version_num=server_version_num,
        migration=migration,
        allow_cascade=allow_cascade,
        progress_key=progress_key,
    )
    entries = stored_toc(tools, s3, location, name, version_id=stored.version_id)
    tables = verify_archive(stored.uri, targets, tools, layout=dumped.plan.layout, entries=entries)
    if options.verify_restore:
        _prove_by_restore(
            db,
            tools,
            stored.uri,
            entries,
            dumped,
            options,
            progress_key,
            stream=lambda: store.read(s3, location, name, stored.version_id),
        )
    manifest = _manifest(
        db,
        name,
        (stored.bytes, stored.sha256, {}),
        options,
        tools,
        dumped,
        migration=migration,
        flow_run_id=flow_run_id,
        created_at=created_at,
        duration_s=round(time.monotonic() - started, 3),
    ).model_copy(
        update={
            "uri": stored.uri,
            "version_id": stored.version_id,
            "encryption": stored.encryption,
            "kms_key_id": stored.kms_key_id,
        }
    )
    try:
        written = write_stored_manifest(s3, location, manifest, encryption)
    except store.StoreError as exc:
        raise not_stored(exc) from None
    return _result(manifest, stored.uri, written, tables, [], duration_s=round(time.monotonic() - started, 3))


# What a BackupResult says as its manifest says it.
FROM_MANIFEST = {
    "bytes",
    "sha256",
    "pg_dump_version",
    "scope",
    "archive_format",
    "compression",
    "targets",
    "verified_by_restore",
    "txid_snapshot",
}


def _result(
    manifest: BackupManifest,
    archive: Path | str,
    manifest_file: Path | str,
    tables: list[str],
    warnings: list[str],
    *,
    duration_s: float,
) -> BackupResult:
    """What the step returns about an archive and its manifest."""
    return BackupResult(
        **manifest.model_dump(include=FROM_MANIFEST),
        path=str(archive),
        duration_s=duration_s,
        tables_in_archive=tables,
        warnings=warnings,
        manifest_path=str(manifest_file),
    )


def backup_of_run(
    backup_dir: Path | S3Location,
    flow_run_id: str,
    server_version_num: int,
    targets: Sequence[TableName] = (),
) -> tuple[BackupResult | None, str | None]:
    """The archive an earlier attempt of this flow run wrote into ``backup_dir`` (a directory or a
    bucket's prefix), proven intact, or None with why it is not reused.

    A run that was suspended for approval starts again from the top when it is resumed — perhaps on
    another worker: it reuses the backup it took before (its manifest names the flow run) instead of
    dumping the database twice — only when the manifest's targets are exactly ``targets`` (a migration
    changed meanwhile needs a new backup) and the archive still matches its manifest and holds every
    target (a partitioned one: each of its leaf partitions). Otherwise a new one is taken.
    """
    if not flow_run_id:
        return None, None
    if isinstance(backup_dir, S3Location):
        return _stored_backup_of_run(backup_dir, flow_run_id, server_version_num, targets)
    why = None
    for manifest_file, manifest in manifests_of_run(Path(backup_dir), flow_run_id):
        archive = manifest_file.parent / manifest.archive
        why = _other_targets(manifest, targets, archive)
        if why:
            continue
        size, digest, _files = archive_digest(archive)
        if (size, digest) != (manifest.bytes, manifest.sha256):
            why = f"the backup {archive} no longer matches its manifest: taking a new one"
            continue
        try:
            tables = _targets_in(archive, manifest, find_pg_dump(server_version_num))
        except BackupFailed as exc:
            why = f"{exc}: taking a new one"
            continue
        return _reused(manifest, archive, manifest_file, tables), None
    return None, why


def _stored_backup_of_run(
    location: S3Location, flow_run_id: str, server_version_num: int, targets: Sequence[TableName]
) -> tuple[BackupResult | None, str | None]:
    """``backup_of_run`` in object storage: the manifests under the prefix, the object streamed to
    prove its sha256, its table of contents read from the store."""
    why = None
    try:
        s3 = store.client(location)
        manifests = [m for _, m in stored_manifests_of_run(s3, location, flow_run_id)]
    except store.StoreError as exc:
        raise not_stored(exc) from None
    for manifest in manifests:
        uri = location.object_uri(manifest.archive)
        why = _other_targets(manifest, targets, uri)
        if why:
            continue
        try:
            check_stored_archive(s3, location, manifest)
        except RestoreRefused:
            why = f"the backup {uri} no longer matches its manifest: taking a new one"
            continue
        tools = find_pg_dump(server_version_num)
        try:
            entries = stored_toc(tools, s3, location, manifest.archive, version_id=manifest.version_id)
            tables = _targets_in(uri, manifest, tools, entries)
        except BackupFailed as exc:
            why = f"{exc}: taking a new one"
            continue
        return _reused(manifest, uri, uri + MANIFEST_SUFFIX, tables), None
    return None, why


def _other_targets(manifest: BackupManifest, targets: Sequence[TableName], where: str | Path) -> str | None:
    """Why a backup of other tables than ``targets`` is not reused (None: the same ones)."""
    held = {TableName(t.schema_name, t.table_name) for t in manifest.targets}
    wanted = set(targets)
    if not wanted or held == wanted:
        return None
    return (
        f"the backup {where} holds {', '.join(sorted(t.qualified for t in held)) or 'no target'}, "
        f"not the current targets {', '.join(sorted(t.qualified for t in wanted))}: taking a new one"
    )


def _targets_in(
    archive: Path | str, manifest: BackupManifest, tools: PgTools, entries: list[TocEntry] | None = None
) -> list[str]:
    """The manifest's targets (a partitioned one: each leaf partition) found in the archive's TOC."""
    held = [TableName(t.schema_name, t.table_name) for t in manifest.targets]
    layout = {
        TableName(t.schema_name, t.table_name): (t.relkind, [_table(name) for name in t.leaves])
        for t in manifest.targets
    }
    return verify_archive(archive, held, tools, layout=layout, entries=entries)


def _reused(
    manifest: BackupManifest, archive: Path | str, manifest_file: Path | str, tables: list[str]
) -> BackupResult:
    reused = f"reused the backup this flow run took at {manifest.created_at} (archive intact)"
    return _result(manifest, archive, manifest_file, tables, [reused], duration_s=manifest.duration_s)


def _table(qualified: str) -> TableName:
    """``schema.table`` as a manifest records it (quote_ident() form)."""
    table = TableName.from_qualified(qualified)
    if table is None:
        raise BackupFailed(f"the manifest names {qualified!r}, not a schema-qualified table")
    return table


def backup_markdown(result: BackupResult, db: Database) -> str:
    rows = [
        {"item": "database", "value": db.display},
        {"item": "path", "value": f"`{result.path}`"},
        {"item": "manifest", "value": f"`{result.manifest_path}`"},
        {"item": "scope", "value": result.scope},
        {"item": "format", "value": f"{result.archive_format}, compression {result.compression}"},
        {"item": "size", "value": f"{result.bytes:,} bytes ({human_bytes(result.bytes)})"},
        {"item": "sha256", "value": f"`{result.sha256}`"},
        {"item": "pg_dump", "value": result.pg_dump_version},
        {"item": "duration", "value": f"{result.duration_s:.2f} s"},
        {"item": "tables verified in the archive", "value": ", ".join(result.tables_in_archive) or "none"},
        {
            "item": "restored into a scratch database and compared",
            "value": "yes" if result.verified_by_restore else "no",
        },
    ]
    text = "### Backup\n\n" + md_table(rows)
    if result.targets:
        text += "\n#### Targets at the dump's snapshot\n\n" + md_table(
            [{"table": t.name, "rows": f"{t.rows:,}", "checksum": t.checksum} for t in result.targets]
        )
    if result.warnings:
        text += "\n" + "".join(f"- ⚠️ {w}\n" for w in result.warnings)
    return text


@step("backup", retry_delays=(2, 10))
def backup(
    db: Database,
    targets: list[TableName],
    backup_dir: Path | S3Location,
    options: BackupOptions | None = None,
    *,
    server_version_num: int,
    artifact_prefix: str,
    migration: Migration | None = None,
    allow_cascade: Sequence[str] = (),
    flow_run_id: str | None = None,
) -> BackupResult:
    """Take and verify a backup with its manifest; publish `<artifact_prefix>-backup` (and progress).

    A flow run resumed after a suspension reuses the intact backup it took before.
    """
    logger = run_logger()
    options = options or BackupOptions()
    result, not_reused = backup_of_run(backup_dir, flow_run_id or "", server_version_num, targets)
    if not_reused:
        logger.warning(not_reused)
    if result is not None:
        logger.info("reusing this flow run's backup %s (sha256 %s, intact)", result.path, result.sha256)
    else:
        logger.info(
            "backing up %s (scope %s, %s format) into %s",
            db.display,
            options.scope,
            options.archive_format,
            backup_dir,
        )
        result = take_backup(
            db,
            targets,
            backup_dir,
            options,
            server_version_num=server_version_num,
            migration=migration,
            allow_cascade=allow_cascade,
            flow_run_id=flow_run_id,
            progress_key=f"{artifact_prefix}-backup-progress",
        )
        logger.info(
            "backup %s: %s, sha256 %s, %.2f s; manifest %s",
            result.path,
            human_bytes(result.bytes),
            result.sha256,
            result.duration_s,
            result.manifest_path,
        )
        for warning in result.warnings:
            logger.warning(warning)
    publish_markdown(
        f"{artifact_prefix}-backup", backup_markdown(result, db), f"Verified backup of {db.display}"
    )
    return result
