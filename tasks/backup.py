"""Step: a verified full-database backup before anything is dropped.

``take_backup`` runs ``pg_dump --format=custom`` into ``<backup_dir>/<db>-<UTC time>.dump``, checks that the
archive's table of contents holds every target's definition and data, and returns its size and sha256.
The password reaches pg_dump only through its environment (``PGPASSWORD``), never its argv; a failure
never leaves a partial file behind. The ``backup`` task adds retries (connection failures only) and a
markdown artifact.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import os
import re
import secrets
import shutil
import signal
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote

import sh
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from safedrop import queries
from safedrop.artifacts import md_table, publish_markdown
from safedrop.database import Database, connect
from safedrop.errors import BackupFailed, ConnectionFailed, UsageError
from safedrop.migration import TableName
from safedrop.report import BackupResult

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


def reserve_backup_file(backup_dir: Path, database: str, *, now: datetime | None = None) -> tuple[Path, Path]:
    """Create ``<db>-<UTC>.dump.partial`` (O_EXCL, 0600) and return (partial, final).

    Creating the partial file is also the writability check (permission bits alone don't tell, e.g. for
    root). The exclusive create reserves the final name against a concurrent run in the same second.
    """
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")
    base = f"{_safe_name(database)}-{stamp}"
    for attempt in range(20):
        stem = base if attempt == 0 else f"{base}-{secrets.token_hex(2)}"
        final = backup_dir / f"{stem}.dump"
        partial = backup_dir / f"{stem}.dump.partial"
        if final.exists():
            continue
        try:
            fd = os.open(partial, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        except FileExistsError:
            continue
        except OSError as exc:
            raise BackupFailed(
                f"backup directory {backup_dir} is not writable ({exc.strerror or exc.__class__.__name__}); "
                f"pass a backup_dir this process can write to, or fix its permissions; {DID_NOT_RUN}"
            ) from None
        os.close(fd)
        os.chmod(partial, 0o600)  # whatever the umask
        return partial, final
    raise BackupFailed(f"could not pick a free backup file name in {backup_dir}; {DID_NOT_RUN}")


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


def _run(command: Path, args: Sequence[str], *, env: dict[str, str], timeout_s: float):
    """Run a tool in the background and wait; on any interruption kill it before re-raising."""
    running = sh.Command(str(command))(
        *args,
        _env=env,
        _timeout=timeout_s,
        _bg=True,
        _bg_exc=False,
        _tty_out=False,
        _return_cmd=True,
    )
    try:
        running.wait()
    except BaseException:
        try:
            if running.process.is_alive()[0]:
                running.process.signal(signal.SIGKILL)
                running.process.wait()  # reap it, so nothing writes after we clean up
        except Exception:
            pass
        raise
    return running


def run_pg_dump(
    tools: PgTools, db: Database, output: Path, *, compression: int = 1, timeout_s: float = 3600
) -> None:
    """pg_dump the whole database into ``output`` (custom format). Raises BackupFailed, one secret-free line.

    Connection settings and the password reach pg_dump only through its environment; argv holds only
    format options and the output file. ``timeout_s`` kills the child (a Prefect timeout would not).
    """
    env = {**_tool_env(), **db.libpq_env()}
    args = ["--format=custom", f"--compress={compression}", "--no-password", f"--file={output}"]
    try:
        _run(tools.pg_dump, args, env=env, timeout_s=timeout_s)
    except sh.TimeoutException:
        raise BackupFailed(
            f"pg_dump did not finish within {timeout_s:g} s and was stopped; raise timeout_s, or check for "
            f"locks held on the database's tables; {DID_NOT_RUN}"
        ) from None
    except sh.SignalException as exc:
        name = signal.Signals(-exc.exit_code).name if -exc.exit_code in signal.valid_signals() else "?"
        raise BackupFailed(
            f"pg_dump was killed by signal {name} before it finished (check memory limits and "
            f"who stops processes on this host); {DID_NOT_RUN}"
        ) from None
    except sh.ErrorReturnCode as exc:
        stderr = exc.stderr or b""
        summary = _stderr_summary(stderr, db) or f"exit code {exc.exit_code}"
        raise _failure(
            f"pg_dump failed: {summary}; {DID_NOT_RUN}",
            detail_text=stderr.decode("utf-8", "replace"),
        ) from None
    except OSError as exc:  # could not start it at all
        raise BackupFailed(f"pg_dump could not be started ({exc.strerror or exc}); {DID_NOT_RUN}") from None


_TOC_LINE = re.compile(r"^\s*\d+;\s+\d+\s+\d+\s+(?P<rest>.*)$")


def archive_toc(path: Path, tools: PgTools, *, timeout_s: float = 300) -> list[str]:
    """The archive's table of contents (``pg_restore --list``), each entry as 'DESC schema name owner'."""
    try:
        running = _run(tools.pg_restore, ["--list", str(path)], env=_tool_env(), timeout_s=timeout_s)
    except sh.TimeoutException:
        raise BackupFailed(
            f"pg_restore --list {path} did not finish within {timeout_s:g} s; {DID_NOT_RUN}"
        ) from None
    except sh.ErrorReturnCode as exc:
        text = (exc.stderr or b"").decode("utf-8", "replace")
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
        first = next(
            (ln.split("error:", 1)[1].strip() for ln in lines if "error:" in ln),
            lines[-1] if lines else f"exit code {exc.exit_code}",
        )
        raise BackupFailed(
            f"the archive {path} does not read back (pg_restore: {first}); {DID_NOT_RUN}"
        ) from None
    entries = []
    for line in str(running).splitlines():
        match = _TOC_LINE.match(line)
        if match:
            entries.append(match.group("rest"))
    return entries


