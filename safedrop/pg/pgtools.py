"""Which pg_dump and pg_restore: found on this machine, asked their version, checked against the server.

This module provides:

- ``PgTools``: a matching pg_dump/pg_restore pair from one bin directory, with its version;
- ``installed_tools()``: every usable pair (``/usr/lib/postgresql/*/bin``, then ``pg_dump`` on PATH);
- ``find_pg_dump(server_version_num)``: the pair for a server — same major, else the newest newer one
  (``$SAFEDROP_PG_BIN`` overrides the search), or ``BackupFailed`` with the package to install;
- ``find_pg_restore(server_version_num, manifest)``: a pg_restore that suits the server and can read
  an archive, or ``RestoreRefused``;
- ``version_key`` / ``server_version_text``: PostgreSQL version numbers as majors and as text.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from safedrop.errors import DID_NOT_RUN, NOTHING_CHANGED, BackupFailed, RestoreRefused
from safedrop.pg.processes import ToolFailed, run, tool_env
from safedrop.results import BackupManifest

PG_BIN_GLOB = "/usr/lib/postgresql/*/bin"
PG_BIN_ENV = "SAFEDROP_PG_BIN"


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


def version_key(version_num: int) -> tuple[int, int]:
    """The major version as a comparable pair: (15, 0) for 15.x, (9, 6) for 9.6.x."""
    if version_num >= 100000:
        return (version_num // 10000, 0)
    return (version_num // 10000, (version_num // 100) % 100)


def server_version_text(version_num: int) -> str:
    """150018 -> '15.18'; 90624 -> '9.6.24'."""
    if version_num >= 100000:
        return f"{version_num // 10000}.{version_num % 10000}"
    return f"{version_num // 10000}.{(version_num // 100) % 100}.{version_num % 100}"


def major_text(version_num: int) -> str:
    major, minor = version_key(version_num)
    return f"{major}.{minor}" if major < 10 else str(major)


def parse_version(line: str) -> tuple[str, int] | None:
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


def probe(bindir: Path) -> PgTools | None:
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
        output = run(pg_dump, ["--version"], env=tool_env(), timeout_s=30)
    except ToolFailed:
        return None
    line = output.strip().splitlines()[0] if output.strip() else ""
    parsed = parse_version(line)
    if parsed is None:
        return None
    version, num = parsed
    return PgTools(
        pg_dump=pg_dump,
        pg_restore=pg_restore,
        major=version_key(num)[0],
        version=version,
        version_num=num,
        version_line=line,
    )


def installed_tools() -> list[PgTools]:
    """Every usable pg_dump: ``/usr/lib/postgresql/*/bin``, then ``pg_dump`` on PATH (if a new version)."""
    found: list[PgTools] = []
    for bindir in sorted(Path("/").glob(PG_BIN_GLOB.lstrip("/"))):
        tools = probe(bindir)
        if tools:
            found.append(tools)
    on_path = shutil.which("pg_dump")
    # Debian's /usr/bin/pg_dump is pg_wrapper, which picks one of the directories above itself.
    if on_path and Path(os.path.realpath(on_path)).name != "pg_wrapper":
        tools = probe(Path(on_path).parent)
        if tools and all(t.version_num != tools.version_num for t in found):
            found.append(tools)
    return found


def install_hint(server_num: int) -> str:
    major = major_text(server_num)
    return (
        f"install PostgreSQL {major}'s client (Debian: apt-get install postgresql-client-{major}) "
        f"or set {PG_BIN_ENV}"
    )


def choose(candidates: Sequence[PgTools], server_version_num: int) -> PgTools | None:
    """The same major as the server (its newest), else the newest newer one; never an older one."""
    server_key = version_key(server_version_num)
    same = [t for t in candidates if version_key(t.version_num) == server_key]
    if same:
        return max(same, key=lambda t: t.version_num)
    newer = [t for t in candidates if version_key(t.version_num) > server_key]
    if newer:
        return max(newer, key=lambda t: t.version_num)
    return None


def _from_override(override: str, server_version_num: int) -> PgTools:
    tools = probe(Path(override))
    if tools is None:
        raise BackupFailed(
            f"{PG_BIN_ENV}={override} holds no working pg_dump and pg_restore; point it at a "
            f"PostgreSQL bin directory (e.g. /usr/lib/postgresql/{major_text(server_version_num)}/bin)"
            f"; {DID_NOT_RUN}"
        )
    if choose([tools], server_version_num) is None:
        raise BackupFailed(
            f"pg_dump {tools.version} in {PG_BIN_ENV}={override} is older than the server "
            f"({server_version_text(server_version_num)}); {install_hint(server_version_num)}; {DID_NOT_RUN}"
        )
    return tools


def find_pg_dump(server_version_num: int) -> PgTools:
    """The pg_dump/pg_restore to use for a server: same major, else the newest newer one.

    pg_dump refuses servers newer than itself (and still leaves an empty output file), so an older one
    is never chosen. ``$SAFEDROP_PG_BIN`` (a bin directory), when set, is the only candidate.
    """
    override = os.environ.get(PG_BIN_ENV)
    if override:
        return _from_override(override, server_version_num)
    candidates = installed_tools()
    if not candidates:
        raise BackupFailed(
            f"no pg_dump found (looked in {PG_BIN_GLOB} and on PATH); {install_hint(server_version_num)}"
            f"; {DID_NOT_RUN}"
        )
    chosen = choose(candidates, server_version_num)
    if chosen is None:
        newest = max(candidates, key=lambda t: t.version_num)
        raise BackupFailed(
            f"pg_dump {newest.version} is older than the server ({server_version_text(server_version_num)}); "
            f"{install_hint(server_version_num)}; {DID_NOT_RUN}"
        )
    return chosen


def find_pg_restore(server_version_num: int, manifest: BackupManifest) -> PgTools:
    """A pg_restore that suits the server and can read the archive (as new as the pg_dump that wrote it)."""
    try:
        tools = find_pg_dump(server_version_num)
    except BackupFailed as exc:
        message = str(exc).replace("pg_dump", "pg_restore").replace(DID_NOT_RUN, NOTHING_CHANGED)
        raise RestoreRefused(message) from None
    if version_key(tools.version_num) < version_key(manifest.pg_dump_version_num):
        raise RestoreRefused(
            f"pg_restore {tools.version} cannot read an archive written by {manifest.pg_dump_version}; "
            f"install that PostgreSQL version's client or set {PG_BIN_ENV}; {NOTHING_CHANGED}"
        )
    return tools
