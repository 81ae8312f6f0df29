"""A throwaway PostgreSQL server in a temporary directory, on a free loopback port.

Used by ``safedrop demo`` and by the test suite. PostgreSQL refuses to run as root, so when we are
root the server runs as the ``postgres`` user. Host logins use scram-sha-256 with a real password
(a ``trust`` server would accept any password and prove nothing about secret handling).
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from safedrop.errors import ConfigurationError

SERVER_BIN_GLOB = "/usr/lib/postgresql/*/bin"


def find_server_bin(version: int | None = None) -> Path:
    """The newest installed PostgreSQL server bin directory (or $SAFEDROP_PG_BIN)."""
    override = os.environ.get("SAFEDROP_PG_BIN")
    if override:
        path = Path(override)
        if (path / "postgres").exists():
            return path
        raise ConfigurationError(f"SAFEDROP_PG_BIN={override} holds no postgres binary")
    candidates = []
    for bindir in Path("/").glob(SERVER_BIN_GLOB.lstrip("/")):
        try:
            major = int(bindir.parent.name)
        except ValueError:
            continue
        if (bindir / "postgres").exists() and (version is None or major == version):
            candidates.append((major, bindir))
    if not candidates:
        raise ConfigurationError(
            "PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin; "
            "install them (Debian: apt-get install postgresql) or set SAFEDROP_PG_BIN"
        )
    return max(candidates)[1]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_as_server_user() -> list[str]:
    if os.geteuid() != 0:
        return []
    runuser = shutil.which("runuser")
    if runuser:
        return [runuser, "-u", "postgres", "--"]
    return ["su", "postgres", "-s", "/bin/sh", "-c"]  # pragma: no cover - runuser is in util-linux


@dataclass
class LocalPostgres:
    """Start with ``start()``, stop with ``stop()``; or use as a context manager."""

    password: str = field(default_factory=lambda: secrets.token_urlsafe(18))
    port: int = 0
    bindir: Path | None = None
    base: Path | None = None
    log_statements: bool = False

    def __post_init__(self) -> None:
        self._started = False

    @property
    def datadir(self) -> Path:
        assert self.base is not None
        return self.base / "data"

    @property
    def sockdir(self) -> Path:
        assert self.base is not None
        return self.base / "sock"

    @property
    def logfile(self) -> Path:
        assert self.base is not None
        return self.base / "server.log"

    def url(self, database: str = "postgres", user: str = "postgres", password: str | None = None) -> str:
        pw = self.password if password is None else password
        return f"postgresql://{user}:{pw}@127.0.0.1:{self.port}/{database}"

    def _cmd(self, *args: str | Path) -> list[str]:
        return [*_run_as_server_user(), *map(str, args)]

    def start(self) -> LocalPostgres:
        self.bindir = self.bindir or find_server_bin()
        self.base = Path(tempfile.mkdtemp(prefix="safedrop-pg-"))
        self.sockdir.mkdir()
        pwfile = self.base / "pwfile"
        pwfile.write_text(self.password + "\n")
        if os.geteuid() == 0:
            import pwd

            pg = pwd.getpwnam("postgres")
            for p in (self.base, self.sockdir, pwfile):
                os.chown(p, pg.pw_uid, pg.pw_gid)
        os.chmod(self.base, 0o700)
        os.chmod(pwfile, 0o600)
        self.port = self.port or free_port()
        env = {**os.environ, "LC_ALL": "C.UTF-8", "LANG": "C.UTF-8"}
        env.pop("PGPASSWORD", None)
        subprocess.run(
            self._cmd(
                self.bindir / "initdb",
                "-D",
                self.datadir,
                "-U",
                "postgres",
                "--pwfile",
                pwfile,
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "-E",
                "UTF8",
                "--no-sync",
            ),
            check=True,
            capture_output=True,
            env=env,
        )
        pwfile.unlink()
        options = (
            f"-p {self.port} -k {self.sockdir} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off -c max_connections=60 "
            "-c shared_buffers=128MB"
        )
        if self.log_statements:
            options += " -c log_statement=all"
        result = subprocess.run(
            self._cmd(
                self.bindir / "pg_ctl",
                "-D",
                self.datadir,
                "-l",
                self.logfile,
                "-w",
                "-t",
                "60",
                "-o",
                options,
                "start",
            ),
            capture_output=True,
            env=env,
        )
        if result.returncode != 0:
            log = self.logfile.read_text() if self.logfile.exists() else ""
            raise RuntimeError(f"PostgreSQL did not start: {result.stderr.decode()} {log[-2000:]}")
        self._started = True
        return self

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run SQL as the superuser over the Unix socket (trust), returning stdout."""
        assert self.bindir is not None
        result = subprocess.run(
            self._cmd(
                self.bindir / "psql",
                "-X",
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                self.sockdir,
                "-p",
                str(self.port),
                "-U",
                "postgres",
                "-d",
                database,
                "-At",
                "-f",
                "-",
            ),
            input=sql.encode(),
            capture_output=True,
        )
        if result.returncode != 0:
            raise RuntimeError(f"psql failed: {result.stderr.decode().strip()}")
        return result.stdout.decode()

    def stop(self) -> None:
        if self._started and self.bindir is not None:
            subprocess.run(
                self._cmd(self.bindir / "pg_ctl", "-D", self.datadir, "-m", "immediate", "-w", "stop"),
                capture_output=True,
            )
            self._started = False
        if self.base is not None:
            shutil.rmtree(self.base, ignore_errors=True)
            self.base = None

    def __enter__(self) -> LocalPostgres:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def wait_until(predicate, *, deadline_s: float = 30.0, interval_s: float = 0.05, what: str = "condition"):
    """Poll ``predicate`` until it returns a truthy value or the deadline passes."""
    end = time.monotonic() + deadline_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > end:
            raise TimeoutError(f"timed out after {deadline_s:.0f} s waiting for {what}")
        time.sleep(interval_s)
