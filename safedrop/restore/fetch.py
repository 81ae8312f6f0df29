"""A backup in object storage, brought to the machine that restores it — any machine.

``fetched(spec)`` is a context manager: for an ``s3://BUCKET/PREFIX/NAME.dump`` it reads the manifest
beside the object, makes sure the temporary directory can hold the archive (the archive's size, not the
database's: a targets-scope backup is the targets' rows), downloads the recorded version (a versioned
bucket: whatever was written since) into a private directory while hashing it, and refuses — nothing
changed — when the bytes differ from the manifest in size or sha256 (changed or truncated). Inside the
block the restore works on a proven local archive with its manifest beside it; the directory is removed
when the block ends, whatever happens. Any other spec is a local archive and passes through unchanged.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from safedrop.backup.manifest import MANIFEST_SUFFIX, find_backup, is_flow_run_id, manifest_path
from safedrop.backup.storemanifest import read_stored_manifest, stored_manifests_of_run
from safedrop.errors import NOTHING_CHANGED, RestoreRefused, UsageError
from safedrop.paths import BACKUP_DIR_ENV, default_backup_dir
from safedrop.report.progress import human_bytes
from safedrop.store import s3 as store
from safedrop.store.location import is_s3, parse_object_uri, parse_s3

HEADROOM_BYTES = 64 * 1024 * 1024  # left free on the temporary file system after the archive


def locate(spec: str) -> Path | str:
    """The backup ``spec`` names: an ``s3://…/NAME.dump`` URI (its manifest's URI accepted too), the id
    of the flow run that took it when this machine's ``$SAFEDROP_BACKUP_DIR`` is a bucket (found by
    its manifest anywhere below the prefix), or whatever ``find_backup`` accepts. Raises UsageError."""
    text = spec.strip()
    if is_s3(text):
        if text.endswith(MANIFEST_SUFFIX):
            text = text[: -len(MANIFEST_SUFFIX)]
        location, name = parse_object_uri(text, "--backup")
        return location.object_uri(name)
    configured = default_backup_dir()
    if isinstance(configured, str) and is_flow_run_id(text):
        location = parse_s3(configured, BACKUP_DIR_ENV)
        try:
            s3 = store.client(location)
            for where, manifest in stored_manifests_of_run(s3, location, text.lower(), recursive=True):
                return where.object_uri(manifest.archive)
        except store.StoreError as exc:
            raise UsageError(f"backup {spec}: {exc}") from None
        raise UsageError(
            f"no backup of flow run {spec} under {location} (${BACKUP_DIR_ENV}); pass the archive's "
            "s3:// URI, which the run's report names"
        )
    return find_backup(text)


@contextmanager
def fetched(spec: str | Path) -> Iterator[Path]:
    """The archive ``spec`` names as a local file for the block's duration (see the module)."""
    if not is_s3(str(spec)):
        yield Path(spec)
        return
    location, name = parse_object_uri(str(spec), "--backup")
    try:
        s3 = store.client(location)
    except store.StoreError as exc:
        raise RestoreRefused(f"{exc}; {NOTHING_CHANGED}") from None
    manifest = read_stored_manifest(s3, location, name)
    scratch = Path(tempfile.mkdtemp(prefix="safedrop-restore-"))  # 0700
    try:
        free = shutil.disk_usage(scratch).free
        if free < manifest.bytes + HEADROOM_BYTES:
            raise RestoreRefused(
                f"the archive {spec} is {human_bytes(manifest.bytes)} and the temporary directory "
                f"{scratch.parent} has {human_bytes(free)} free; point TMPDIR at a file system with room "
                f"for it; {NOTHING_CHANGED}"
            )
        archive = scratch / manifest.archive
        _download(s3, location, name, manifest, archive, str(spec))
        manifest_path(archive).write_text(manifest.model_dump_json(indent=2) + "\n")
        yield archive
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _download(s3, location, name: str, manifest, archive: Path, uri: str) -> None:
    """The recorded version of the object into ``archive`` (0600), refused unless it is the manifest's."""
    digest, size = hashlib.sha256(), 0
    try:
        fd = os.open(archive, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        with os.fdopen(fd, "wb") as out:
            for chunk in store.read(s3, location, name, manifest.version_id):
                digest.update(chunk)
                size += len(chunk)
                if size > manifest.bytes:
                    break  # longer than the manifest says: refused below, no need to read it all
                out.write(chunk)
    except store.StoreError as exc:
        raise RestoreRefused(f"{exc}; {NOTHING_CHANGED}") from None
    except OSError as exc:
        raise RestoreRefused(
            f"could not write the archive {uri} to {archive.parent} ({exc.strerror or type(exc).__name__}); "
            f"point TMPDIR at a writable file system with room for it; {NOTHING_CHANGED}"
        ) from None
    if size != manifest.bytes or digest.hexdigest() != manifest.sha256:
        said = f"{size:,} bytes" if size != manifest.bytes else f"sha256 {digest.hexdigest()}"
        raise RestoreRefused(
            f"the archive {uri} does not match its manifest ({said}; the manifest says {manifest.bytes:,} "
            f"bytes, sha256 {manifest.sha256}): it is corrupted or truncated; restore from another backup; "
            f"{NOTHING_CHANGED}"
        )
