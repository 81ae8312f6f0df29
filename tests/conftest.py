"""Shared fixtures: one real PostgreSQL for the session, a fresh database per test, real Prefect.

The server runs as the ``postgres`` user when the suite runs as root (PostgreSQL refuses root).
Each test gets its own database, cloned from a template seeded with the guide's schema.
"""

from __future__ import annotations

import os
import re
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent
# Under pytest-xdist each worker is a process of its own with its own PostgreSQL cluster (the session
# fixture `pg`), its own Prefect home (so its own harness database and profile) and backup directory.
WORKER = os.environ.get("PYTEST_XDIST_WORKER", "")
_home = Path(os.environ.get("PREFECT_HOME") or ROOT / ".tmp" / "prefect-test-home")
os.environ["PREFECT_HOME"] = str(_home / WORKER if WORKER else _home)
Path(os.environ["PREFECT_HOME"]).mkdir(parents=True, exist_ok=True)
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO")
os.environ.pop("DATABASE_URL", None)
# a run without backup_dir writes here, never into the checkout or the home directory
_backups = Path(os.environ.get("SAFEDROP_BACKUP_DIR") or ROOT / ".tmp" / "test-backups")
os.environ["SAFEDROP_BACKUP_DIR"] = str(_backups / WORKER if WORKER else _backups)

from safedrop import SQL_DIR  # noqa: E402
from safedrop.pg.database import Database, database_from_url  # noqa: E402
from safedrop.pg.pgserver import LocalPostgres  # noqa: E402
from tests.s3server import s3, s3_server  # noqa: E402, F401 - a real S3-API server (moto) on localhost
from tests.stack import stack  # noqa: E402, F401 - the e2e tests' Prefect server and workers

GUIDE_TEMPLATE = "guide_template"
TARGETS = ["credit_allocation_transactions", "credit_allocations"]
SURVIVORS = ["credits", "credit_transactions", "credit_purchases", "credit_usage", "credit_configurations"]


@pytest.fixture(scope="session")
def pg() -> Iterator[LocalPostgres]:
    server = LocalPostgres().start()
    try:
        server.psql(f"CREATE DATABASE {GUIDE_TEMPLATE}")
        server.psql((SQL_DIR / "demo" / "schema.sql").read_text(), database=GUIDE_TEMPLATE)
        yield server
    finally:
        server.stop()


@dataclass
class TestDatabase:
    server: LocalPostgres
    name: str

    @property
    def url(self) -> str:
        return self.server.url(self.name)

    @property
    def db(self) -> Database:
        return database_from_url(self.url, "test")

    def engine(self) -> sa.Engine:
        return self.db.engine()

    def execute(self, sql: str) -> None:
        """Run setup SQL as the superuser (several statements allowed)."""
        self.server.psql(sql, database=self.name)

    def scalar(self, sql: str, **params):
        engine = self.engine()
        try:
            with engine.connect() as conn:
                return conn.execute(sa.text(sql), params).scalar()
        finally:
            engine.dispose()

    def exists(self, table: str) -> bool:
        return self.scalar("SELECT to_regclass(:t) IS NOT NULL", t=table)

    def count(self, table: str) -> int:
        return int(self.server.psql(f"SELECT count(*) FROM {table}", database=self.name).strip())

    def snapshot(self) -> tuple[str, dict[str, int]]:
        """The whole schema (pg_dump --schema-only) and every table's row count: 'untouched' means equal."""
        assert self.server.bindir is not None
        cmd = [
            str(self.server.bindir / "pg_dump"),
            "--schema-only",
            "-h",
            str(self.server.sockdir),
            "-p",
            str(self.server.port),
            "-U",
            "postgres",
            self.name,
        ]
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        schema = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        schema = re.sub(r"^\\(un)?restrict .*$", "", schema, flags=re.M)
        tables = self.server.psql(
            "SELECT format('%I.%I', schemaname, relname) FROM pg_stat_user_tables ORDER BY 1",
            database=self.name,
        ).split()
        counts = {t: self.count(t) for t in tables}
        return schema, counts


def fresh_database(pg: LocalPostgres, prefix: str, template: str | None = None) -> Iterator[TestDatabase]:
    """A new database for one test (a copy of ``template``), dropped afterwards whatever is connected."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    pg.psql(f"CREATE DATABASE {name}" + (f" TEMPLATE {template}" if template else ""))
    try:
        yield TestDatabase(pg, name)
    finally:
        pg.psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def guide_db(pg: LocalPostgres) -> Iterator[TestDatabase]:
    """A fresh copy of the guide-shaped database (targets empty, nothing else referencing them)."""
    yield from fresh_database(pg, "t", GUIDE_TEMPLATE)


@pytest.fixture
def empty_db(pg: LocalPostgres) -> Iterator[TestDatabase]:
    yield from fresh_database(pg, "e")


@pytest.fixture
def cli_env(monkeypatch, tmp_path):
    """For tests that call the CLI's main(): no DATABASE_URL to start with (main() exports the one it is
    given; registered first, so monkeypatch removes it again afterwards), and a working directory of the
    test's own (no .env of the checkout's)."""
    for name in ("DATABASE_URL", "SAFEDROP_DATABASE_URL", "SAFEDROP_DATABASE_URL_SOURCE"):
        monkeypatch.setenv(name, "unset")
        monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


@pytest.fixture(autouse=True)
def prefect_console_follows_stderr() -> None:
    """Prefect's console log handler keeps the stream it was set up with: in a test, that test's capture,
    closed when it ends, so a later test's flow run logs a "closed file" traceback into its own output.
    Each test: the handler's console writes to the process's own stderr (fd 2, which pytest captures),
    the same in every test whichever imported Prefect first."""
    import sys

    if "prefect.logging.handlers" not in sys.modules:
        return
    from safedrop.runlog import prefect_console_handlers

    for handler in prefect_console_handlers():
        handler.console.file = sys.__stderr__  # type: ignore[attr-defined]


@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[None]:
    """Real Prefect: one temporary API server for the session (~10 s to start)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


# The end-to-end stories first, the longest first: under pytest-xdist (`make test`: two workers,
# --dist loadgroup) each of them starts at once on a worker of its own while the short tests fill the
# other; run serially the order changes nothing else.
LONGEST_FIRST = ("tests/test_fleet_e2e.py", "tests/test_deployments.py::test_deployment_runs_through")


def pytest_collection_modifyitems(config, items) -> None:
    def rank(item) -> int:
        for i, prefix in enumerate(LONGEST_FIRST):
            if item.nodeid.startswith(prefix):
                return i
        return len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: every other test keeps its collected order
