"""Step: a verified backup you can restore from, before anything is dropped.

``take_backup`` opens a REPEATABLE READ transaction, exports its snapshot, and runs ``pg_dump
--snapshot=<id>`` while that transaction stays open; meanwhile, in the same snapshot, it counts each
target's rows, takes an order-independent content checksum, reads the sequences the drop removes and
records every catalog object the drop removes (``safedrop.catalog.predict_removal``). So the
archive and the numbers in its manifest describe the very same data.

Scope ``database`` dumps the whole database. Scope ``targets`` dumps every definition of the database
(so whatever CASCADE removes — views, foreign keys on surviving tables, functions — can be put back)
but the rows of the targets only (their partitions and inheritance children included); the other
tables' rows are left out with ``--exclude-table-data``, and large objects with ``--no-blobs``.

Then: the archive's table of contents must hold each target (a partitioned target: each of its leaf
partitions) with its data; optionally (``verify_restore``) the definitions and the targets' rows are
restored into a scratch database ``safedrop_verify_<random>`` and compared with the manifest; the
archive's sha256 is taken; and ``<archive>.manifest.json`` (0600) is written beside it. The restore
flow (``tasks/restore.py``) trusts an archive only through that manifest.

The password reaches pg_dump and pg_restore only through their environment (``PGPASSWORD``), never
argv; files are 0600 in a 0700 directory; a failed or interrupted dump never leaves a partial file.
Long dumps report progress (Prefect log lines, a progress artifact, a bar on a terminal).
"""

from __future__ import annotations

import errno
import functools
import hashlib
import logging
import os
import re
import resource
import secrets
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

import sh
import sqlalchemy as sa
from prefect import get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE
from prefect.context import FlowRunContext, TaskRunContext
from psycopg2 import sql
from sqlalchemy.engine import Connection

from safedrop import queries
from safedrop.artifacts import artifact_key, md_table, publish_markdown
from safedrop.database import Database, connect, database_from_url
from safedrop.errors import BackupFailed, ConnectionFailed, UsageError
from safedrop.locks import describe_blockers
from safedrop.migration import Migration, TableName
from safedrop.report import (
    BackupManifest,
    BackupResult,
    RemovedObject,
    SequenceState,
    TableChecksum,
)

Scope = Literal["database", "targets"]
ArchiveFormat = Literal["custom", "directory"]
CHECKSUM_METHOD = (
    "per table: count(*), and the sum over all rows of a 64-bit row hash, order-independent; the prefix of "
    "each checksum names the hash: 'hash:' = hash_record_extended(row, 0) (PostgreSQL 14+, every column "
    "type hashable), 'md5:' = ('x' || left(md5(row::text), 16))::bit(64)::bigint with DateStyle ISO/YMD, "
    "IntervalStyle postgres, TimeZone UTC, extra_float_digits 1, bytea_output hex, lc_monetary C"
)
MANIFEST_SUFFIX = ".manifest.json"
PROGRESS_BAR_ENV = "SAFEDROP_PROGRESS_BAR"  # "1": draw a progress bar on stderr (the CLI sets it on a TTY)
PG_BIN_GLOB = "/usr/lib/postgresql/*/bin"
PG_BIN_ENV = "SAFEDROP_PG_BIN"
CHUNK = 1024 * 1024
DID_NOT_RUN = "the drop did not run"

# Substrings (lower case) of libpq/pg_dump messages for failures that a retry can fix …
_TRANSIENT_MARKERS = (
    "server closed the connection unexpectedly",
    "terminating connection",
    "connection refused",
    "could not connect to server",
    "timeout expired",
    "connection timed out",
    "could not receive data from server",
    "could not send data to server",
    "connection reset by peer",
    "no connection to the server",
    "ssl syscall error",
    "the database system is starting up",
    "the database system is shutting down",
    "the database system is in recovery mode",
    "the database system is not yet accepting connections",
    "too many clients already",
    "remaining connection slots are reserved",
    "temporary failure in name resolution",
)
# … unless the message also says something a retry cannot change.
_PERMANENT_MARKERS = (
    "password authentication failed",
    "no pg_hba.conf entry",
    "does not exist",
    "permission denied",
    "server version mismatch",
    "row-level security",
)


class TransientBackupFailure(BackupFailed):
    """A BackupFailed that a retry may fix (the connection failed or was closed).

    ``transient`` is a class attribute so it survives pickling (``SafedropError.__reduce__`` keeps only
    the message).
    """

    transient = True


def is_transient(error: BaseException) -> bool:
    """True for failures worth retrying: a refused, dropped or timed-out connection."""
    return bool(getattr(error, "transient", False))


def _looks_transient(text: str) -> bool:
    lowered = text.lower()
    return any(m in lowered for m in _TRANSIENT_MARKERS) and not any(m in lowered for m in _PERMANENT_MARKERS)


def _failure(message: str, *, detail_text: str = "") -> BackupFailed:
    """A BackupFailed, or its transient subclass when ``detail_text`` (or the message) says so."""
    cls = TransientBackupFailure if _looks_transient(detail_text or message) else BackupFailed
    return cls(message)


# --------------------------------------------------------------------------------------------------
# Which pg_dump
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PgTools:
    """A matching pg_dump/pg_restore pair from one bin directory."""

    pg_dump: Path
    pg_restore: Path
    major: int  # 15 for 15.18; 9 for 9.6.24 (see version_num for the whole version)
    version: str  # "15.18"
    version_num: int  # 150018, as server_version_num
    version_line: str  # "pg_dump (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)"

    @property
    def bindir(self) -> Path:
        return self.pg_dump.parent


