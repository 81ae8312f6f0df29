"""The manifest of an archive in object storage: the object ``<archive>.manifest.json`` beside it, and
the stored archive proven against it before a restore changes anything.

- ``write_stored_manifest(s3, location, manifest)``: the manifest object (sent with its sha256);
- ``read_stored_manifest(s3, location, name)``: it again, or ``RestoreRefused`` when it is missing or
  unreadable (safedrop restores only what it can prove);
- ``check_stored_archive(s3, location, manifest)``: ``RestoreRefused`` when the object (the recorded
  version, where the bucket is versioned) differs from the manifest in size or sha256 — changed or
  truncated — read by streaming, nothing written locally.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any

from safedrop.backup.manifest import MANIFEST_SUFFIX
from safedrop.errors import NOTHING_CHANGED, RestoreRefused
from safedrop.results import BackupManifest
from safedrop.store import s3 as store
from safedrop.store.location import S3Location


def write_stored_manifest(
    s3: Any, location: S3Location, manifest: BackupManifest, encryption: dict[str, str] | None = None
) -> str:
    """Put ``<archive>.manifest.json`` beside the stored archive (encrypted as the archive is); its URI.
    Raises StoreError."""
    name = manifest.archive + MANIFEST_SUFFIX
    store.put_bytes(s3, location, name, manifest.model_dump_json(indent=2).encode() + b"\n", encryption)
    return location.object_uri(name)


def stored_manifests_of_run(
    s3: Any, location: S3Location, flow_run_id: str, *, recursive: bool = False
) -> Iterator[tuple[S3Location, BackupManifest]]:
    """The manifests under ``location`` that name ``flow_run_id``, newest first, each with the location
    it sits in (with ``recursive``, a fleet's ``PREFIX/<database>`` too); unreadable ones are passed
    over. Raises StoreError when the store cannot be listed."""
    listed = sorted(
        store.list_objects(s3, location, suffix=MANIFEST_SUFFIX, recursive=recursive),
        key=lambda o: o.modified,
        reverse=True,
    )
    for item in listed:
        folder, _, _ = item.name.rpartition("/")
        where = location.child(folder) if folder else location
        try:
            manifest = BackupManifest.model_validate_json(store.get_bytes(s3, location, item.name))
        except (ValueError, store.ObjectMissing):
            continue
        if manifest.flow_run_id == flow_run_id:
            yield where, manifest


def read_stored_manifest(s3: Any, location: S3Location, name: str) -> BackupManifest:
    """The manifest beside the stored archive ``name``."""
    where = location.object_uri(name + MANIFEST_SUFFIX)
    try:
        data = store.get_bytes(s3, location, name + MANIFEST_SUFFIX)
    except store.ObjectMissing:
        raise RestoreRefused(
            f"no manifest beside {location.object_uri(name)} (expected {where}); safedrop restores only "
            f"archives whose contents it can prove — use the manifest written with the backup; "
            f"{NOTHING_CHANGED}"
        ) from None
    except store.StoreError as exc:
        raise RestoreRefused(f"{exc}; {NOTHING_CHANGED}") from None
    try:
        return BackupManifest.model_validate_json(data)
    except ValueError as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise RestoreRefused(
            f"the manifest {where} cannot be read ({first}); without it safedrop cannot prove what the "
            f"archive holds; {NOTHING_CHANGED}"
        ) from None


def check_stored_archive(s3: Any, location: S3Location, manifest: BackupManifest) -> None:
    """Refuse a stored archive whose size or sha256 differs from its manifest's."""
    uri = location.object_uri(manifest.archive)
    try:
        meta = store.head(s3, location, manifest.archive, manifest.version_id)
        size = int(meta.get("ContentLength", -1))
        digest = hashlib.sha256()
        if size == manifest.bytes:
            for chunk in store.read(s3, location, manifest.archive, manifest.version_id):
                digest.update(chunk)
    except store.StoreError as exc:
        raise RestoreRefused(f"{exc}; {NOTHING_CHANGED}") from None
    if size != manifest.bytes or digest.hexdigest() != manifest.sha256:
        said = f"{size:,} bytes" + (f", sha256 {digest.hexdigest()}" if size == manifest.bytes else "")
        raise RestoreRefused(
            f"the archive {uri} does not match its manifest ({said}; the manifest says {manifest.bytes:,} "
            f"bytes, sha256 {manifest.sha256}): it is corrupted or truncated; restore from another backup; "
            f"{NOTHING_CHANGED}"
        )
