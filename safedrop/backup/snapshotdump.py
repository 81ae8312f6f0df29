"""A backup's dump: pg_dump ``--snapshot`` while the same snapshot counts what it dumps.

This module provides:

- ``BackupOptions``: what travels together into a backup — scope, archive format, jobs, compression,
  timeouts, the size cap, and whether to prove the archive by a scratch restore;
- ``dump_in_snapshot(db, tools, targets, partial, final, options, …)``: opens a REPEATABLE READ
  transaction and exports its snapshot, reads there what the dump must hold (``safedrop.backup.dumpplan``),
  runs pg_dump on that snapshot while the same transaction counts and checksums the targets and reads
  the removed sequences, then fsyncs the archive and renames it into place. The archive and the numbers
  describe the very same data. A failure or interruption kills pg_dump and leaves no partial file;
- ``dump_in_snapshot_to_store(db, tools, targets, destination, options, …)``: the same, the archive
  streamed into object storage (``StoreDestination``: bucket, prefix, name, client, encryption) while
  the snapshot counts — nothing of it on local disk, nothing left in the store on a failure;
- ``Dumped``: what the snapshot said (server, which database and cluster, snapshot ids, plan, counts,
  checksums, sequences).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from safedrop.backup.backupfiles import fsync_dir, remove, seal
from safedrop.backup.dumpplan import DumpPlan, Scope, exported_snapshot, plan_dump
from safedrop.backup.pgdump import ArchiveFormat, dump_failure, pg_dump_args
from safedrop.backup.scratchrestore import require_createdb
from safedrop.backup.storedump import StoreDump
from safedrop.errors import DID_NOT_RUN, UsageError
from safedrop.migration import Migration, TableName
from safedrop.pg import queries
from safedrop.pg.checksums import Contents, sequence_states, target_contents
from safedrop.pg.database import Database, error_line, identify
from safedrop.pg.pgtools import PgTools
from safedrop.pg.processes import ToolFailed, kill, session_env, start, wait
from safedrop.report.artifacts import run_progress
from safedrop.report.progress import DumpProgress, size_of
from safedrop.results import DatabaseIdentity, SequenceState, TableChecksum
from safedrop.retries import backup_failure
from safedrop.store.location import S3Location
from safedrop.store.s3 import PART_BYTES, StoredObject, encryption_args

# Each option, and the run parameter (``DropParameters``) it comes from.
PARAMETERS = {
    "scope": "backup_scope",
    "archive_format": "backup_format",
    "jobs": "backup_jobs",
    "compression": "backup_compression",
    "timeout_s": "backup_timeout_s",
    "lock_wait_s": "lock_wait_budget_s",
    "verify_restore": "verify_restore",
    "encryption": "backup_encryption",
}


@dataclass(frozen=True)
class BackupOptions:
    """How to back up: what (``scope``), in which archive, how fast, for how long, and how to prove it.

    ``lock_wait_s`` bounds pg_dump's wait for each table's lock (``--lock-wait-timeout``): a dump that
    cannot get them stops, naming who holds the table, instead of queueing behind them. ``timeout_s``
    stops pg_dump altogether; ``max_bytes`` caps each file it writes. ``encryption``: the server-side
    encryption of an archive in object storage (``safedrop.store.s3.ENCRYPTION_SETTINGS``).
    """

    scope: Scope = "database"
    archive_format: ArchiveFormat = "custom"
    jobs: int = 1
    compression: int = 1
    timeout_s: int = 3600
    lock_wait_s: float | None = None
    verify_restore: bool = False
    max_bytes: int | None = None
    encryption: str = ""

    @classmethod
    def from_parameters(cls, params) -> BackupOptions:
        """The options a run's parameters (``DropParameters``) ask for."""
        return cls(**{option: getattr(params, name) for option, name in PARAMETERS.items()})

    @property
    def lock_wait_ms(self) -> int | None:
        return int(self.lock_wait_s * 1000) if self.lock_wait_s else None

    def check(self) -> None:
        """Raise UsageError for options no backup can honour."""
        if not 0 <= self.compression <= 9:
            raise UsageError(f"compression must be 0..9, got {self.compression}")
        if self.timeout_s <= 0:
            raise UsageError(f"timeout_s must be positive, got {self.timeout_s}")
        if self.scope not in ("database", "targets"):
            raise UsageError(f"backup scope must be 'database' or 'targets', got {self.scope!r}")
        if self.archive_format not in ("custom", "directory"):
            raise UsageError(f"backup format must be 'custom' or 'directory', got {self.archive_format!r}")
        if self.jobs < 1 or (self.jobs > 1 and self.archive_format != "directory"):
            raise UsageError(f"backup jobs {self.jobs}: parallel dumps (jobs > 1) need the directory format")
        encryption_args(self.encryption)

    def check_streamable(self, location: S3Location) -> None:
        """Raise UsageError unless the archive can stream into object storage (one custom-format file)."""
        if self.archive_format != "custom":
            raise UsageError(
                f"backup format {self.archive_format!r} cannot stream into {location}: a backup in object "
                "storage is one custom-format archive; use backup_format 'custom' or a local backup_dir"
            )