def _version_key(version_num: int) -> tuple[int, int]:
    """The major version as a comparable pair: (15, 0) for 15.x, (9, 6) for 9.6.x."""
    if version_num >= 100000:
        return (version_num // 10000, 0)
    return (version_num // 10000, (version_num // 100) % 100)


def server_version_text(version_num: int) -> str:
    """150018 -> '15.18'; 90624 -> '9.6.24'."""
    if version_num >= 100000:
        return f"{version_num // 10000}.{version_num % 10000}"
    return f"{version_num // 10000}.{(version_num // 100) % 100}.{version_num % 100}"


def _major_text(version_num: int) -> str:
    major, minor = _version_key(version_num)
    return f"{major}.{minor}" if major < 10 else str(major)


def _parse_version(line: str) -> tuple[str, int] | None:
    """('15.18', 150018) from 'pg_dump (PostgreSQL) 15.18 (Debian …)'; also '17beta1', '9.6.24'."""
    match = re.search(r"\)\s+(\d+)(?:\.(\d+))?(?:\.(\d+))?", line) or re.search(
        r"(\d+)(?:\.(\d+))?(?:\.(\d+))?", line
    )
    if not match:
        return None
    major = int(match.group(1))
    minor = int(match.group(2) or 0)
    patch = int(match.group(3) or 0)
    if major >= 10:
        return (f"{major}.{minor}" if match.group(2) else str(major)), major * 10000 + minor
    return f"{major}.{minor}.{patch}", major * 10000 + minor * 100 + patch


def _tool_env() -> dict[str, str]:
    """The minimal environment every child process gets (libpq variables are added per call)."""
    return {
        "PATH": os.environ.get("PATH") or "/usr/local/bin:/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
    }


def _session_env(db: Database, tool: str, server_version_num: int) -> dict[str, str]:
    """The libpq environment of pg_dump or pg_restore. On PostgreSQL 14+ its session also checks every
    second that the tool is still connected: a tool killed while its session waits for a lock would
    otherwise leave that session queued (holding the locks it already has, and queueing everyone who
    comes after it) until the lock is granted.
    """
    env = {**_tool_env(), **db.libpq_env(tool)}
    if server_version_num >= 140000:
        env["PGOPTIONS"] = f"{env.get('PGOPTIONS', '')} -c client_connection_check_interval=1000".strip()
    return env


def _probe(bindir: Path) -> PgTools | None:
    """PgTools for a directory holding executable pg_dump and pg_restore, else None."""
    pg_dump, pg_restore = bindir / "pg_dump", bindir / "pg_restore"
    if not (os.access(pg_dump, os.X_OK) and os.access(pg_restore, os.X_OK)):
        return None
    info = pg_dump.stat()
    return _probe_binary(pg_dump, pg_restore, (info.st_ino, info.st_size, info.st_mtime_ns))


@functools.lru_cache(maxsize=64)
def _probe_binary(pg_dump: Path, pg_restore: Path, identity: tuple[int, int, int]) -> PgTools | None:
    """Ask pg_dump its version; cached per binary file (``identity`` changes when it is replaced)."""
    try:
        output = str(sh.Command(str(pg_dump))("--version", _env=_tool_env(), _timeout=30, _tty_out=False))
    except (sh.ErrorReturnCode, sh.TimeoutException, sh.CommandNotFound, OSError):
        return None
    line = output.strip().splitlines()[0] if output.strip() else ""
    parsed = _parse_version(line)
    if parsed is None:
        return None
    version, num = parsed
    return PgTools(
        pg_dump=pg_dump,
        pg_restore=pg_restore,
        major=_version_key(num)[0],
        version=version,
        version_num=num,
        version_line=line,
    )


def installed_tools() -> list[PgTools]:
    """Every usable pg_dump: ``/usr/lib/postgresql/*/bin``, then ``pg_dump`` on PATH (if a new version)."""
    found: list[PgTools] = []
    for bindir in sorted(Path("/").glob(PG_BIN_GLOB.lstrip("/"))):
        tools = _probe(bindir)
        if tools:
            found.append(tools)
    on_path = shutil.which("pg_dump")
    # Debian's /usr/bin/pg_dump is pg_wrapper, which picks one of the directories above itself.
    if on_path and Path(os.path.realpath(on_path)).name != "pg_wrapper":
        tools = _probe(Path(on_path).parent)
        if tools and all(t.version_num != tools.version_num for t in found):
            found.append(tools)
    return found


def _install_hint(server_num: int) -> str:
    major = _major_text(server_num)
    return (
        f"install PostgreSQL {major}'s client (Debian: apt-get install postgresql-client-{major}) "
        f"or set {PG_BIN_ENV}"
    )


def _choose(candidates: Sequence[PgTools], server_version_num: int) -> PgTools | None:
    server_key = _version_key(server_version_num)
    same = [t for t in candidates if _version_key(t.version_num) == server_key]
    if same:
        return max(same, key=lambda t: t.version_num)
    newer = [t for t in candidates if _version_key(t.version_num) > server_key]
    if newer:
        return max(newer, key=lambda t: t.version_num)
    return None


def find_pg_dump(server_version_num: int) -> PgTools:
    """The pg_dump/pg_restore to use for a server: same major, else the newest newer one.

    pg_dump refuses servers newer than itself (and still leaves an empty output file), so an older one
    is never chosen. ``$SAFEDROP_PG_BIN`` (a bin directory), when set, is the only candidate.
    """
    server = server_version_text(server_version_num)
    override = os.environ.get(PG_BIN_ENV)
    if override:
        tools = _probe(Path(override))
        if tools is None:
            raise BackupFailed(
                f"{PG_BIN_ENV}={override} holds no working pg_dump and pg_restore; point it at a "
                f"PostgreSQL bin directory (e.g. /usr/lib/postgresql/{_major_text(server_version_num)}/bin)"
                f"; {DID_NOT_RUN}"
            )
        if _choose([tools], server_version_num) is None:
            raise BackupFailed(
                f"pg_dump {tools.version} in {PG_BIN_ENV}={override} is older than the server ({server}); "
                f"{_install_hint(server_version_num)}; {DID_NOT_RUN}"
            )
        return tools
    candidates = installed_tools()
    if not candidates:
        raise BackupFailed(
            f"no pg_dump found (looked in {PG_BIN_GLOB} and on PATH); {_install_hint(server_version_num)}"
            f"; {DID_NOT_RUN}"
        )
    chosen = _choose(candidates, server_version_num)
    if chosen is None:
        newest = max(candidates, key=lambda t: t.version_num)
        raise BackupFailed(
            f"pg_dump {newest.version} is older than the server ({server}); "
            f"{_install_hint(server_version_num)}; {DID_NOT_RUN}"
        )
    return chosen


# --------------------------------------------------------------------------------------------------
# Pre-dump checks
# --------------------------------------------------------------------------------------------------


def check_row_security(db: Database, targets: Sequence[TableName]) -> None:
    """Stop if row-level security would cut a target's dump short for the role we connect as."""
    if not targets:
        return
    try:
        with connect(db) as conn:
            blockers = queries.rows(
                conn,
                "backup_rls_blockers",
                schemas=[t.schema for t in targets],
                names=[t.name for t in targets],
            )
    except ConnectionFailed as exc:
        message = re.sub(r"[ \t]+", " ", str(exc))
        raise _failure(f"{message}; {DID_NOT_RUN}") from None
    if not blockers:
        return
    plain = [r for r in blockers if not (r["forced"] and r["is_owner"])]
    forced = [r for r in blockers if r["forced"] and r["is_owner"]]
    parts = []
    if plain:
        tables = ", ".join(TableName(r["schema_name"], r["table_name"]).qualified for r in plain)
        owners = ", ".join(sorted({r["owner"] for r in plain}))
        parts.append(
            f"a dump would be cut short by row-level security on {tables}; "
            f"run as the table owner ({owners}) or a BYPASSRLS role"
        )
    if forced:
        tables = ", ".join(TableName(r["schema_name"], r["table_name"]).qualified for r in forced)
        parts.append(
            f"a dump would be cut short by row-level security on {tables} (FORCE ROW LEVEL "
            "SECURITY applies to its owner too); run as a superuser or a BYPASSRLS role"
        )
    raise BackupFailed(f"{'; '.join(parts)}; {DID_NOT_RUN}")


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


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def manifest_path(archive: Path) -> Path:
    """``<archive>.manifest.json``, beside the archive file (or directory)."""
    archive = Path(archive)
    return archive.with_name(archive.name + MANIFEST_SUFFIX)


# --------------------------------------------------------------------------------------------------
# Progress: Prefect log lines, a Prefect progress artifact, a bar on a terminal
# --------------------------------------------------------------------------------------------------


def _in_run() -> bool:
    return FlowRunContext.get() is not None or TaskRunContext.get() is not None


def run_logger() -> logging.Logger | logging.LoggerAdapter:
    """The Prefect run logger inside a run, else the module's logger."""
    try:
        return get_run_logger()
    except Exception:
        return logging.getLogger("safedrop")


class Progress:
    """Reports a long step: a log line every ``log_every_s``, a progress artifact, a bar on a TTY.

    ``update`` is cheap: artifact updates are sent at most once a second, and only on a visible change.
    """

    def __init__(self, what: str, key: str | None = None, *, log_every_s: float = 10.0) -> None:
        self.what = what
        self.logger = run_logger()
        self.log_every_s = log_every_s
        self.started = time.monotonic()
        self._last_log = self.started
        self._last_sent = 0.0
        self._last_fraction = -1.0
        self.bar = os.environ.get(PROGRESS_BAR_ENV) == "1" and sys.stderr.isatty()
        self.artifact_id = None
        if key and _in_run():
            try:
                self.artifact_id = create_progress_artifact(
                    progress=0.0, key=artifact_key(key), description=what
                )
            except Exception:  # progress is a nicety: never let it fail the step
                self.artifact_id = None

    def update(self, fraction: float, detail: str) -> None:
        fraction = max(0.0, min(fraction, 1.0))
        now = time.monotonic()
        if self.artifact_id and now - self._last_sent >= 1.0 and fraction - self._last_fraction >= 0.005:
            try:
                update_progress_artifact(self.artifact_id, progress=round(fraction * 100, 1))
                self._last_sent, self._last_fraction = now, fraction
            except Exception:
                pass
        if now - self._last_log >= self.log_every_s:
            self._last_log = now
            self.logger.info(
                "%s: %d%% — %s (%.0f s)", self.what, int(fraction * 100), detail, now - self.started
            )
        if self.bar:
            filled = int(fraction * 30)
            sys.stderr.write(
                f"\r{self.what} [{'#' * filled}{'.' * (30 - filled)}] "
                f"{int(fraction * 100):3d}% {detail}\033[K"
            )
            sys.stderr.flush()

    def finish(self, detail: str) -> None:
        if self.artifact_id:
            try:
                update_progress_artifact(self.artifact_id, progress=100.0)
            except Exception:
                pass
        if self.bar:
            sys.stderr.write(f"\r{self.what} [{'#' * 30}] 100% {detail}\033[K\n")
            sys.stderr.flush()


def _size_of(path: Path) -> int:
    """Bytes of a file, or of every file in a directory (0 if it vanished)."""
    try:
        if path.is_dir():
            return sum(p.stat().st_size for p in path.iterdir() if p.is_file())
        return path.stat().st_size
    except OSError:
        return 0


class DumpProgress:
    """pg_dump's progress: ``--verbose`` says which table's rows it is copying; sizes weigh them."""

    _LINE = re.compile(r'dumping contents of table "(?P<name>.+)"\s*$')

    def __init__(self, reporter: Progress, output: Path, weights: dict[str, int]) -> None:
        self.reporter = reporter
        self.output = output
        self.weights = weights
        self.total = max(sum(weights.values()), 1)
        self.done = 0
        self.started: list[str] = []
        self._lock = threading.Lock()

    def line(self, text: str) -> None:
        match = self._LINE.search(text)
        if match:
            with self._lock:
                if self.started:
                    self.done += self.weights.get(self.started[-1], 0)
                self.started.append(match.group("name"))

    def tick(self) -> None:
        with self._lock:
            done, tables = self.done, len(self.started)
        written = _size_of(self.output)
        self.reporter.update(
            min(done / self.total, 0.99),
            f"{human_bytes(written)} written, table {tables} of {len(self.weights)}",
        )

    def finish(self) -> None:
        self.reporter.finish(f"{human_bytes(_size_of(self.output))} written, {len(self.weights)} tables")


# --------------------------------------------------------------------------------------------------
# pg_dump and pg_restore
# --------------------------------------------------------------------------------------------------


def _mask(text: str, db: Database) -> str:
    password = db.password
    if password:
        for form in {password, quote(password, safe=""), quote(password)}:
            if form:
                text = text.replace(form, "***")
    return text


def _stderr_summary(stderr: bytes | str, db: Database) -> str:
    """One line from a libpq tool's stderr: the first ``error:`` line (plus its ``detail:``)."""
    text = stderr.decode("utf-8", "replace") if isinstance(stderr, bytes) else stderr
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    summary, detail = "", ""
    for index, line in enumerate(lines):
        if "error:" in line:
            summary = line.split("error:", 1)[1].strip()
            rest = lines[index + 1 :]
            for follower in rest:
                if "detail:" in follower:
                    detail = follower.split("detail:", 1)[1].strip()
                    break
                if "error:" in follower or follower.startswith(("pg_dump:", "pg_restore:")):
                    break
                detail = detail or follower  # libpq's continuation lines (e.g. server closed …)
            break
    if not summary and lines:
        summary = lines[-1]
    if detail and detail not in summary:
        summary = f"{summary} ({detail})"
    summary = re.sub(r"\s+", " ", summary)
    summary = _mask(summary, db)
    return summary[:500]


def _size_limit(max_bytes: int) -> Callable[[], None]:
    """A preexec_fn capping every file the child writes at ``max_bytes`` (RLIMIT_FSIZE).

    SIGXFSZ is ignored so the write fails with EFBIG ("File too large"), as a full disk fails with
    ENOSPC, and the tool reports it and exits instead of dumping core.
    """

    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (max_bytes, max_bytes))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)

    return apply


