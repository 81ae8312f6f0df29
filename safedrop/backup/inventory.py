"""Which backups exist, and which may go: ``safedrop backups list`` and ``prune``.

- ``inventory(where)``: every archive with a manifest under a backup directory or a bucket's prefix
  (a fleet's ``PREFIX/<database>/`` included), newest first, as ``BackupEntry`` rows;
- ``mark_needed(entries)``: the newest backup of each migration and database (by the database's name
  and cluster) is the one a restore of the current state needs — ``needed`` with why; prune never
  removes it, whatever its age;
- ``prunable(entries, older_than_s)``: the rest, older than the cut; ``remove(entry)`` takes one away
  (archive, then manifest). Archives without a manifest are not safedrop's to judge and are left alone;
- ``unfinished(location)``: the multipart uploads in a bucket that never became an object — a backup
  whose store went away before it could abort its upload — as ``UnfinishedUpload`` rows; prune aborts
  those older than its cut (the bucket's AbortIncompleteMultipartUpload rule does it too, README).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel

from safedrop.backup.manifest import MANIFEST_SUFFIX
from safedrop.results import BackupManifest
from safedrop.store import s3 as store
from safedrop.store.location import S3Location, is_s3, parse_object_uri


class BackupEntry(BaseModel):
    """One backup as ``backups list`` shows it."""

    archive: str  # its path or s3:// URI
    database: str
    system_identifier: str | None = None
    migration: str | None = None
    bytes: int
    created_at: str
    age_s: int
    flow_run_id: str | None = None
    needed: bool = False
    why_needed: str = ""


class UnfinishedUpload(BaseModel):
    """A multipart upload in the bucket with no object: parts the store keeps (and bills) for nothing."""

    uri: str
    upload_id: str
    started_at: str
    age_s: int


class BackupInventory(BaseModel):
    """The report of ``backups list`` and ``backups prune``."""

    location: str
    backups: list[BackupEntry]
    unfinished_uploads: list[UnfinishedUpload] = []
    prune_older_than_s: int | None = None
    to_remove: list[str] = []
    removed: list[str] = []
    to_abort: list[str] = []
    aborted: list[str] = []
    dry_run: bool = True


def _age_s(created_at: str, now: datetime) -> int:
    try:
        created = datetime.fromisoformat(created_at)
    except ValueError:
        return 0
    if created.tzinfo is None:
        created = created.replace(tzinfo=UTC)
    return max(0, int((now - created).total_seconds()))


def _entry(manifest: BackupManifest, archive: str, now: datetime) -> BackupEntry:
    return BackupEntry(
        archive=archive,
        database=manifest.database,
        system_identifier=manifest.system_identifier,
        migration=manifest.migration,
        bytes=manifest.bytes,
        created_at=manifest.created_at,
        age_s=_age_s(manifest.created_at, now),
        flow_run_id=manifest.flow_run_id,
    )


def _local(directory: Path, now: datetime) -> Iterator[BackupEntry]:
    for manifest_file in directory.rglob(f"*{MANIFEST_SUFFIX}") if directory.is_dir() else []:
        try:
            manifest = BackupManifest.model_validate_json(manifest_file.read_bytes())
        except (OSError, ValueError):
            continue
        archive = manifest_file.parent / manifest.archive
        if archive.exists():
            yield _entry(manifest, str(archive), now)


def _stored(s3, location: S3Location, now: datetime) -> Iterator[BackupEntry]:
    for item in store.list_objects(s3, location, suffix=MANIFEST_SUFFIX, recursive=True):
        try:
            manifest = BackupManifest.model_validate_json(store.get_bytes(s3, location, item.name))
        except (ValueError, store.ObjectMissing):
            continue
        folder, _, _ = item.name.rpartition("/")
        where = location.child(folder) if folder else location
        yield _entry(manifest, where.object_uri(manifest.archive), now)


def inventory(where: Path | S3Location, *, s3=None, now: datetime | None = None) -> list[BackupEntry]:
    """Every backup with a manifest under ``where``, newest first, ``needed`` marked. Raises StoreError."""
    now = now or datetime.now(UTC)
    if isinstance(where, S3Location):
        entries = list(_stored(s3 or store.client(where), where, now))
    else:
        entries = list(_local(Path(where), now))
    entries.sort(key=lambda e: (e.created_at, e.archive), reverse=True)
    mark_needed(entries)
    return entries


def unfinished(location: S3Location, *, s3=None, now: datetime | None = None) -> list[UnfinishedUpload]:
    """The unfinished multipart uploads under ``location``, oldest first. Raises StoreError."""
    now = now or datetime.now(UTC)
    found = []
    for u in store.list_unfinished(s3 or store.client(location), location):
        started_at = u.initiated.isoformat(timespec="seconds")
        found.append(
            UnfinishedUpload(
                uri=location.object_uri(u.name),
                upload_id=u.upload_id,
                started_at=started_at,
                age_s=_age_s(started_at, now),
            )
        )
    return sorted(found, key=lambda u: (u.started_at, u.uri))


def abort(upload: UnfinishedUpload, *, s3=None) -> None:
    """Abort one unfinished upload. Raises StoreError."""
    location, name = parse_object_uri(upload.uri)
    store.abort_unfinished(s3 or store.client(location), location, name, upload.upload_id)


def mark_needed(entries: list[BackupEntry]) -> None:
    """The newest backup of each migration and database (``entries`` newest first) is needed."""
    seen: set[tuple[str, str | None, str | None]] = set()
    for entry in entries:
        key = (entry.database, entry.system_identifier, entry.migration)
        if key not in seen:
            seen.add(key)
            entry.needed = True
            entry.why_needed = (
                f"the newest backup of {entry.migration or 'an ad-hoc run'} on {entry.database}: the one a "
                "restore of the dropped tables uses"
            )


def prunable(entries: list[BackupEntry], older_than_s: int) -> list[BackupEntry]:
    return [e for e in entries if not e.needed and e.age_s > older_than_s]


def remove(entry: BackupEntry, *, s3=None) -> None:
    """The archive, then its manifest (a half-done removal leaves a manifest, never a nameless archive).
    Raises StoreError or OSError."""
    if is_s3(entry.archive):
        location, name = parse_object_uri(entry.archive)
        client = s3 or store.client(location)
        store.remove(client, location, name)
        store.remove(client, location, name + MANIFEST_SUFFIX)
        return
    archive = Path(entry.archive)
    if archive.is_dir():
        shutil.rmtree(archive)
    else:
        archive.unlink(missing_ok=True)
    Path(str(archive) + MANIFEST_SUFFIX).unlink(missing_ok=True)
