"""Stopping the command line: SIGTERM (what `timeout`, CI runners and systemd send), Ctrl-C and SIGKILL
at points spread over a run's life, each with the run held there by a real lock a session of ours keeps.

Each time: the CLI exits promptly with 143 (130 for Ctrl-C) and one line saying what was and was not
done; every process it started is gone, and so is every server session of its own or of its pg_dump;
the targets are never half dropped; and once the lock is released the next run converges.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import TARGETS
from tests.helpers import SAFEDROP, console, console_env, holding

pytestmark = pytest.mark.cli

PROMPTLY_S = 20  # a deadline for the CLI to exit once signalled, not a speed target


class Cli:
    """``safedrop run`` in the background as a user starts it, with its backups in ``tmp_path/b``."""

    def __init__(self, guide_db, tmp_path: Path, *args: str) -> None:
        self.backups = tmp_path / "b"
        self.stderr_path = tmp_path / "stderr.txt"
        argv = [str(SAFEDROP), "run", "--database-url", guide_db.url, "--code-policy", "skip", *args]
        with self.stderr_path.open("w") as err:
            self.process = subprocess.Popen(
                argv,
                cwd=tmp_path,
                env=console_env(tmp_path, SAFEDROP_BACKUP_DIR=str(self.backups)),
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
            )

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def wait_for(self, what: str, check: Callable[[], bool], deadline_s: float = 60) -> None:
        """Poll ``check`` until it holds; fail naming ``what`` if the CLI exits or the deadline passes."""
        deadline = time.monotonic() + deadline_s
        while not check():
            if self.process.poll() is not None:
                pytest.fail(f"the CLI exited {self.process.returncode} before {what}:\n{self.stderr}")
            if time.monotonic() > deadline:
                pytest.fail(f"no {what} within {deadline_s} s:\n{self.stderr}")
            time.sleep(0.02)

    def descendants(self) -> set[int]:
        """Every process the CLI started (children, their children), now."""
        found, frontier = set(), [self.process.pid]
        while frontier:
            pid = frontier.pop()
            for task in Path(f"/proc/{pid}/task").glob("*"):
                try:
                    children = {int(c) for c in (task / "children").read_text().split()}
                except OSError:
                    continue
                frontier.extend(children - found)
                found |= children
        return found

    def stop(self, signum: int) -> tuple[int, str, set[int]]:
        """Send ``signum``; the exit code, the last stderr line, and the processes it had started."""
        started = self.descendants()
        self.process.send_signal(signum)
        try:
            self.process.wait(timeout=PROMPTLY_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            pytest.fail(f"the CLI did not exit within {PROMPTLY_S} s of {signal.Signals(signum).name}")
        self.process.stdout.close()
        lines = [line for line in self.stderr.splitlines() if line.strip()]
        return self.process.returncode, lines[-1] if lines else "", started


@pytest.fixture
def cli(guide_db, tmp_path) -> Iterator[Callable[..., Cli]]:
    started: list[Cli] = []

    def start(*args: str) -> Cli:
        started.append(Cli(guide_db, tmp_path, *args))
        return started[-1]

    yield start
    for c in started:
        if c.process.poll() is None:
            c.process.kill()
            c.process.wait()


def traps_sigterm(pid: int) -> bool:
    """The process has its SIGTERM handler installed (SigCgt in /proc/PID/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) & (1 << (signal.SIGTERM - 1)))
    return False


def sessions(guide_db, where: str) -> int:
    return guide_db.scalar(
        f"SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid() AND {where}"
    )


OURS = "application_name LIKE 'safedrop%' AND pid <> pg_backend_pid()"  # its pg_dump's too


def waiting_for_a_lock(guide_db, application: str) -> Callable[[], bool]:
    return lambda: (
        sessions(guide_db, f"application_name LIKE '{application}' AND wait_event_type = 'Lock'") > 0
    )


def assert_nothing_left(guide_db, started: set[int]) -> None:
    """No process the CLI started is alive, and no session of it (or of its pg_dump) is on the server."""
    alive = {pid for pid in started if Path(f"/proc/{pid}").exists()}
    assert not alive, {pid: Path(f"/proc/{pid}/cmdline").read_bytes() for pid in alive}
    deadline = time.monotonic() + 10  # the server ends a cancelled backend's session asynchronously
    while sessions(guide_db, OURS) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert sessions(guide_db, OURS) == 0, guide_db.scalar(
        f"SELECT string_agg(application_name || ' ' || state, ', ') FROM pg_stat_activity WHERE {OURS}"
    )


def assert_targets_intact(guide_db) -> None:
    assert all(guide_db.exists(f"public.{t}") for t in TARGETS)


def converges(guide_db, tmp_path: Path) -> None:
    """The next run, with nothing in its way, drops the targets and verifies."""
    again = console(tmp_path, "run", "--database-url", guide_db.url, "--code-policy", "skip")
    assert again.returncode == 0, again.stdout + again.stderr
    assert not any(guide_db.exists(f"public.{t}") for t in TARGETS)