def _start(
    command: Path,
    args: Sequence[str],
    *,
    env: dict[str, str],
    timeout_s: float,
    on_line: Callable[[str], None] | None = None,
    preexec_fn: Callable[[], None] | None = None,
):
    """Start a tool in the background; its stderr lines are kept (and passed to ``on_line``)."""
    lines: deque[str] = deque(maxlen=500)

    def err(line: str) -> None:
        lines.append(line)
        if on_line is not None:
            try:
                on_line(line.rstrip("\n"))
            except Exception:
                pass

    kwargs: dict[str, Any] = dict(
        _env=env, _timeout=timeout_s, _bg=True, _bg_exc=False, _tty_out=False, _return_cmd=True, _err=err
    )
    if preexec_fn is not None:
        kwargs["_preexec_fn"] = preexec_fn
    running = sh.Command(str(command))(*args, **kwargs)
    running.stderr_lines = lines
    return running


def _kill(running) -> None:
    try:
        if running.process.is_alive()[0]:
            running.process.signal(signal.SIGKILL)
            running.process.wait()  # reap it, so nothing writes after we clean up
    except Exception:
        pass


def _wait(running, *, on_tick: Callable[[], None] | None = None, tick_s: float = 1.0):
    """Wait for a started tool, calling ``on_tick`` about every ``tick_s``; kill it on any interruption.

    An ``sh.ErrorReturnCode`` carries the tool's whole stderr (``.stderr``), as without a callback.
    """
    try:
        if on_tick is not None:
            pause, interval = threading.Event(), 0.02
            while running.process.is_alive()[0]:
                on_tick()
                pause.wait(interval)  # short first (quick tools return at once), then every tick_s
                interval = min(interval * 2, tick_s)
        running.wait()
    except sh.ErrorReturnCode as exc:
        exc.stderr = "".join(running.stderr_lines).encode()
        raise
    except BaseException:
        _kill(running)
        raise
    return running


def _run(command: Path, args: Sequence[str], *, env: dict[str, str], timeout_s: float, **kwargs):
    """Run a tool and wait for it (see ``_start`` and ``_wait``)."""
    on_tick = kwargs.pop("on_tick", None)
    running = _start(command, args, env=env, timeout_s=timeout_s, **kwargs)
    return _wait(running, on_tick=on_tick)


_LOCK_QUERY = re.compile(r"Query was: LOCK TABLE (?P<relation>.+) IN ACCESS SHARE MODE")


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


