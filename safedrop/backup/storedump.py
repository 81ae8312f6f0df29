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
from collections.abc import Callable
from typing import Any

from safedrop.backup.archive import TocEntry, read_toc
from safedrop.backup.pgdump import dump_failure, pg_dump_args
from safedrop.errors import BackupFailed, TransientBackupFailure
from safedrop.pg.database import Database
from safedrop.pg.pgtools import PgTools
from safedrop.pg.processes import Spout, ToolFailed, kill, session_env, start, wait
from safedrop.report.progress import DumpProgress
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
    spout: Spout | None = None,
    progress: DumpProgress | None = None,
    on_part: Callable[[int], None] | None = None,
    server_version_num: int = 0,
    **dump_options: Any,
) -> store.StoredObject:
    """pg_dump (``dump_options``: those of ``pg_dump_args``; a custom-format archive) into
    ``location/name``. Returns what the store holds; raises BackupFailed.

    ``spout``: pg_dump's stdout, given when another thread may ``abandon()`` it (``StoreDump.cancel``);
    ``progress`` follows pg_dump's verbose lines, ``on_part(bytes_stored)`` the upload."""
    if dump_options.get("archive_format", "custom") != "custom":
        raise BackupFailed(f"only a custom-format archive streams to the store; {NOT_STORED}")
    try:
        s3 = s3 or store.client(location)
        store.check_writable(s3, location)
    except store.StoreError as exc:
        raise not_stored(exc) from None
    spout = spout or Spout()
    env = session_env(db, "pg_dump", server_version_num)
    try:
        process = start(
            tools.pg_dump,
            pg_dump_args(None, **dump_options),
            env=env,
            timeout_s=timeout_s,
            stdout=spout,
            on_line=progress.line if progress else None,
        )
    except ToolFailed as exc:
        raise dump_failure(exc, db) from None
    verdict: dict[str, BaseException] = {}
    waited = threading.Event()  # not Thread.join(): a join a signal interrupts marks a live thread done

    def wait_for_pg_dump() -> None:
        try:
            wait(process, on_tick=progress.tick if progress else None)
        except BaseException as exc:  # noqa: B036 - handed to the uploading thread
            verdict["error"] = exc
        finally:
            spout.end()
            waited.set()

    threading.Thread(target=wait_for_pg_dump, name="pg_dump-wait", daemon=True).start()

    def pg_dump_succeeded() -> None:
        waited.wait()
        if "error" in verdict:
            raise verdict["error"]

    try:
        return store.upload_stream(
            s3,
            location,
            name,
            spout,
            part_bytes=part_bytes,
            encryption=encryption,
            on_part=on_part,
            finish=pg_dump_succeeded,
        )
    except ToolFailed as exc:
        raise dump_failure(exc, db, dump_options.get("lock_wait_ms")) from None
    except store.StoreError as exc:
        raise not_stored(exc) from None
    finally:
        if not waited.is_set():  # the upload gave up (or was interrupted): pg_dump goes too
            spout.abandon()
            kill(process)
            waited.wait()


class StoreDump:
    """``dump_to_store`` under way in a thread of its own, so that the caller's transaction (the
    snapshot pg_dump reads) counts and checksums the targets meanwhile. ``result()`` waits for what
    the store holds, or raises the dump's failure; ``cancel()`` stops pg_dump and aborts the upload
    (nothing is left in the store) — the caller's own failure or interrupt comes first.

    Both wait on an Event, never ``Thread.join()``: on Python 3.11 a join that a signal interrupts
    (SIGTERM raising ``Interrupted``) marks the still-running thread as finished, and the next join
    returns at once — the command line would exit with pg_dump still running."""

    def __init__(self, tools: PgTools, db: Database, location: S3Location, name: str, **options: Any) -> None:
        self.spout = Spout()
        self._outcome: dict[str, Any] = {}
        self._done = threading.Event()

        def run() -> None:
            try:
                self._outcome["stored"] = dump_to_store(
                    tools, db, location, name, spout=self.spout, **options
                )
            except BaseException as exc:  # noqa: B036 - raised again by result() in the caller's thread
                self._outcome["error"] = exc
            finally:
                self._done.set()

        threading.Thread(target=run, name="store-dump", daemon=True).start()

    def result(self) -> store.StoredObject:
        self._done.wait()
        if "error" in self._outcome:
            raise self._outcome["error"]
        return self._outcome["stored"]

    def cancel(self) -> None:
        self.spout.abandon()
        self._done.wait()


def stored_toc(
    tools: PgTools, s3: Any, location: S3Location, name: str, *, version_id: str | None = None
) -> list[TocEntry]:
    """The stored archive's table of contents (its first bytes streamed into ``pg_restore --list``)."""
    uri = location.object_uri(name)
    try:
        return read_toc(uri, tools, stdin=store.read(s3, location, name, version_id))
    except store.StoreError as exc:
        raise not_stored(exc) from None