@pytest.mark.parametrize("signum, exit_code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_sigterm_or_ctrl_c_at_start_up(cli, guide_db, tmp_path, signum, exit_code):
    before = guide_db.snapshot()
    run = cli()
    run.wait_for("a SIGTERM handler", lambda: traps_sigterm(run.process.pid))
    code, line, started = run.stop(signum)
    assert (code, line) == (exit_code, "safedrop: interrupted before it started; nothing was changed"), (
        run.stderr
    )
    assert "Traceback" not in run.stderr
    assert_nothing_left(guide_db, started)
    assert guide_db.snapshot() == before
    converges(guide_db, tmp_path)


def test_sigterm_during_the_prechecks(cli, guide_db, tmp_path):
    before = guide_db.snapshot()
    with holding(guide_db, "LOCK TABLE credit_allocations IN ACCESS EXCLUSIVE MODE"):
        run = cli("--lock-wait-budget", "5m")
        run.wait_for("the cleanup check waiting for its lock", waiting_for_a_lock(guide_db, "safedrop%"))
        code, line, started = run.stop(signal.SIGTERM)
        assert (code, line) == (143, "safedrop: interrupted during the prechecks; nothing was changed")
        assert "Traceback" not in run.stderr
        assert_nothing_left(guide_db, started)  # its waiting query was cancelled, the lock still held
    assert guide_db.snapshot() == before
    converges(guide_db, tmp_path)


@pytest.mark.parametrize("signum, exit_code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_sigterm_or_ctrl_c_during_the_backup(cli, guide_db, tmp_path, signum, exit_code):
    before = guide_db.snapshot()
    with holding(guide_db, "LOCK TABLE tenants IN ACCESS EXCLUSIVE MODE"):  # pg_dump waits for it
        run = cli("--lock-wait-budget", "5m")
        run.wait_for("pg_dump waiting for its lock", waiting_for_a_lock(guide_db, "safedrop pg_dump"))
        code, line, started = run.stop(signum)
        assert (code, line) == (
            exit_code,
            "safedrop: interrupted during the backup; nothing was dropped (the partial archive was removed)",
        ), run.stderr
        assert "Traceback" not in run.stderr
        assert started, "pg_dump was not running"
        assert_nothing_left(guide_db, started)  # pg_dump stopped, its query cancelled: the lock still held
    assert not list(run.backups.glob("*")), list(run.backups.glob("*"))
    assert guide_db.snapshot() == before
    converges(guide_db, tmp_path)


def test_sigterm_during_a_backup_into_a_bucket_leaves_no_object_and_no_upload(cli, guide_db, tmp_path, s3):
    """The archive streams into the store: a SIGTERM while pg_dump waits (the multipart upload already
    begun) stops pg_dump, aborts the upload — no object, no parts — and drops nothing."""
    before = guide_db.snapshot()
    with holding(guide_db, "LOCK TABLE tenants IN ACCESS EXCLUSIVE MODE"):
        run = cli("--lock-wait-budget", "5m", "--backup-dir", f"s3://{s3.name}/backups")
        run.wait_for("pg_dump waiting for its lock", waiting_for_a_lock(guide_db, "safedrop pg_dump"))
        run.wait_for("the upload to begin", lambda: bool(s3.uploads_in_progress()))
        code, line, started = run.stop(signal.SIGTERM)
        assert (code, line) == (
            143,
            "safedrop: interrupted during the backup; nothing was dropped (the partial archive was removed)",
        ), run.stderr
        assert "Traceback" not in run.stderr
        assert_nothing_left(guide_db, started)
    assert s3.keys() == [] and s3.uploads_in_progress() == []
    assert guide_db.snapshot() == before


def test_sigkill_during_the_backup_leaves_no_pg_dump(cli, guide_db, tmp_path):
    """SIGKILL runs no cleanup: the kernel tells pg_dump its parent is gone, and pg_dump cancels its
    query on the way out."""
    before = guide_db.snapshot()
    with holding(guide_db, "LOCK TABLE tenants IN ACCESS EXCLUSIVE MODE"):
        run = cli("--lock-wait-budget", "5m")
        run.wait_for("pg_dump waiting for its lock", waiting_for_a_lock(guide_db, "safedrop pg_dump"))
        code, _, started = run.stop(signal.SIGKILL)
        assert code == -signal.SIGKILL and started
        deadline = time.monotonic() + PROMPTLY_S
        while any(Path(f"/proc/{p}").exists() for p in started) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert_nothing_left(guide_db, started)
    assert guide_db.snapshot() == before
    converges(guide_db, tmp_path)


def test_sigterm_while_the_drop_waits_rolls_it_back(cli, guide_db, tmp_path):
    """The drop holds the targets and waits for a reader of credits (which the targets reference):
    interrupted there, its transaction rolls back whole."""
    with holding(guide_db, "SELECT count(*) FROM credits"):  # an application transaction reading credits
        run = cli("--lock-wait-budget", "5m")
        run.wait_for(
            "the drop holding the targets and waiting",
            lambda: (
                guide_db.scalar(
                    "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid) "
                    "WHERE a.application_name LIKE 'safedrop%' AND l.granted AND l.mode = 'AccessExclusiveLock' "
                    "AND l.relation = 'credit_allocations'::regclass"
                )
                > 0
            ),
        )
        code, line, started = run.stop(signal.SIGTERM)
        assert (code, line) == (
            143,
            "safedrop: interrupted before the drop committed; it rolled back: nothing was dropped",
        ), run.stderr
        assert "Traceback" not in run.stderr
        assert_nothing_left(guide_db, started)
        assert_targets_intact(guide_db)
    converges(guide_db, tmp_path)