def _dump_failure(
    exc: BaseException, db: Database, timeout_s: float, lock_wait_ms: int | None = None
) -> BackupFailed:
    """A pg_dump failure as one secret-free line."""
    if isinstance(exc, sh.ErrorReturnCode):
        locked = _lock_wait_failure((exc.stderr or b"").decode("utf-8", "replace"), db, lock_wait_ms)
        if locked is not None:
            return locked
    if isinstance(exc, sh.TimeoutException):
        return BackupFailed(
            f"pg_dump did not finish within {timeout_s:g} s and was stopped; raise timeout_s, or check for "
            f"locks held on the database's tables; {DID_NOT_RUN}"
        )
    if isinstance(exc, sh.SignalException):
        number = -exc.exit_code
        name = signal.Signals(number).name if number in signal.valid_signals() else "?"
        return BackupFailed(
            f"pg_dump was killed by signal {name} before it finished (check memory limits and "
            f"who stops processes on this host); {DID_NOT_RUN}"
        )
    if isinstance(exc, sh.ErrorReturnCode):
        stderr = exc.stderr or b""
        summary = _stderr_summary(stderr, db) or f"exit code {exc.exit_code}"
        if "No space left on device" in summary or "File too large" in summary:
            summary += " (the backup directory's file system is full, or the archive outgrew its size limit: "
            summary += "free space there or choose another backup_dir)"
        return _failure(
            f"pg_dump failed: {summary}; {DID_NOT_RUN}", detail_text=stderr.decode("utf-8", "replace")
        )
    if isinstance(exc, OSError):  # could not start it at all
        return BackupFailed(f"pg_dump could not be started ({exc.strerror or exc}); {DID_NOT_RUN}")
    raise exc