def _has_entry(entries: Iterable[str], desc: str, table: TableName) -> bool:
    prefix = f"{desc} {table.schema} {table.name}"
    return any(e == prefix or e.startswith(prefix + " ") for e in entries)


def verify_archive(path: Path, targets: Sequence[TableName], tools: PgTools) -> list[str]:
    """Check that every target has a TABLE and a TABLE DATA entry; return their qualified names.

    Raises BackupFailed naming the tables that are missing (the archive file is left in place).
    """
    entries = archive_toc(Path(path), tools)
    found, missing = [], []
    for table in targets:
        lacks = [desc for desc in ("TABLE", "TABLE DATA") if not _has_entry(entries, desc, table)]
        if lacks:
            missing.append(f"{table.qualified} (no {' or '.join(lacks)} entry)")
        else:
            found.append(table.qualified)
    if missing:
        raise BackupFailed(
            f"the archive {path} lacks {', '.join(missing)}; it is kept for inspection but is not a backup "
            f"of the targets; {DID_NOT_RUN}"
        )
    return found


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


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
) -> BackupResult:
    """Dump the whole database to a new file in ``backup_dir``, verify the targets are in it, hash it.

    Order: choose pg_dump (refuses a too-old one) → row-level-security check → create the directory and
    the ``.partial`` file (the writability check) → pg_dump → fsync and rename → ``pg_restore --list``
    verification → sha256. Any failure before the rename removes the partial file; a failed verification
    keeps the (complete) archive for inspection. Raises BackupFailed (``TransientBackupFailure`` when a
    retry may help).
    """
    started = time.monotonic()
    if not 0 <= compression <= 9:
        raise UsageError(f"compression must be 0..9, got {compression}")
    if timeout_s <= 0:
        raise UsageError(f"timeout_s must be positive, got {timeout_s}")
    tools = find_pg_dump(server_version_num)
    check_row_security(db, targets)
    directory, created = prepare_backup_dir(Path(backup_dir))
    warnings = []
    mode = directory.stat().st_mode & 0o777
    if not created and mode & 0o077:
        warnings.append(
            f"backup directory {directory} is accessible to other users (mode {mode:04o}); "
            "the archive holds every row of the database"
        )
    partial, final = reserve_backup_file(directory, db.url.database or "database")
    try:
        run_pg_dump(tools, db, partial, compression=compression, timeout_s=timeout_s)
        _fsync_file(partial)
        os.chmod(partial, 0o600)
        os.rename(partial, final)
        _fsync_dir(directory)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    tables = verify_archive(final, targets, tools)
    return BackupResult(
        path=str(final),
        bytes=final.stat().st_size,
        sha256=sha256_file(final),
        pg_dump_version=tools.version_line,
        duration_s=round(time.monotonic() - started, 3),
        tables_in_archive=tables,
        warnings=warnings,
    )


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
        {"item": "size", "value": f"{result.bytes:,} bytes ({human_bytes(result.bytes)})"},
        {"item": "sha256", "value": f"`{result.sha256}`"},
        {"item": "pg_dump", "value": result.pg_dump_version},
        {"item": "duration", "value": f"{result.duration_s:.2f} s"},
        {"item": "tables verified in the archive", "value": ", ".join(result.tables_in_archive) or "none"},
    ]
    text = "### Backup\n\n" + md_table(rows)
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
) -> BackupResult:
    """Take and verify a full backup; publish `<artifact_prefix>-backup`."""
    logger = get_run_logger()
    logger.info("backing up %s into %s", db.display, backup_dir)
    result = take_backup(
        db,
        targets,
        Path(backup_dir),
        server_version_num=server_version_num,
        compression=compression,
        timeout_s=timeout_s,
    )
    logger.info(
        "backup %s: %s, sha256 %s, %.2f s",
        result.path,
        human_bytes(result.bytes),
        result.sha256,
        result.duration_s,
    )
    for warning in result.warnings:
        logger.warning(warning)
    publish_markdown(
        f"{artifact_prefix}-backup",
        backup_markdown(result, db),
        description=f"Verified backup of {db.display}",
    )
    return result
