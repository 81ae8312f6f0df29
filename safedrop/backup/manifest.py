"""The manifest beside every archive: written once, found again, and the archive proven against it.

``<archive>.manifest.json`` (0600) records what the archive holds — versions, scope, the targets' row
counts and content checksums in the dump's own snapshot, the archive's sha256, what the drop removes.
The restore trusts an archive only through it.

This module provides:

- ``manifest_path`` / ``write_manifest`` (atomic, fsynced) / ``read_manifest``;
- ``manifests_of_run(dir, flow_run_id)``: the manifests a flow run wrote whose archive still exists;
- ``find_backup(spec)`` / ``locate_backup(spec)``: the archive an operator names (a path, a file name
  in the backup directory, or a flow run id) and its manifest, or ``UsageError``/``RestoreRefused``;
- ``check_archive(archive, manifest)``: ``RestoreRefused`` when the archive's size or sha256 differs.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

from safedrop.backup.archive import archive_digest
from safedrop.backup.backupfiles import fsync_dir
from safedrop.errors import DID_NOT_RUN, NOTHING_CHANGED, BackupFailed, RestoreRefused, UsageError
from safedrop.paths import default_backup_dir, local_backup_dir
from safedrop.results import BackupManifest

MANIFEST_SUFFIX = ".manifest.json"
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def manifest_path(archive: Path) -> Path:
    """``<archive>.manifest.json``, beside the archive file (or directory)."""
    archive = Path(archive)
    return archive.with_name(archive.name + MANIFEST_SUFFIX)


def write_manifest(manifest: BackupManifest, archive: Path) -> Path:
    """Write ``<archive>.manifest.json`` atomically (0600, fsynced) and return its path."""
    target = manifest_path(archive)
    partial = target.with_name(target.name + ".partial")
    data = manifest.model_dump_json(indent=2).encode() + b"\n"
    try:
        fd = os.open(partial, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.chmod(partial, 0o600)
        os.rename(partial, target)
        fsync_dir(target.parent)
    except OSError as exc:
        partial.unlink(missing_ok=True)
        raise BackupFailed(
            f"could not write the manifest {target} ({exc.strerror or exc}); the archive {archive} is kept "
            f"but cannot be restored by safedrop without it; {DID_NOT_RUN}"
        ) from None
    return target


def read_manifest(archive: Path) -> BackupManifest | None:
    """The manifest beside an archive, or None when there is none. Raises ValueError if unreadable."""
    path = manifest_path(archive)
    if not path.is_file():
        return None
    return BackupManifest.model_validate_json(path.read_bytes())


def manifests_of_run(directory: Path, flow_run_id: str) -> Iterator[tuple[Path, BackupManifest]]:
    """The manifests in ``directory`` of archives a flow run wrote (newest first) whose archive exists."""
    if not flow_run_id or not directory.is_dir():
        return
    for manifest_file in sorted(directory.glob(f"*{MANIFEST_SUFFIX}"), reverse=True):
        try:
            manifest = BackupManifest.model_validate_json(manifest_file.read_bytes())
        except (OSError, ValueError):
            continue
        if manifest.flow_run_id == flow_run_id and (directory / manifest.archive).exists():
            yield manifest_file, manifest


def is_flow_run_id(text: str) -> bool:
    return bool(_UUID.match(text.strip().lower()))


def find_backup(spec: str | Path) -> Path:
    """The archive ``spec`` names: a path (absolute, or relative to the working directory), a file name
    in this machine's backup directory (``SAFEDROP_BACKUP_DIR``), or the id of the flow run that took
    the backup (found by its manifest there). Raises UsageError naming where it looked."""
    raw = Path(spec).expanduser()
    if raw.name.endswith(MANIFEST_SUFFIX):
        raw = raw.with_name(raw.name[: -len(MANIFEST_SUFFIX)])
    configured = default_backup_dir()
    directory = configured if isinstance(configured, Path) else local_backup_dir()
    candidates = [raw.absolute()] + ([directory / raw] if not raw.is_absolute() else [])
    for candidate in candidates:
        if candidate.exists():
            return candidate
    if is_flow_run_id(str(spec)):
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