def pg_dump_args(
    output: Path,
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
    args.append(f"--file={output}")
    return args


def run_pg_dump(
    tools: PgTools,
    db: Database,
    output: Path,
    *,
    compression: int = 1,
    timeout_s: float = 3600,
    archive_format: ArchiveFormat = "custom",
    jobs: int = 1,
    snapshot: str | None = None,
    exclude_data: Sequence[str] = (),
    no_blobs: bool = False,
    max_bytes: int | None = None,
) -> None:
    """pg_dump into ``output`` and wait. Raises BackupFailed, one secret-free line.

    Connection settings and the password reach pg_dump only through its environment; argv holds only
    format options and the output file. ``timeout_s`` kills the child (a Prefect timeout would not);
    ``max_bytes`` caps each file it writes (the dump fails rather than fill the disk).
    """
    env = {**_tool_env(), **db.libpq_env("pg_dump")}
    args = pg_dump_args(
        output,
        archive_format=archive_format,
        compression=compression,
        jobs=jobs,
        snapshot=snapshot,
        exclude_data=exclude_data,
        no_blobs=no_blobs,
    )
    try:
        _run(
            tools.pg_dump,
            args,
            env=env,
            timeout_s=timeout_s,
            preexec_fn=_size_limit(max_bytes) if max_bytes else None,
        )
    except (sh.ErrorReturnCode, sh.TimeoutException, OSError) as exc:
        raise _dump_failure(exc, db, timeout_s) from None


# --------------------------------------------------------------------------------------------------
# The archive's table of contents
# --------------------------------------------------------------------------------------------------

# Every entry description pg_dump writes (pg_dump.c, pg_backup_archiver.c); the longest match wins.
TOC_DESCS = sorted(
    """ACCESS METHOD|ACL|AGGREGATE|BLOB|BLOB METADATA|BLOBS|CAST|CHECK CONSTRAINT|COLLATION|COMMENT|
    CONSTRAINT|CONVERSION|DATABASE|DATABASE PROPERTIES|DEFAULT|DEFAULT ACL|DOMAIN|ENCODING|EVENT TRIGGER|
    EXTENSION|FK CONSTRAINT|FOREIGN DATA WRAPPER|FOREIGN SERVER|FOREIGN TABLE|FUNCTION|INDEX|INDEX ATTACH|
    LARGE OBJECT|MATERIALIZED VIEW|MATERIALIZED VIEW DATA|OPERATOR|OPERATOR CLASS|OPERATOR FAMILY|POLICY|
    PROCEDURAL LANGUAGE|PROCEDURE|PUBLICATION|PUBLICATION TABLE|PUBLICATION TABLES IN SCHEMA|ROW SECURITY|
    RULE|SCHEMA|SEARCHPATH|SECURITY LABEL|SEQUENCE|SEQUENCE OWNED BY|SEQUENCE SET|SERVER|SHELL TYPE|
    STATISTICS|STDSTRINGS|SUBSCRIPTION|SUBSCRIPTION TABLE|TABLE|TABLE ATTACH|TABLE DATA|
    TEXT SEARCH CONFIGURATION|TEXT SEARCH DICTIONARY|TEXT SEARCH PARSER|TEXT SEARCH TEMPLATE|TRANSFORM|
    TRIGGER|TYPE|USER MAPPING|VIEW""".replace("\n", "").split("|"),
    key=len,
    reverse=True,
)
TOC_DESCS = [d.strip() for d in TOC_DESCS]
_TOC_LINE = re.compile(r"^\s*(?P<id>\d+);\s+(?P<catalog>\d+)\s+(?P<oid>\d+)\s+(?P<rest>.*)$")
_TOC_DEPS = re.compile(r"^;\s+depends on:(?P<deps>[\d ]*)$")


@dataclass
class TocEntry:
    """One line of ``pg_restore --list`` (with ``--verbose``: its dependencies too)."""

    dump_id: int
    catalog_oid: int  # the pg_catalog table of the object (pg_class 1259, pg_constraint 2606, …), or 0
    oid: int  # the object's oid in the dumped database (TABLE DATA / ROW SECURITY: the table's), or 0
    desc: str  # TABLE, TABLE DATA, FK CONSTRAINT, …
    rest: str  # "schema tag owner" as printed
    line: str  # the whole line, as -L takes it back
    deps: list[int] = field(default_factory=list)

    @property
    def schema(self) -> str:
        return self.rest.split(" ", 1)[0]

    @property
    def label(self) -> str:
        """'DESC schema tag owner' (the form ``archive_toc`` returns)."""
        return f"{self.desc} {self.rest}".rstrip()


def parse_toc(text: str) -> list[TocEntry]:
    entries: list[TocEntry] = []
    for line in text.splitlines():
        deps = _TOC_DEPS.match(line)
        if deps and entries:
            entries[-1].deps = [int(d) for d in deps.group("deps").split()]
            continue
        match = _TOC_LINE.match(line)
        if not match:
            continue
        after = match.group("rest")
        desc = next((d for d in TOC_DESCS if after == d or after.startswith(d + " ")), after.split(" ", 1)[0])
        entries.append(
            TocEntry(
                dump_id=int(match.group("id")),
                catalog_oid=int(match.group("catalog")),
                oid=int(match.group("oid")),
                desc=desc,
                rest=after[len(desc) :].strip(),
                line=line,
            )
        )
    return entries


def read_toc(
    path: Path,
    tools: PgTools,
    *,
    timeout_s: float = 300,
    failure: type = BackupFailed,
    suffix: str = DID_NOT_RUN,
) -> list[TocEntry]:
    """The archive's table of contents with dependencies (``pg_restore --list --verbose``)."""
    try:
        running = _run(
            tools.pg_restore, ["--list", "--verbose", str(path)], env=_tool_env(), timeout_s=timeout_s
        )
    except sh.TimeoutException:
        raise failure(f"pg_restore --list {path} did not finish within {timeout_s:g} s; {suffix}") from None
    except sh.ErrorReturnCode as exc:
        text = (exc.stderr or b"").decode("utf-8", "replace")
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
        first = next(
            (ln.split("error:", 1)[1].strip() for ln in lines if "error:" in ln),
            lines[-1] if lines else f"exit code {exc.exit_code}",
        )
        raise failure(f"the archive {path} does not read back (pg_restore: {first}); {suffix}") from None
    return parse_toc(str(running))


def archive_toc(path: Path, tools: PgTools, *, timeout_s: float = 300) -> list[str]:
    """The archive's table of contents (``pg_restore --list``), each entry as 'DESC schema name owner'."""
    return [e.label for e in read_toc(path, tools, timeout_s=timeout_s)]


def _has_entry(entries: Iterable[str], desc: str, table: TableName) -> bool:
    prefix = f"{desc} {table.schema} {table.name}"
    return any(e == prefix or e.startswith(prefix + " ") for e in entries)


def verify_archive(
    path: Path,
    targets: Sequence[TableName],
    tools: PgTools,
    *,
    layout: dict[TableName, tuple[str, list[TableName]]] | None = None,
    entries: list[TocEntry] | None = None,
) -> list[str]:
    """Check that every target has a TABLE entry and its rows a TABLE DATA entry; return their names.

    ``layout`` maps a target to (relkind, the leaf tables below it): a partitioned target (relkind
    'p') holds no rows itself — each of its leaf partitions must have TABLE and TABLE DATA instead.
    Raises BackupFailed naming what is missing (the archive file is left in place).
    """
    labels = [e.label for e in (entries if entries is not None else read_toc(Path(path), tools))]
    found, missing = [], []
    for table in targets:
        relkind, leaves = (layout or {}).get(table, ("r", []))
        wanted = ("TABLE",) if relkind == "p" else ("TABLE", "TABLE DATA")
        lacks = [desc for desc in wanted if not _has_entry(labels, desc, table)]
        problems = [f"{table.qualified} (no {' or '.join(lacks)} entry)"] if lacks else []
        for leaf in leaves:
            leaf_lacks = [d for d in ("TABLE", "TABLE DATA") if not _has_entry(labels, d, leaf)]
            if leaf_lacks:
                problems.append(
                    f"{leaf.qualified} (partition of {table.qualified}; no {' or '.join(leaf_lacks)} entry)"
                )
        if problems:
            missing += problems
        else:
            found.append(table.qualified)
    if missing:
        raise BackupFailed(
            f"the archive {path} lacks {', '.join(missing)}; it is kept for inspection but is not a backup "
            f"of the targets; {DID_NOT_RUN}"
        )
    return found


# --------------------------------------------------------------------------------------------------
# Hashes and durability
# --------------------------------------------------------------------------------------------------


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def archive_digest(path: Path) -> tuple[int, str, dict[str, str]]:
    """(bytes, sha256, per-file sha256) of an archive.

    A custom-format file: its own sha256. A directory-format archive: the sha256 of its listing in
    ``sha256sum`` form (``<sha256>  <name>`` per file, sorted by name), and each file's sha256.
    """
    path = Path(path)
    if not path.is_dir():
        return path.stat().st_size, sha256_file(path), {}
    files = {p.name: sha256_file(p) for p in sorted(path.iterdir()) if p.is_file()}
    listing = "".join(f"{digest}  {name}\n" for name, digest in files.items())
    size = sum((path / name).stat().st_size for name in files)
    return size, hashlib.sha256(listing.encode()).hexdigest(), files


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
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


def _seal(partial: Path) -> None:
    """fsync what pg_dump wrote and make it private (files 0600, a directory 0700)."""
    if partial.is_dir():
        for child in partial.iterdir():
            os.chmod(child, 0o600)
            _fsync_file(child)
        os.chmod(partial, 0o700)
        _fsync_dir(partial)
    else:
        _fsync_file(partial)
        os.chmod(partial, 0o600)


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
        _fsync_dir(target.parent)
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


# --------------------------------------------------------------------------------------------------
# The snapshot: what the dump holds, read in the dump's own snapshot
# --------------------------------------------------------------------------------------------------


def pin_text_settings(conn: Connection) -> None:
    """The row-text settings checksums depend on (this transaction only), and no silent RLS filtering."""
    queries.rows(conn, "checksum_settings")
    conn.exec_driver_sql("SET LOCAL row_security = off")


# Checksum methods, recorded as the prefix of each checksum ("hash:…", "md5:…") so a restore recomputes
# each table's checksum the way the backup took it.
CHECKSUM_QUERIES = {"hash": "table_checksums_hashed", "md5": "table_checksums"}
UNDEFINED_FUNCTION = "42883"


def table_checksums(
    conn: Connection, tables: Sequence[TableName], *, methods: dict[TableName, str] | None = None
) -> dict[TableName, tuple[int, str]]:
    """Exact row count and content checksum (``"<method>:<value>"``) of each table.

    ``methods`` (from a manifest) says how each table was checksummed; without it, the fast
    ``hash_record_extended`` (PostgreSQL 14+, ~3x cheaper than md5 of the row text) where every column
    type has an extended hash function, else md5 of the row's text (call pin_text_settings first).
    """
    out: dict[TableName, tuple[int, str]] = {}
    fast = int(conn.exec_driver_sql("SHOW server_version_num").scalar() or 0) >= 140000
    for table in tables:
        method = (methods or {}).get(table) or ("hash" if fast else "md5")
        params = {"schemas": [table.schema], "names": [table.name]}
        if methods is None and method == "hash":
            savepoint = conn.begin_nested()
            try:
                rows = queries.rows(conn, CHECKSUM_QUERIES["hash"], **params)
                savepoint.commit()
            except sa.exc.DBAPIError as exc:
                savepoint.rollback()
                if getattr(exc.orig, "pgcode", None) != UNDEFINED_FUNCTION:
                    raise
                method = "md5"  # a column type without an extended hash function (json, xml, point, …)
        if method != "hash" or methods is not None:
            rows = queries.rows(conn, CHECKSUM_QUERIES[method], **params)
        for r in rows:
            out[TableName(r["schema_name"], r["table_name"])] = (
                int(r["row_count"]),
                f"{method}:{r['checksum']}",
            )
    return out


def checksum_methods(checksums: Iterable[TableChecksum]) -> dict[TableName, str]:
    """How each table in a manifest was checksummed (the prefix of its checksum)."""
    return {TableName(t.schema_name, t.table_name): t.checksum.split(":", 1)[0] for t in checksums}


def sequence_states(conn: Connection, names: Sequence[str]) -> list[SequenceState]:
    if not names:
        return []
    rows = queries.rows(conn, "sequence_values", names=list(names))
    return [
        SequenceState(name=r["qualified"], last_value=r["last_value"], is_called=r["is_called"]) for r in rows
    ]


def _pattern(*parts: str) -> str:
    """An exact-match pg_dump pattern: each part double-quoted (inside quotes, * ? . are literal)."""
    return ".".join('"' + p.replace('"', '""') + '"' for p in parts)


@dataclass
class DumpPlan:
    """What the snapshot says: the targets' tables, what to leave out, what the drop removes."""

    tables: list[dict[str, Any]]  # backup_tables rows
    targets: list[TableName]  # the targets that exist
    layout: dict[TableName, tuple[str, list[TableName]]]
    below: dict[TableName, list[str]]
    exclude_data: list[str]
    weights: dict[str, int]  # "schema.name" (as pg_dump --verbose prints it) -> bytes on disk
    removed: list[RemovedObject]
    cascade: list[Any]
    sequences: list[str]  # the sequences the drop removes (qualified)


def plan_dump(
    conn: Connection,
    targets: Sequence[TableName],
    *,
    scope: Scope,
    migration: Migration | None = None,
    allow_cascade: Sequence[str] = (),
) -> DumpPlan:
    """Read, in the open snapshot, the targets' tables, the data to leave out and the removal set."""
    from safedrop.cascade import classify
    from safedrop.catalog import PG_CLASS, describe, predict_removal, statement_oids

    tables = queries.rows(
        conn, "backup_tables", schemas=[t.schema for t in targets], names=[t.name for t in targets]
    )
    roots = {
        TableName(r["schema_name"], r["table_name"]): r for r in tables if r["target"] and r["parent"] is None
    }
    present = [t for t in targets if t in roots]
    layout: dict[TableName, tuple[str, list[TableName]]] = {}
    below: dict[TableName, list[str]] = {}
    for table in present:
        root = roots[table]
        tree = [r for r in tables if r["target"] == root["target"] and r["oid"] != root["oid"]]
        leaves = [TableName(r["schema_name"], r["table_name"]) for r in tree if r["relkind"] == "r"]
        layout[table] = (root["relkind"], leaves if root["relkind"] == "p" else [])
        below[table] = [r["qualified"] for r in tree]
    in_scope = [r for r in tables if r["relkind"] == "r" and (scope == "database" or r["target"])]
    weights = {f"{r['schema_name']}.{r['table_name']}": max(int(r["bytes"]), 8192) for r in in_scope}
    exclude: list[str] = []
    if scope == "targets":
        kept_schemas = {r["schema_name"] for r in tables if r["target"]}
        for schema in sorted({r["schema_name"] for r in tables}):
            others = [
                r for r in tables if r["schema_name"] == schema and not r["target"] and r["relkind"] == "r"
            ]
            if schema not in kept_schemas:
                exclude.append(_pattern(schema) + ".*")
            else:
                exclude += [_pattern(schema, r["table_name"]) for r in others]
    oids = {t: roots[t]["oid"] for t in present}
    if migration is not None:
        statements = statement_oids(migration, oids)
    else:
        statements = [list(oids.values())] if oids else []
    removed, _refused = predict_removal(conn, statements) if statements else ({}, [])
    info = describe(conn, list(removed))
    owners = {row["owner_rel"] for row in info.values() if row["owner_rel"]}
    rel_names = {r["oid"]: r["qualified"] for r in queries.rows(conn, "relation_names", oids=sorted(owners))}
    cascade = classify(removed, info, rel_names, list(allow_cascade))
    addresses: dict[tuple[int, int, int], dict[str, Any]] = {}
    if removed:
        keys = list(removed)
        for r in queries.rows(
            conn,
            "object_addresses",
            classids=[a[0] for a in keys],
            objids=[a[1] for a in keys],
            objsubids=[a[2] for a in keys],
        ):
            addresses[(r["classid"], r["objid"], r["objsubid"])] = r
    objects = []
    for address in removed:
        row, where = info.get(address), addresses.get(address)
        if row is None or where is None:
            continue
        objects.append(
            RemovedObject(
                classid=address[0],
                objid=address[1],
                objsubid=address[2],
                description=row["description"],
                type=where["type"],
                names=list(where["object_names"] or []),
                args=list(where["object_args"] or []),
            )
        )
    sequences = [
        info[a]["identity"]
        for a in removed
        if a[0] == PG_CLASS and a[2] == 0 and info.get(a, {}).get("relkind") == "S"
    ]
    return DumpPlan(
        tables=tables,
        targets=present,
        layout=layout,
        below=below,
        exclude_data=exclude,
        weights=weights,
        removed=objects,
        cascade=cascade,
        sequences=sorted(sequences),
    )


@contextmanager
def exported_snapshot(db: Database) -> Iterator[tuple[Connection, dict[str, str]]]:
    """A REPEATABLE READ, READ ONLY transaction and its exported snapshot (``snapshot_id`` for pg_dump,
    ``txid_snapshot`` to tell later writes), open for the block."""
    engine = db.engine()
    try:
        try:
            conn = engine.connect()
        except sa.exc.OperationalError as exc:
            from safedrop.database import describe_connect_error

            raise _failure(f"{describe_connect_error(exc, db)}; {DID_NOT_RUN}") from None
        try:
            conn.exec_driver_sql("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            pin_text_settings(conn)
            yield conn, queries.one(conn, "export_snapshot")
        finally:
            try:  # the session may be gone (terminated): never hide the error that got us here
                conn.rollback()
                conn.close()
            except Exception:
                pass
    finally:
        engine.dispose()


def _database_named(db: Database, name: str) -> Database:
    """The same server, role and password, another database."""
    url = db.url.set(database=name)
    return database_from_url(url.render_as_string(hide_password=False), db.source)


def _dbname_arg(name: str) -> str:
    """``--dbname`` for libpq tools: a bare name, or a conninfo when the name could be mistaken for one."""
    if "=" in name or name.startswith(("postgresql:", "postgres:")):
        escaped = name.replace("\\", "\\\\").replace("'", "\\'")
        return f"--dbname=dbname='{escaped}'"
    return f"--dbname={name}"


def require_createdb(conn: Connection, current_user: str) -> None:
    if not queries.one(conn, "role_can_create_database")["can_create"]:
        raise BackupFailed(
            f"verify_restore needs a role that may create a scratch database: role {current_user} has "
            f"no CREATEDB; grant it (ALTER ROLE {current_user} CREATEDB) or turn verify_restore off; "
            f"{DID_NOT_RUN}"
        )


@contextmanager
def scratch_database(db: Database, *, prefix: str = "safedrop_verify_") -> Iterator[Database]:
    """A new empty database ``<prefix><random>`` on the same server, dropped afterwards even on failure."""
    name = f"{prefix}{secrets.token_hex(6)}"
    engine = db.engine(isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            raw = conn.connection.dbapi_connection
            conn.exec_driver_sql(
                sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(name)).as_string(raw)
            )
        try:
            yield _database_named(db, name)
        finally:
            with engine.connect() as conn:
                raw = conn.connection.dbapi_connection
                version = int(conn.exec_driver_sql("SHOW server_version_num").scalar())
                force = " WITH (FORCE)" if version >= 130000 else ""
                conn.exec_driver_sql(
                    sql.SQL("DROP DATABASE IF EXISTS {}" + force).format(sql.Identifier(name)).as_string(raw)
                )
    finally:
        engine.dispose()


def _restore_failure(exc: BaseException, db: Database, what: str) -> str:
    if isinstance(exc, sh.TimeoutException):
        return f"{what} did not finish in time"
    if isinstance(exc, sh.ErrorReturnCode):
        return f"{what} failed: {_stderr_summary(exc.stderr or b'', db) or f'exit code {exc.exit_code}'}"
    return f"{what} failed: {exc}"


def verify_by_restore(
    db: Database,
    tools: PgTools,
    archive: Path,
    entries: list[TocEntry],
    plan: DumpPlan,
    expected: list[TableChecksum],
    sequences: list[SequenceState],
    *,
    timeout_s: float = 3600,
    progress_key: str | None = None,
) -> None:
    """Restore the definitions and the targets' rows into a scratch database; compare with the manifest.

    Runs ``pg_restore --section=pre-data`` (every definition, no constraints or indexes, no owners or
    grants), then a list holding only the TABLE DATA of the targets (and everything below them) and the
    SEQUENCE SET of the sequences the drop removes. Raises BackupFailed on any difference.
    """
    data_oids = {r["oid"] for r in plan.tables if r["target"]}
    removed_seq_names = set(plan.sequences)
    seq_ids = {
        e.dump_id
        for e in entries
        if e.desc == "SEQUENCE" and any(o.classid == 1259 and o.objid == e.oid for o in plan.removed)
    }
    chosen = [
        e
        for e in entries
        if (e.desc == "TABLE DATA" and e.oid in data_oids)
        or (e.desc == "SEQUENCE SET" and any(d in seq_ids for d in e.deps))
    ]
    reporter = Progress("verify_restore", progress_key)
    kept = f"the archive {archive} is kept for inspection but did not restore faithfully; {DID_NOT_RUN}"
    with scratch_database(db) as scratch, tempfile.TemporaryDirectory(prefix="safedrop-verify-") as tmp:
        env = {**_tool_env(), **scratch.libpq_env("pg_restore")}
        target = _dbname_arg(scratch.url.database or "")
        listing = Path(tmp) / "data.list"
        listing.write_text("".join(e.line + "\n" for e in chosen))
        steps = [
            (
                "restoring the definitions",
                ["--section=pre-data", "--no-owner", "--no-acl", "--exit-on-error"],
            ),
            (
                "restoring the targets' rows",
                [f"--use-list={listing}", "--exit-on-error", "--no-owner", "--no-acl"],
            ),
        ]
        for index, (what, args) in enumerate(steps):
            reporter.update(index / len(steps), what)
            try:
                _run(
                    tools.pg_restore,
                    [*args, "--no-password", target, str(archive)],
                    env=env,
                    timeout_s=timeout_s,
                )
            except (sh.ErrorReturnCode, sh.TimeoutException) as exc:
                raise BackupFailed(
                    f"verify_restore: {_restore_failure(exc, scratch, what + ' into a scratch database')}; "
                    f"{kept}"
                ) from None
        with connect(scratch) as conn:
            with conn.begin():
                pin_text_settings(conn)
                found = table_checksums(
                    conn,
                    [TableName(t.schema_name, t.table_name) for t in expected],
                    methods=checksum_methods(expected),
                )
                seqs = {s.name: s for s in sequence_states(conn, sorted(removed_seq_names))}
        reporter.finish("compared")
    problems = []
    for t in expected:
        rows, checksum = found.get(TableName(t.schema_name, t.table_name), (None, None))
        if rows != t.rows or checksum != t.checksum:
            problems.append(
                f"{t.name} restored {rows} rows (checksum {checksum}), the database had {t.rows} (checksum "
                f"{t.checksum})"
            )
    for s in sequences:
        got = seqs.get(s.name)
        if got is None or (got.last_value, got.is_called) != (s.last_value, s.is_called):
            problems.append(
                f"sequence {s.name} restored as {got and got.last_value}, expected {s.last_value}"
            )
    if problems:
        raise BackupFailed(f"verify_restore: {'; '.join(problems)}; {kept}")


# --------------------------------------------------------------------------------------------------
# The step
# --------------------------------------------------------------------------------------------------


def take_backup(
    db: Database,
    targets: list[TableName],
    backup_dir: Path,
    *,
    server_version_num: int,
    compression: int = 1,
    timeout_s: int = 3600,
    scope: Scope = "database",
    archive_format: ArchiveFormat = "custom",
    jobs: int = 1,
    verify_restore: bool = False,
    migration: Migration | None = None,
    allow_cascade: Sequence[str] = (),
    flow_run_id: str | None = None,
    progress_key: str | None = None,
    max_bytes: int | None = None,
    lock_wait_s: float | None = None,
) -> BackupResult:
    """Dump the database (``scope``) to a new archive in ``backup_dir``, prove it, and write its manifest.

    ``lock_wait_s`` bounds pg_dump's wait for each table's lock (``--lock-wait-timeout``): a dump that
    cannot get them stops, naming who holds the table, instead of queueing behind them.

    Order: choose pg_dump (refuses a too-old one) → row-level-security check → create the directory and
    the ``.partial`` file (the writability check) → open the snapshot transaction, read what the dump
    must hold → pg_dump ``--snapshot`` while the same snapshot counts and checksums the targets → fsync
    and rename → table-of-contents check → sha256 → optional scratch restore → manifest. Any failure
    before the rename removes the partial file; a later failure keeps the (complete) archive for
    inspection, without a manifest. Raises BackupFailed (``TransientBackupFailure`` when a retry may help).
    """
    started = time.monotonic()
    created_at = datetime.now(UTC).isoformat(timespec="seconds")
    if not 0 <= compression <= 9:
        raise UsageError(f"compression must be 0..9, got {compression}")
    if timeout_s <= 0:
        raise UsageError(f"timeout_s must be positive, got {timeout_s}")
    if scope not in ("database", "targets"):
        raise UsageError(f"backup scope must be 'database' or 'targets', got {scope!r}")
    if archive_format not in ("custom", "directory"):
        raise UsageError(f"backup format must be 'custom' or 'directory', got {archive_format!r}")
    if jobs < 1 or (jobs > 1 and archive_format != "directory"):
        raise UsageError(f"backup jobs {jobs}: parallel dumps (jobs > 1) need the directory format")
    lock_wait_ms = int(lock_wait_s * 1000) if lock_wait_s else None
    tools = find_pg_dump(server_version_num)
    check_row_security(db, targets)
    directory, created = prepare_backup_dir(Path(backup_dir))
    warnings = []
    mode = directory.stat().st_mode & 0o777
    if not created and mode & 0o077:
        holds = "every row of the database" if scope == "database" else "every row of the targets"
        warnings.append(
            f"backup directory {directory} is accessible to other users (mode {mode:04o}); "
            f"the archive holds {holds}"
        )
    partial, final = reserve_backup_file(
        directory, db.url.database or "database", directory=archive_format == "directory"
    )
    logger = run_logger()
    try:
        with exported_snapshot(db) as (conn, exported):
            snapshot = exported["snapshot_id"]
            info = queries.one(conn, "server_info")
            if verify_restore:
                require_createdb(conn, info["current_user"])
            plan = plan_dump(conn, targets, scope=scope, migration=migration, allow_cascade=allow_cascade)
            if archive_format == "directory":
                os.rmdir(partial)  # pg_dump -Fd creates the directory itself (0700 set after)
            progress = DumpProgress(Progress("pg_dump", progress_key), partial, plan.weights)
            args = pg_dump_args(
                partial,
                archive_format=archive_format,
                compression=compression,
                jobs=jobs,
                snapshot=snapshot,
                exclude_data=plan.exclude_data,
                no_blobs=scope == "targets",
                verbose=True,
                lock_wait_ms=lock_wait_ms,
            )
            env = _session_env(db, "pg_dump", server_version_num)
            try:
                running = _start(
                    tools.pg_dump,
                    args,
                    env=env,
                    timeout_s=timeout_s,
                    on_line=progress.line,
                    preexec_fn=_size_limit(max_bytes) if max_bytes else None,
                )
            except OSError as exc:
                raise _dump_failure(exc, db, timeout_s, lock_wait_ms) from None
            try:
                # Same snapshot as pg_dump's, while it runs: the numbers describe the archive's rows.
                sums = table_checksums(conn, plan.targets)
                sequences = sequence_states(conn, plan.sequences)
            except BaseException:
                _kill(running)
                raise
            try:
                _wait(running, on_tick=progress.tick)
            except (sh.ErrorReturnCode, sh.TimeoutException) as exc:
                raise _dump_failure(exc, db, timeout_s, lock_wait_ms) from None
            progress.finish()
            _seal(partial)
            os.rename(partial, final)
            _fsync_dir(directory)
    except sa.exc.DBAPIError as exc:
        _remove(partial)
        first = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        raise _failure(
            f"reading the snapshot for the backup failed: {_mask(first, db)}; {DID_NOT_RUN}"
        ) from None
    except BaseException:
        _remove(partial)
        raise
    entries = read_toc(final, tools)
    tables = verify_archive(final, targets, tools, layout=plan.layout, entries=entries)
    size, digest, files = archive_digest(final)
    checksums = [
        TableChecksum(
            name=t.qualified,
            schema_name=t.schema,
            table_name=t.name,
            relkind=plan.layout[t][0],
            rows=sums[t][0],
            checksum=sums[t][1],
            below=plan.below.get(t, []),
        )
        for t in plan.targets
    ]
    if verify_restore:
        try:
            verify_by_restore(
                db,
                tools,
                final,
                entries,
                plan,
                checksums,
                sequences,
                timeout_s=timeout_s,
                progress_key=f"{progress_key}-verify" if progress_key else None,
            )
        except sa.exc.DBAPIError as exc:
            first = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
            raise BackupFailed(
                f"verify_restore: the scratch database failed: {_mask(first, db)}; the archive {final} is "
                f"kept for inspection; {DID_NOT_RUN}"
            ) from None
    manifest = BackupManifest(
        archive=final.name,
        archive_format=archive_format,
        bytes=size,
        sha256=digest,
        files=files,
        database=db.url.database or "",
        server=db.display,
        server_version=info["server_version"],
        server_version_num=info["server_version_num"],
        pg_dump_version=tools.version_line,
        pg_dump_version_num=tools.version_num,
        scope=scope,
        compression=compression,
        jobs=jobs,
        snapshot=snapshot,
        txid_snapshot=exported["txid_snapshot"],
        migration=migration.name if migration else None,
        created_at=created_at,
        duration_s=round(time.monotonic() - started, 3),
        flow_run_id=flow_run_id,
        targets=checksums,
        sequences=sequences,
        removed=plan.removed,
        cascade=plan.cascade,
        checksum_method=CHECKSUM_METHOD,
        verified_by_restore=verify_restore,
    )
    written = write_manifest(manifest, final)
    logger.debug("manifest %s written", written)
    return BackupResult(
        path=str(final),
        bytes=size,
        sha256=digest,
        pg_dump_version=tools.version_line,
        duration_s=round(time.monotonic() - started, 3),
        tables_in_archive=tables,
        warnings=warnings,
        manifest_path=str(written),
        scope=scope,
        archive_format=archive_format,
        compression=compression,
        targets=checksums,
        verified_by_restore=verify_restore,
        txid_snapshot=exported["txid_snapshot"],
    )


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


def backup_of_run(backup_dir: Path, flow_run_id: str, server_version_num: int) -> BackupResult | None:
    """The archive an earlier attempt of this flow run wrote into ``backup_dir``, proven intact, or None.

    A run that was suspended for approval starts again from the top when it is resumed: it reuses the
    backup it took before (its manifest names the flow run) instead of dumping the database twice. An
    archive that no longer matches its manifest is not reused (a new one is taken).
    """
    for manifest_file, manifest in manifests_of_run(Path(backup_dir), flow_run_id):
        archive = manifest_file.parent / manifest.archive
        size, digest, _ = archive_digest(archive)
        if (size, digest) != (manifest.bytes, manifest.sha256):
            continue
        tools = find_pg_dump(server_version_num)
        targets = [TableName(t.schema_name, t.table_name) for t in manifest.targets]
        tables = verify_archive(archive, targets, tools)
        return BackupResult(
            path=str(archive),
            bytes=size,
            sha256=digest,
            pg_dump_version=manifest.pg_dump_version,
            duration_s=manifest.duration_s,
            tables_in_archive=tables,
            manifest_path=str(manifest_file),
            scope=manifest.scope,
            archive_format=manifest.archive_format,
            compression=manifest.compression,
            targets=manifest.targets,
            verified_by_restore=manifest.verified_by_restore,
            txid_snapshot=manifest.txid_snapshot,
            warnings=[f"reused the backup this flow run took at {manifest.created_at} (archive intact)"],
        )
    return None


def human_bytes(size: int) -> str:
    value = float(size)
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{int(value)} bytes" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} bytes"  # pragma: no cover


def backup_markdown(result: BackupResult, db: Database) -> str:
    rows = [
        {"item": "database", "value": db.display},
        {"item": "path", "value": f"`{result.path}`"},
        {"item": "manifest", "value": f"`{result.manifest_path}`"},
        {"item": "scope", "value": result.scope},
        {"item": "format", "value": f"{result.archive_format}, compression {result.compression}"},
        {"item": "size", "value": f"{result.bytes:,} bytes ({human_bytes(result.bytes)})"},
        {"item": "sha256", "value": f"`{result.sha256}`"},
        {"item": "pg_dump", "value": result.pg_dump_version},
        {"item": "duration", "value": f"{result.duration_s:.2f} s"},
        {"item": "tables verified in the archive", "value": ", ".join(result.tables_in_archive) or "none"},
        {
            "item": "restored into a scratch database and compared",
            "value": "yes" if result.verified_by_restore else "no",
        },
    ]
    text = "### Backup\n\n" + md_table(rows)
    if result.targets:
        text += "\n#### Targets at the dump's snapshot\n\n" + md_table(
            [{"table": t.name, "rows": f"{t.rows:,}", "checksum": t.checksum} for t in result.targets]
        )
    if result.warnings:
        text += "\n" + "".join(f"- ⚠️ {w}\n" for w in result.warnings)
    return text


def retry_if_transient(task, task_run, state) -> bool:
    """Prefect retry_condition_fn: retry only failures a retry can fix (see ``is_transient``)."""
    try:
        error = state.result(raise_on_failure=False)
    except Exception:
        return False
    return isinstance(error, BaseException) and is_transient(error)


@task(
    name="backup",
    retries=2,
    retry_delay_seconds=[2, 10],
    retry_condition_fn=retry_if_transient,
    cache_policy=NO_CACHE,
)
def backup(
    db: Database,
    targets: list[TableName],
    backup_dir: Path,
    *,
    server_version_num: int,
    artifact_prefix: str,
    compression: int = 1,
    timeout_s: int = 3600,
    scope: Scope = "database",
    archive_format: ArchiveFormat = "custom",
    jobs: int = 1,
    verify_restore: bool = False,
    migration: Migration | None = None,
    allow_cascade: Sequence[str] = (),
    flow_run_id: str | None = None,
    lock_wait_s: float | None = None,
) -> BackupResult:
    """Take and verify a backup with its manifest; publish `<artifact_prefix>-backup` (and progress).

    A flow run resumed after a suspension reuses the intact backup it took before.
    """
    logger = get_run_logger()
    earlier = backup_of_run(Path(backup_dir), flow_run_id or "", server_version_num)
    if earlier is not None:
        logger.info("reusing this flow run's backup %s (sha256 %s, intact)", earlier.path, earlier.sha256)
        publish_markdown(
            f"{artifact_prefix}-backup",
            backup_markdown(earlier, db),
            description=f"Verified backup of {db.display}",
        )
        return earlier
    logger.info("backing up %s (scope %s, %s format) into %s", db.display, scope, archive_format, backup_dir)
    result = take_backup(
        db,
        targets,
        Path(backup_dir),
        server_version_num=server_version_num,
        compression=compression,
        timeout_s=timeout_s,
        scope=scope,
        archive_format=archive_format,
        jobs=jobs,
        verify_restore=verify_restore,
        migration=migration,
        allow_cascade=allow_cascade,
        flow_run_id=flow_run_id,
        progress_key=f"{artifact_prefix}-backup-progress",
        lock_wait_s=lock_wait_s,
    )
    logger.info(
        "backup %s: %s, sha256 %s, %.2f s; manifest %s",
        result.path,
        human_bytes(result.bytes),
        result.sha256,
        result.duration_s,
        result.manifest_path,
    )
    for warning in result.warnings:
        logger.warning(warning)
    publish_markdown(
        f"{artifact_prefix}-backup",
        backup_markdown(result, db),
        description=f"Verified backup of {db.display}",
    )
    return result
