"""Small helpers shared by the flow and CLI tests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg2
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

from safedrop.migration import load_migration
from safedrop.parameters import DropParameters
from safedrop.pg.catalog import table_status
from safedrop.pg.database import connect
from safedrop.pg.lockschedule import LockSchedule
from safedrop.pg.pgserver import find_server_bin
from safedrop.results import DropResult, RunReport
from tasks.dependencies import scan_dependencies
from tasks.drop import DropRequest, drop_targets
from tests.conftest import ROOT, TARGETS

BLOCKER_APP = "lock-test-blocker"


def run(params: dict[str, Any] | None = None, **overrides: Any) -> tuple[Any, RunReport]:
    """Run the flow in-process (inside the test harness); returns (state, report).

    Without ``code_paths`` the run scans no code (not the migration's own code source, a placeholder
    URL in sql/) and the code policy defaults to ``skip``.
    """
    from flows.drop_deprecated_tables import drop_deprecated_tables

    fields = {
        "migration": "drop_credit_allocation_tables",
        "database_secret_block": None,
        "approval": "skip",
        **(params or {}),
        **overrides,
    }
    fields.setdefault("code_paths", [])
    # a run that would drop needs a code source or an explicit skip; tests that give no code path
    # do not care about the code
    if not fields.get("code_paths"):
        fields.setdefault("code_policy", "skip")
    state = drop_deprecated_tables(DropParameters(**fields), return_state=True)
    report = state.result(raise_on_failure=False)
    report = getattr(report, "report", report)  # a stopped or failed run carries it in its exception
    assert isinstance(report, RunReport), f"flow returned {report!r}"
    return state, report


def artifacts_of(flow_run_id: str) -> dict[str, Any]:
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
    return {a.key: a for a in found}


class Background:
    """Run a call in a thread; keep its result or exception."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        self.result: Any = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(fn,), daemon=True)
        self.thread.start()

    def _run(self, fn: Callable[[], Any]) -> None:
        try:
            self.result = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            self.error = exc

    def wait(self, timeout: float = 60) -> None:
        """Wait for the call to return (its result or exception is kept)."""
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the background call did not return"

    def join(self, timeout: float = 60) -> Any:
        """Wait for the call; return its result or raise its exception."""
        self.wait(timeout)
        if self.error is not None:
            raise self.error
        return self.result


def session(tdb, app: str, *, autocommit: bool = False):
    """A plain psycopg2 session on the test database, named so the report can name it."""
    conn = psycopg2.connect(tdb.url, application_name=app)
    conn.autocommit = autocommit
    return conn


@contextmanager
def holding(tdb, sql: str, app: str = BLOCKER_APP) -> Iterator[Any]:
    """An open transaction that ran ``sql`` and keeps its locks until the block ends (rolled back)."""
    conn = session(tdb, app)
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
        yield conn
    finally:
        conn.rollback()
        conn.close()


def credit_plan(tdb, allow: list[str] | None = None):
    """What the flow hands the drop step: the migration, the targets' oids, the approved dependency scan."""
    migration = load_migration("drop_credit_allocation_tables")
    with connect(tdb.db) as conn:
        rows = table_status(conn, migration.targets)
    oids = {t: r["oid"] for t, r in zip(migration.targets, rows, strict=True) if r["oid"]}
    return migration, oids, scan_dependencies(tdb.db, migration, oids, allow or [])


def drop_now(db, plan, schedule: LockSchedule | None = None, **request: Any) -> DropResult:
    """``drop_targets`` as the flow calls it, on the guide's empty targets; ``request`` sets any other
    field of the DropRequest (``allow_cascade``, ``record_in_ledger``, ``backup``, ``flow_run_id``, …)."""
    migration, oids, approved = plan
    fields = {"expected_rows": {f"public.{t}": 0 for t in TARGETS}, "record_in_ledger": False, **request}
    return drop_targets(
        db,
        DropRequest(migration, oids, approved, **fields),
        schedule=schedule or LockSchedule(budget_ms=20_000),
        statement_timeout_s=60,
    )


def archive_listing(archive) -> str:
    """``pg_restore --list`` of an archive, by the server's own pg_restore (independent of safedrop)."""
    command = [str(find_server_bin() / "pg_restore"), "--list", str(archive)]
    return subprocess.run(command, check=True, capture_output=True, text=True).stdout


SAFEDROP = Path(sys.executable).parent / "safedrop"  # the console script, as a user runs it


def console_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """A user's shell: no Prefect server configured (the CLI runs its steps in-process), a Prefect home
    and a state directory of the test's own."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    env.update(
        PREFECT_HOME=str(tmp_path / "prefect-home"),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        XDG_STATE_HOME=str(tmp_path / "state"),
        **extra,
    )
    return env


def console(tmp_path: Path, *args: str, timeout: float = 300, **env: str) -> subprocess.CompletedProcess:
    """``safedrop ARGS`` as a user runs it, from ``tmp_path``; its exit code, stdout and stderr."""
    return subprocess.run(
        [str(SAFEDROP), *args],
        cwd=tmp_path,
        env=console_env(tmp_path, **env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@contextmanager
def application(tdb, tmp_path: Path, *extra: str) -> Iterator[dict]:
    """tests/workload.py against ``tdb`` for the block; then its report (ops, errors, latencies)."""
    report_file = tmp_path / f"workload-{len(list(tmp_path.glob('workload-*')))}.json"
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.workload", tdb.url, str(report_file), *extra],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    report: dict = {}
    try:
        assert process.stdout is not None and process.stdout.readline().strip() == "ready"
        yield report
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(60)
    report.update(json.loads(report_file.read_text()))


def pg_dump_child() -> int | None:
    """The pid of a pg_dump this process started to dump (not to say its version), if one runs."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] != "Z" and int(fields[1]) == os.getpid() and _dumps(cmd.split(b"\0")):
            return int(pid)
    return None


def poll(what: str, check, deadline_s: float = 60):
    deadline = time.monotonic() + deadline_s
    while not (result := check()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)
    return result


def _dumps(argv: list[bytes]) -> bool:
    return argv[0].endswith(b"pg_dump") and any(a.startswith(b"--format") for a in argv)
