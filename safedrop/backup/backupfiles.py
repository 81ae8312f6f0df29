"""The backup directory and the files in it: private, never partial, durable.

This module provides:

- ``prepare_backup_dir(path)``: the directory, created 0700 with any missing parents, or
  ``BackupFailed`` saying why it cannot be used;
- ``reserve_backup_file(dir, database)``: ``<db>-<UTC>.dump.partial`` (or a ``.dumpdir.partial``
  directory) created exclusively — the writability check and the claim on the final name;
- ``seal(partial)``: fsync what a tool wrote and make it private (files 0600, a directory 0700);
- ``fsync_dir`` / ``fsync_file`` / ``remove``: durability of a rename, and cleaning up a partial file.
"""

from __future__ import annotations

import errno
import os
import re
import secrets
import shutil
from datetime import UTC, datetime
from pathlib import Path

from safedrop.errors import DID_NOT_RUN, BackupFailed


def _make_dirs(path: Path) -> bool:
    """Create ``path`` and any missing parents with mode 0700. True if we created ``path`` itself."""
    missing: list[Path] = []
    probe = path
    while not probe.exists() and not probe.is_symlink():
        missing.append(probe)
        if probe.parent == probe:
            break
        probe = probe.parent
    created = False
    for directory in reversed(missing):
        try:
            os.mkdir(directory, 0o700)
        except FileExistsError:
            continue  # made by someone else meanwhile: leave its mode alone
        os.chmod(directory, 0o700)  # the umask may have taken bits off; 0700 is what we promise
        created = directory == path
    return created


def prepare_backup_dir(backup_dir: Path) -> tuple[Path, bool]:
    """The absolute backup directory, created (0700, parents too) if missing; (path, created_by_us)."""
    backup_dir = Path(backup_dir).expanduser().absolute()
    try:
        created = _make_dirs(backup_dir)
    except OSError as exc:
        raise BackupFailed(
            f"backup directory {backup_dir} is not writable: it cannot be created "
            f"({exc.strerror or exc.__class__.__name__}); pass a backup_dir this process can create and "
            f"write to; {DID_NOT_RUN}"
        ) from None
    if not backup_dir.is_dir():
        raise BackupFailed(
            f"backup directory {backup_dir} is not writable: it exists but is not a directory; "
            f"pass a backup_dir this process can create and write to; {DID_NOT_RUN}"
        )
    return backup_dir, created


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "database"


def stored_archive_name(database: str, *, now: datetime | None = None) -> str:
    """``<db>-<UTC>-<6 hex>.dump``: a new object's name in the store, where no exclusive create reserves
    it — the random part keeps two runs in the same second apart."""
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")
    return f"{_safe_name(database)}-{stamp}-{secrets.token_hex(3)}.dump"


def reserve_backup_file(
    backup_dir: Path, database: str, *, now: datetime | None = None, directory: bool = False
) -> tuple[Path, Path]:
    """Create ``<db>-<UTC>.dump.partial`` (O_EXCL, 0600) and return (partial, final).

    With ``directory`` (pg_dump's directory format) it is an empty directory ``<db>-<UTC>.dumpdir.partial``
    (0700) instead. Creating it is also the writability check (permission bits alone don't tell, e.g.
    for root). The exclusive create reserves the final name against a concurrent run in the same second.
    """
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")
    base = f"{_safe_name(database)}-{stamp}"
    suffix = ".dumpdir" if directory else ".dump"
    for attempt in range(20):
        stem = base if attempt == 0 else f"{base}-{secrets.token_hex(2)}"
        final = backup_dir / f"{stem}{suffix}"
        partial = backup_dir / f"{stem}{suffix}.partial"
        if final.exists():
            continue
        try:
            if directory:
                os.mkdir(partial, 0o700)
            else:
                os.close(os.open(partial, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        except FileExistsError:
            continue
        except OSError as exc:
            raise BackupFailed(
                f"backup directory {backup_dir} is not writable ({exc.strerror or exc.__class__.__name__}); "
                f"pass a backup_dir this process can write to, or fix its permissions; {DID_NOT_RUN}"
            ) from None
        os.chmod(partial, 0o700 if directory else 0o600)  # whatever the umask
        return partial, final
    raise BackupFailed(f"could not pick a free backup file name in {backup_dir}; {DID_NOT_RUN}")


def remove(path: Path) -> None:
    """Remove a (partial) archive: a file, or a directory with everything in it."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """fsync a directory, so a rename in it survives a crash (quietly skipped where refused)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as exc:  # some filesystems refuse fsync on directories
        if exc.errno not in (errno.EINVAL, errno.EBADF):
            raise
    finally:
        os.close(fd)


def seal(partial: Path) -> None:
    """fsync what pg_dump wrote and make it private (files 0600, a directory 0700)."""
    if partial.is_dir():
        for child in partial.iterdir():
            os.chmod(child, 0o600)
            fsync_file(child)
        os.chmod(partial, 0o700)
        fsync_dir(partial)
    else:
        fsync_file(partial)
        os.chmod(partial, 0o600)
