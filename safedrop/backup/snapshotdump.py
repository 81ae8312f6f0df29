"""A backup's dump: pg_dump ``--snapshot`` while the same snapshot counts what it dumps.

This module provides:

- ``BackupOptions``: what travels together into a backup — scope, archive format, jobs, compression,
  timeouts, the size cap, and whether to prove the archive by a scratch restore;
- ``dump_in_snapshot(db, tools, targets, partial, final, options, …)``: opens a REPEATABLE READ
  transaction and exports its snapshot, reads there what the dump must hold (``safedrop.backup.dumpplan``),
  runs pg_dump on that snapshot while the same transaction counts and checksums the targets and reads
  the removed sequences, then fsyncs the archive and renames it into place. The archive and the numbers
  describe the very same data. A failure or interruption kills pg_dump and leaves no partial file;
- ``Dumped``: what the snapshot said (server, which database and cluster, snapshot ids, plan, counts,
  checksums, sequences).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from safedrop.backup.backupfiles import fsync_dir, remove, seal
from safedrop.backup.dumpplan import DumpPlan, Scope, exported_snapshot, plan_dump
from safedrop.backup.pgdump import ArchiveFormat, dump_failure, pg_dump_args
from safedrop.backup.scratchrestore import require_createdb
from safedrop.errors import DID_NOT_RUN, UsageError
from safedrop.migration import Migration, TableName
from safedrop.pg import queries
from safedrop.pg.checksums import Contents, sequence_states, target_contents
from safedrop.pg.database import Database, error_line, identify
from safedrop.pg.pgtools import PgTools
from safedrop.pg.processes import ToolFailed, kill, session_env, start, wait
from safedrop.report.artifacts import run_progress
from safedrop.report.progress import DumpProgress
from safedrop.results import DatabaseIdentity, SequenceState, TableChecksum
from safedrop.retries import backup_failure

# Each option, and the run parameter (``DropParameters``) it comes from.
PARAMETERS = {
    "scope": "backup_scope",
    "archive_format": "backup_format",
    "jobs": "backup_jobs",
    "compression": "backup_compression",
    "timeout_s": "backup_timeout_s",
    "lock_wait_s": "lock_wait_budget_s",
    "verify_restore": "verify_restore",
}


@dataclass(frozen=True)
class BackupOptions:
    """How to back up: what (``scope``), in which archive, how fast, for how long, and how to prove it.

    ``lock_wait_s`` bounds pg_dump's wait for each table's lock (``--lock-wait-timeout``): a dump that
    cannot get them stops, naming who holds the table, instead of queueing behind them. ``timeout_s``
    stops pg_dump altogether; ``max_bytes`` caps each file it writes.
    """

    scope: Scope = "database"
    archive_format: ArchiveFormat = "custom"
    jobs: int = 1
    compression: int = 1
    timeout_s: int = 3600
    lock_wait_s: float | None = None
    verify_restore: bool = False
    max_bytes: int | None = None

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
    progress = DumpProgress(run_progress("pg_dump", progress_key), partial, plan.weights)
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
        with exported_snapshot(db) as (conn, exported):
            info = queries.one(conn, "server_info")
            identity = identify(conn, db)
            if options.verify_restore:
                require_createdb(conn, info["current_user"])
            plan = plan_dump(
                conn, targets, scope=options.scope, migration=migration, allow_cascade=allow_cascade
            )
            sums, sequences = _pg_dump_in(
                conn,
                db,
                tools,
                partial,
                plan,
                options,
                snapshot=exported["snapshot_id"],
                server_version_num=server_version_num,
                progress_key=progress_key,
            )
            seal(partial)
            os.rename(partial, final)
            fsync_dir(final.parent)
    except sa.exc.DBAPIError as exc:
        remove(partial)
        raise backup_failure(
            f"reading the snapshot for the backup failed: {error_line(exc, db)}; {DID_NOT_RUN}"
        ) from None
    except BaseException:
        remove(partial)
        raise
    return Dumped(info, exported, plan, sums, sequences, identity)
