"""Every expected failure of the command line, as a user meets it: one line that says what to do, the
exit code, no traceback anywhere in the output, and nothing changed.

The console script runs as a user runs it — no Prefect server configured, so its steps run in-process
— against the suite's real PostgreSQL (password authentication over TCP), a port nobody listens on,
a name no resolver knows, a server that accepts and never answers, a session holding a lock, another
run holding the database, and a machine without pg_dump.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest

from safedrop.pg.pgserver import free_port
from tests.conftest import ROOT
from tests.helpers import console, holding

pytestmark = pytest.mark.cli

RETRIES = ["retrying in 1 s, 1 of 3", "retrying in 2 s, 2 of 3", "retrying in 4 s, 3 of 3"]


def assert_failed_in_one_line(result: subprocess.CompletedProcess, exit_code: int, line: str) -> None:
    output = result.stdout + result.stderr
    assert "Traceback" not in output, output[-3000:]
    assert result.returncode == exit_code, output[-3000:]
    reasons = [r.removeprefix("  ✗ ") for r in result.stdout.splitlines() if r.startswith("  ✗ ")]
    assert reasons == [line], output[-3000:]


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A TCP port that accepts connections and never says a word (a hung server, a black-holing proxy)."""
    server = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        stop.set()
        thread.join(5)
        for conn in held:
            conn.close()
        server.close()


def test_a_refused_connection_is_retried_three_times_then_named(tmp_path):
    port = free_port()
    result = console(tmp_path, "plan", "--database-url", f"postgresql://postgres:pw-123@127.0.0.1:{port}/app")
    assert_failed_in_one_line(
        result, 1, f"cannot connect to postgres@127.0.0.1:{port}/app: Connection refused"
    )
    for retry in RETRIES:
        assert retry in result.stderr, result.stderr
    assert "pw-123" not in result.stdout + result.stderr


def test_an_unknown_host_is_named_at_once(tmp_path):
    result = console(
        tmp_path, "plan", "--database-url", "postgresql://postgres:pw@no-such-host.invalid:5432/app"
    )
    output = result.stdout + result.stderr
    assert "Traceback" not in output and result.returncode == 1, output
    assert (
        '  ✗ cannot connect to postgres@no-such-host.invalid:5432/app: could not translate host name "no-such-host.invalid"'
        in result.stdout
    )
    assert "retrying" not in result.stderr  # no retry can fix a name that does not resolve


def test_a_wrong_password_is_named_at_once_and_not_shown(guide_db, tmp_path):
    before = guide_db.snapshot()
    url = guide_db.url.replace(f":{guide_db.server.password}@", ":not-the-password@")
    result = console(tmp_path, "plan", "--database-url", url)
    assert_failed_in_one_line(
        result,
        1,
        f"cannot connect to postgres@127.0.0.1:{guide_db.server.port}/{guide_db.name}: FATAL:  password "
        'authentication failed for user "postgres"',
    )
    assert "retrying" not in result.stderr and "not-the-password" not in result.stdout + result.stderr
    assert guide_db.snapshot() == before


def test_a_server_that_never_answers_times_out_and_is_retried(tmp_path, silent_server):
    url = f"postgresql://postgres:pw@127.0.0.1:{silent_server}/app?connect_timeout=1"
    result = console(tmp_path, "plan", "--database-url", url)
    assert_failed_in_one_line(
        result, 1, f"cannot connect to postgres@127.0.0.1:{silent_server}/app: timeout expired"
    )
    for retry in RETRIES:
        assert retry in result.stderr, result.stderr


def test_a_lock_that_cannot_be_had_is_named_with_its_holder(guide_db, tmp_path):
    before = guide_db.snapshot()
    with holding(guide_db, "LOCK TABLE credit_allocations IN ACCESS EXCLUSIVE MODE") as blocker:
        pid = blocker.get_backend_pid()
        result = console(
            tmp_path,
            "run",
            "--database-url",
            guide_db.url,
            "--code-policy",
            "skip",
            "--lock-wait-budget",
            "2s",
        )
    line = next((r for r in result.stdout.splitlines() if r.startswith("  ✗ ")), "")
    assert "Traceback" not in result.stdout + result.stderr and result.returncode == 3, result.stdout
    assert line.startswith(
        "  ✗ the cleanup check could not read the tables within the lock-wait budget 2 s; blocked by: "
        f"pid {pid} (lock-test-blocker, idle in transaction"
    ), line
    assert line.endswith("Nothing was changed — let it finish (or end it) and re-run"), line
    assert guide_db.snapshot() == before


HOLD_THE_RUN_LOCK = """
import sys, time
from safedrop.pg.database import database_from_url
from safedrop.pg.runlock import one_run_at_a_time
with one_run_at_a_time(database_from_url(sys.argv[1]), "the-other-run"):
    print("locked", flush=True)
    time.sleep(600)
"""


def test_another_run_holding_the_database_is_named(guide_db, tmp_path):
    before = guide_db.snapshot()
    other = subprocess.Popen(
        [sys.executable, "-c", HOLD_THE_RUN_LOCK, guide_db.url], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    try:
        assert other.stdout is not None and other.stdout.readline().strip() == "locked"
        result = console(tmp_path, "run", "--database-url", guide_db.url, "--code-policy", "skip")
    finally:
        other.kill()
        other.wait(10)
    line = next((r for r in result.stdout.splitlines() if r.startswith("  ✗ ")), "")
    assert "Traceback" not in result.stdout + result.stderr and result.returncode == 3, result.stdout
    assert line.startswith(
        f"  ✗ another safedrop run is already working on {guide_db.db.display}: safedrop run the-other-run (pid "
    ), line
    assert line.endswith("nothing was changed — wait for it to finish, then re-run"), line
    assert guide_db.snapshot() == before


def test_a_machine_without_pg_dump_is_told_where_to_get_it(guide_db, tmp_path):
    before = guide_db.snapshot()
    empty = tmp_path / "no-postgres-bin"
    empty.mkdir()
    result = console(
        tmp_path, "run", "--database-url", guide_db.url, "--code-policy", "skip", SAFEDROP_PG_BIN=str(empty)
    )
    line = next((r for r in result.stdout.splitlines() if r.startswith("  ✗ ")), "")
    assert "Traceback" not in result.stdout + result.stderr and result.returncode == 3, result.stdout
    assert line.startswith(f"  ✗ SAFEDROP_PG_BIN={empty} holds no working pg_dump and pg_restore"), line
    assert guide_db.snapshot() == before
