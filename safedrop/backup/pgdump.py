"""pg_dump: its argv (never a host, user or password), and each way it fails as one secret-free line.

This module provides:

- ``pg_dump_args(output, …)``: format, compression, jobs, snapshot, data to leave out, the lock-wait
  timeout and the output file;
- ``dump_failure(failed, db)``: a ``ToolFailed`` of pg_dump as the ``BackupFailed`` to
  raise — a lock it could not get (naming who holds the table), its timeout, a signal, a full disk
  or size limit, or its own error line (``TransientBackupFailure`` when a retry may help);
- ``run_pg_dump(tools, db, output)``: pg_dump into a file and wait (the plain dump, no snapshot).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from safedrop.errors import DID_NOT_RUN, BackupFailed
from safedrop.pg import queries
from safedrop.pg.database import Database, connect
from safedrop.pg.locks import describe_blockers
from safedrop.pg.pgtools import PgTools
from safedrop.pg.processes import CHECK_KILLERS, ToolFailed, run, session_env, stderr_summary
from safedrop.retries import backup_failure

ArchiveFormat = Literal["custom", "directory"]
_LOCK_QUERY = re.compile(r"Query was: LOCK TABLE (?P<relation>.+) IN ACCESS SHARE MODE")


def pg_dump_args(
    output: Path | None,
    *,
    archive_format: ArchiveFormat = "custom",
    compression: int = 1,
    jobs: int = 1,
    snapshot: str | None = None,
    exclude_data: Sequence[str] = (),
    no_blobs: bool = False,
    verbose: bool = False,
    lock_wait_ms: int | None = None,
) -> list[str]:
    """pg_dump's argv: format options, patterns and the output file; never a host, user or password.

    ``lock_wait_ms``: how long pg_dump may wait for each table's ACCESS SHARE lock before it gives up
    (``--lock-wait-timeout``) instead of waiting behind a session that holds a table exclusively.
    """
    args = [f"--format={archive_format}", f"--compress={compression}", "--no-password"]
    if lock_wait_ms:
        args.append(f"--lock-wait-timeout={int(lock_wait_ms)}ms")
    if jobs > 1:
        args.append(f"--jobs={jobs}")
    if snapshot:
        args.append(f"--snapshot={snapshot}")
    if no_blobs:
        args.append("--no-blobs")
    if verbose:
        args.append("--verbose")
    args += [f"--exclude-table-data={pattern}" for pattern in exclude_data]
    if output is not None:  # else the archive goes to stdout (streamed to the store)
        args.append(f"--file={output}")
    return args


def _lock_wait_failure(stderr: str, db: Database, lock_wait_ms: int | None) -> BackupFailed | None:
    """pg_dump gave up waiting for a table's lock (--lock-wait-timeout): name the table and who holds it."""
    match = _LOCK_QUERY.search(stderr)
    if not match or "timeout" not in stderr:
        return None
    relation = match.group("relation").strip()
    oid = None
    try:
        with connect(db) as conn:
            oid = queries.one(conn, "relation_oid", name=relation)["oid"]
    except Exception:
        pass
    blockers = describe_blockers(db, [oid], []) if oid else []
    budget = f"{lock_wait_ms / 1000:g} s" if lock_wait_ms else "its lock-wait timeout"
    return BackupFailed(
        f"pg_dump could not lock {relation} within the lock-wait budget {budget}; blocked by: "
        f"{'; '.join(blockers) or 'a session that has since finished'}; {DID_NOT_RUN} — let it finish "
        "(or end it) and re-run"
    )


def dump_failure(failed: ToolFailed, db: Database, lock_wait_ms: int | None = None) -> BackupFailed:
    """A pg_dump failure as one secret-free line."""
    if failed.kind == "timeout":
        return BackupFailed(
            f"{failed}; raise timeout_s, or check for locks held on the database's tables; {DID_NOT_RUN}"
        )
    if failed.kind == "not-started":
        return BackupFailed(f"{failed}; {DID_NOT_RUN}")
    locked = _lock_wait_failure(failed.stderr, db, lock_wait_ms)
    if locked is not None:
        return locked
    if failed.kind == "signal":
        return BackupFailed(f"{failed} ({CHECK_KILLERS}); {DID_NOT_RUN}")
    summary = stderr_summary(failed.stderr, db) or f"exit code {failed.exit_code}"
    if "No space left on device" in summary or "File too large" in summary:
        summary += " (the backup directory's file system is full, or the archive outgrew its size limit: "
        summary += "free space there or choose another backup_dir)"
    return backup_failure(f"pg_dump failed: {summary}; {DID_NOT_RUN}", detail_text=failed.stderr)


def run_pg_dump(
    tools: PgTools,
    db: Database,
    output: Path,
    *,
    timeout_s: float = 3600,
    max_bytes: int | None = None,
    **options: Any,
) -> None:
    """pg_dump into ``output`` (``options``: those of ``pg_dump_args``) and wait. Raises BackupFailed, one
    secret-free line.

    Connection settings and the password reach pg_dump only through its environment; argv holds only
    format options and the output file. ``timeout_s`` kills the child (a Prefect timeout would not);
    ``max_bytes`` caps each file it writes (the dump fails rather than fill the disk).
    """
    env = session_env(db, "pg_dump")
    try:
        run(tools.pg_dump, pg_dump_args(output, **options), env=env, timeout_s=timeout_s, max_bytes=max_bytes)
    except ToolFailed as exc:
        raise dump_failure(exc, db) from None