@dataclass
class Dumped:
    """What the dump's snapshot said while pg_dump read it."""

    info: dict[str, Any]  # server_info
    exported: dict[str, str]  # snapshot_id, txid_snapshot
    plan: DumpPlan
    sums: dict[TableName, Contents]
    sequences: list[SequenceState]
    identity: DatabaseIdentity | None = None  # which database (name, cluster) the snapshot is of

    @property
    def checksums(self) -> list[TableChecksum]:
        return [
            TableChecksum(
                name=t.qualified,
                schema_name=t.schema,
                table_name=t.name,
                relkind=self.plan.layout[t][0],
                rows=self.sums[t].rows,
                checksum=self.sums[t].checksum,
                below=self.plan.below.get(t, []),
                leaves=[leaf.qualified for leaf in self.plan.layout[t][1]],
                xmins=self.sums[t].xmins,
            )
            for t in self.plan.targets
        ]


def _pg_dump_in(
    conn: Connection,
    db: Database,
    tools: PgTools,
    partial: Path,
    plan: DumpPlan,
    options: BackupOptions,
    *,
    snapshot: str,
    server_version_num: int,
    progress_key: str | None,
) -> tuple[dict[TableName, Contents], list[SequenceState]]:
    """pg_dump ``--snapshot`` into ``partial`` while ``conn`` (the same snapshot) counts and checksums
    the targets and reads the removed sequences. Raises BackupFailed; kills pg_dump on any failure."""
    if options.archive_format == "directory":
        os.rmdir(partial)  # pg_dump -Fd creates the directory itself (0700 set after)
    progress = DumpProgress(run_progress("pg_dump", progress_key), lambda: size_of(partial), plan.weights)
    args = pg_dump_args(
        partial,
        archive_format=options.archive_format,
        compression=options.compression,
        jobs=options.jobs,
        snapshot=snapshot,
        exclude_data=plan.exclude_data,
        no_blobs=options.scope == "targets",
        verbose=True,
        lock_wait_ms=options.lock_wait_ms,
    )
    env = session_env(db, "pg_dump", server_version_num)
    try:
        running = start(
            tools.pg_dump,
            args,
            env=env,
            timeout_s=options.timeout_s,
            on_line=progress.line,
            max_bytes=options.max_bytes,
        )
        try:
            sums = target_contents(conn, plan.targets)
            sequences = sequence_states(conn, plan.sequences)
        except BaseException:
            kill(running)
            raise
        wait(running, on_tick=progress.tick)
    except ToolFailed as exc:
        raise dump_failure(exc, db, options.lock_wait_ms) from None
    progress.finish()
    return sums, sequences


@dataclass
class _Snapshot:
    """The dump's open snapshot: its connection, the server, the snapshot's ids, which database, and
    what the dump must hold."""

    conn: Connection
    info: dict[str, Any]
    exported: dict[str, str]
    identity: DatabaseIdentity | None
    plan: DumpPlan

    def dumped(self, sums: dict[TableName, Contents], sequences: list[SequenceState]) -> Dumped:
        return Dumped(self.info, self.exported, self.plan, sums, sequences, self.identity)


