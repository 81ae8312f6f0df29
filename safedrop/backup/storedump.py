"""pg_dump's archive streamed into object storage: uploaded while pg_dump writes it, never on local disk.

- ``dump_to_store(tools, db, location, name, …)``: the bucket checked first; pg_dump's stdout read
  through a ``Spout`` (a few MiB in memory) into a multipart upload; pg_dump's exit status decides,
  before the object is made, whether it is made at all — a failed or interrupted dump or upload leaves
  no object and no parts;
- ``stored_toc(tools, s3, location, name, …)``: the stored object's table of contents, read by
  streaming its first bytes into ``pg_restore --list`` — the proof is taken on what the store holds.

Every failure is a ``BackupFailed`` in one line: pg_dump's own (as for a file), or "the backup could not
be stored: …; nothing was dropped".
"""

from __future__ import annotations

import threading
from typing import Any

from safedrop.backup.archive import TocEntry, read_toc
from safedrop.backup.pgdump import dump_failure, pg_dump_args
from safedrop.errors import BackupFailed, TransientBackupFailure
from safedrop.pg.database import Database
from safedrop.pg.pgtools import PgTools
from safedrop.pg.processes import Spout, ToolFailed, kill, session_env, start, wait
from safedrop.store import s3 as store
from safedrop.store.location import S3Location

NOT_STORED = "nothing was dropped"


def not_stored(exc: store.StoreError) -> BackupFailed:
    kind = TransientBackupFailure if exc.transient else BackupFailed
    return kind(f"the backup could not be stored: {exc}; {NOT_STORED}")


def dump_to_store(
    tools: PgTools,
    db: Database,
    location: S3Location,
    name: str,
    *,
    timeout_s: float = 3600,
    part_bytes: int = store.PART_BYTES,
    encryption: dict[str, str] | None = None,
    s3: Any = None,
    **dump_options: Any,
) -> store.StoredObject:
    """pg_dump (``dump_options``: those of ``pg_dump_args``; a custom-format archive) into
    ``location/name``. Returns what the store holds; raises BackupFailed."""
    if dump_options.get("archive_format", "custom") != "custom":
        raise BackupFailed(f"only a custom-format archive streams to the store; {NOT_STORED}")
    try:
        s3 = s3 or store.client(location)
        store.check_writable(s3, location)
    except store.StoreError as exc:
        raise not_stored(exc) from None
    spout = Spout()
    env = session_env(db, "pg_dump")
    try:
        process = start(
            tools.pg_dump, pg_dump_args(None, **dump_options), env=env, timeout_s=timeout_s, stdout=spout
        )
    except ToolFailed as exc:
        raise dump_failure(exc, db) from None
    verdict: dict[str, BaseException] = {}

    def wait_for_pg_dump() -> None:
        try:
            wait(process)
        except BaseException as exc:  # noqa: B036 - handed to the uploading thread
            verdict["error"] = exc
        finally:
            spout.end()

    waiter = threading.Thread(target=wait_for_pg_dump, name="pg_dump-wait", daemon=True)
    waiter.start()

    def pg_dump_succeeded() -> None:
        waiter.join()
        if "error" in verdict:
            raise verdict["error"]

    try:
        return store.upload_stream(
            s3, location, name, spout, part_bytes=part_bytes, encryption=encryption, finish=pg_dump_succeeded
        )
    except ToolFailed as exc:
        raise dump_failure(exc, db) from None
    except store.StoreError as exc:
        raise not_stored(exc) from None
    finally:
        if waiter.is_alive():  # the upload gave up (or was interrupted): pg_dump goes too
            spout.abandon()
            kill(process)
            waiter.join()


def stored_toc(
    tools: PgTools, s3: Any, location: S3Location, name: str, *, version_id: str | None = None
) -> list[TocEntry]:
    """The stored archive's table of contents (its first bytes streamed into ``pg_restore --list``)."""
    uri = location.object_uri(name)
    try:
        return read_toc(uri, tools, stdin=store.read(s3, location, name, version_id))
    except store.StoreError as exc:
        raise not_stored(exc) from None