@contextmanager
def _snapshot_plan(
    db: Database,
    targets: list[TableName],
    options: BackupOptions,
    *,
    migration: Migration | None,
    allow_cascade: Sequence[str],
) -> Iterator[_Snapshot]:
    """The dump's exported snapshot, open for the block, with what it says: the server, which database,
    and what the dump must hold. A database error inside is a one-line BackupFailed."""
    try:
        with exported_snapshot(db) as (conn, exported):
            info = queries.one(conn, "server_info")
            identity = identify(conn, db)
            if options.verify_restore:
                require_createdb(conn, info["current_user"])
            plan = plan_dump(
                conn, targets, scope=options.scope, migration=migration, allow_cascade=allow_cascade
            )
            yield _Snapshot(conn, info, exported, identity, plan)
    except sa.exc.DBAPIError as exc:
        raise backup_failure(
            f"reading the snapshot for the backup failed: {error_line(exc, db)}; {DID_NOT_RUN}"
        ) from None


def dump_in_snapshot(
    db: Database,
    tools: PgTools,
    targets: list[TableName],
    partial: Path,
    final: Path,
    options: BackupOptions,
    *,
    server_version_num: int,
    migration: Migration | None,
    allow_cascade: Sequence[str],
    progress_key: str | None,
) -> Dumped:
    """In one exported snapshot: read what the dump must hold, dump it, count it; then fsync the archive
    and rename it to ``final``. Any failure removes the partial file."""
    try:
        with _snapshot_plan(db, targets, options, migration=migration, allow_cascade=allow_cascade) as snap:
            sums, sequences = _pg_dump_in(
                snap.conn,
                db,
                tools,
                partial,
                snap.plan,
                options,
                snapshot=snap.exported["snapshot_id"],
                server_version_num=server_version_num,
                progress_key=progress_key,
            )
            seal(partial)
            os.rename(partial, final)
            fsync_dir(final.parent)
    except BaseException:
        remove(partial)
        raise
    return snap.dumped(sums, sequences)


@dataclass(frozen=True)
class StoreDestination:
    """Where a streamed archive goes: the bucket and prefix, its name, the client, the encryption asked
    for (none: the bucket's default), and the size of each uploaded part."""

    location: S3Location
    name: str
    s3: Any
    encryption: dict[str, str] | None = None
    part_bytes: int = PART_BYTES


def dump_in_snapshot_to_store(
    db: Database,
    tools: PgTools,
    targets: list[TableName],
    destination: StoreDestination,
    options: BackupOptions,
    *,
    server_version_num: int,
    migration: Migration | None,
    allow_cascade: Sequence[str],
    progress_key: str | None,
) -> tuple[Dumped, StoredObject]:
    """As ``dump_in_snapshot``, the archive streamed into object storage as pg_dump writes it: the
    upload runs in its own thread while this one counts and checksums the targets in the same
    snapshot. Any failure or interrupt stops pg_dump and aborts the upload — no object is left."""
    with _snapshot_plan(db, targets, options, migration=migration, allow_cascade=allow_cascade) as snap:
        uploaded = [0]
        progress = DumpProgress(run_progress("pg_dump", progress_key), lambda: uploaded[0], snap.plan.weights)
        dump = StoreDump(
            tools,
            db,
            destination.location,
            destination.name,
            s3=destination.s3,
            encryption=destination.encryption,
            part_bytes=destination.part_bytes,
            timeout_s=options.timeout_s,
            progress=progress,
            on_part=lambda total: uploaded.__setitem__(0, total),
            server_version_num=server_version_num,
            compression=options.compression,
            snapshot=snap.exported["snapshot_id"],
            exclude_data=snap.plan.exclude_data,
            no_blobs=options.scope == "targets",
            verbose=True,
            lock_wait_ms=options.lock_wait_ms,
        )
        try:
            sums = target_contents(snap.conn, snap.plan.targets)
            sequences = sequence_states(snap.conn, snap.plan.sequences)
            stored = dump.result()
        except BaseException:
            dump.cancel()
            raise
        uploaded[0] = stored.bytes
        progress.finish()
    return snap.dumped(sums, sequences), stored
