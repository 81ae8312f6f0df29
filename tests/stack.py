"""A real Prefect server and workers for the end-to-end tests: the processes, their logs, waiting on them."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PREFECT = str(Path(sys.executable).with_name("prefect"))  # the venv's CLI: the worker's runs use its Python


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Stack:
    """The server and worker processes of one e2e test, and every command's output, for failure messages."""

    def __init__(self, tmp_path: Path, env: dict[str, str]):
        self.tmp_path, self.env = tmp_path, env
        self.processes: dict[str, subprocess.Popen] = {}
        self.transcript: list[str] = []
        self.started = time.monotonic()

    def start(self, name: str, *args: str, cwd: Path = ROOT, **env: str) -> subprocess.Popen:
        log = (self.tmp_path / f"{name}.log").open("wb")
        process = subprocess.Popen(
            [PREFECT, *args],
            cwd=cwd,
            env={**self.env, **env},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: killpg stops it and its flow-run children
        )
        log.close()
        self.processes[name] = process
        return process

    def start_server(self, **env: str) -> None:
        """`prefect server start` on the stack's port (``env``: server settings); returns once
        /api/health answers."""
        self.start(
            "server",
            "server",
            "start",
            "--host",
            "127.0.0.1",
            "--port",
            self.env["PREFECT_SERVER_API_PORT"],
            **env,
        )
        health = f"{self.env['PREFECT_API_URL']}/health"
        wait_until(self, "/api/health", lambda: _healthy(health), 90, process="server")

    def cli(self, *args: str, timeout: float = 60, cwd: Path = ROOT) -> subprocess.CompletedProcess:
        """One `prefect` command (from the repository root unless ``cwd``); its output goes into the
        transcript."""
        return self.command([PREFECT, *args], timeout=timeout, cwd=cwd)

    def command(self, argv: list[str], timeout: float = 60, cwd: Path = ROOT) -> subprocess.CompletedProcess:
        shown = " ".join(Path(argv[0]).name if i == 0 else a for i, a in enumerate(argv))
        t0 = time.monotonic()
        try:
            result = subprocess.run(
                argv, cwd=cwd, env=self.env, capture_output=True, text=True, timeout=timeout
            )
        except subprocess.TimeoutExpired as exc:
            raise AssertionError(self.explain(f"`{shown}` ran over {timeout} s")) from exc
        self.transcript.append(
            f"$ {shown}  # exit {result.returncode}, {time.monotonic() - t0:.1f} s\n{result.stdout}{result.stderr}"
        )
        return result

    def ok(self, *args: str, timeout: float = 60, cwd: Path = ROOT) -> str:
        result = self.cli(*args, timeout=timeout, cwd=cwd)
        assert result.returncode == 0, self.explain(f"`prefect {' '.join(args)}` exited {result.returncode}")
        return result.stdout

    def log(self, name: str) -> str:
        path = self.tmp_path / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def explain(self, what: str) -> str:
        parts = [f"{what} ({time.monotonic() - self.started:.1f} s into the test)"]
        for name in self.processes:
            parts.append(f"--- {name}.log (last 6000 chars) ---\n{self.log(name)[-6000:]}")
        parts.append("--- commands ---\n" + "\n".join(self.transcript)[-8000:])
        return "\n".join(parts)

    def stop_one(self, name: str) -> None:
        """Stop one process (and its flow-run children) as systemd would: SIGTERM, then SIGKILL."""
        process = self.processes[name]
        if process.poll() is not None:
            return
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=5)
        except ProcessLookupError:
            pass

    def kill_one(self, name: str) -> None:
        """Take one process (and its flow-run children) away as a machine losing power does: SIGKILL,
        nothing said to anyone. (Their own children — pg_dump — get SIGTERM from the kernel.)"""
        process = self.processes[name]
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait(timeout=15)

    def stop(self) -> None:
        for name in reversed(list(self.processes)):  # last started first: server last
            self.stop_one(name)


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_") and k != "DATABASE_URL"}
    env.update(
        PREFECT_HOME=str(tmp_path / "prefect-home"),  # fresh: its own SQLite database, no profile
        PREFECT_API_URL=f"http://127.0.0.1:{port}/api",
        PREFECT_SERVER_API_HOST="127.0.0.1",
        PREFECT_SERVER_API_PORT=str(port),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_UI_ENABLED="false",
        PREFECT_LOGGING_LEVEL="INFO",
        PREFECT_WORKER_QUERY_SECONDS="1",
        # The scheduler looks every second, so an active schedule would have produced runs by the end.
        PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS="1",
        PREFECT_SERVER_SERVICES_SCHEDULER_RECENT_DEPLOYMENTS_LOOP_SECONDS="1",
        COLUMNS="200",
    )
    stack = Stack(tmp_path, env)
    try:
        yield stack
    finally:
        stack.stop()


def wait_until(stack: Stack, what: str, check, deadline_s: float, process: str | None = None):
    deadline = time.monotonic() + deadline_s
    while True:
        try:
            result = check()
        except AssertionError as exc:
            raise AssertionError(stack.explain(str(exc))) from None
        if result:
            return result
        if process and stack.processes[process].poll() is not None:
            raise AssertionError(stack.explain(f"{process} exited ({stack.processes[process].returncode})"))
        if time.monotonic() > deadline:
            raise AssertionError(stack.explain(f"timed out after {deadline_s} s waiting for {what}"))
        time.sleep(0.25)


def _healthy(url: str) -> bool:
    import httpx

    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def processes_mentioning(text: str) -> dict[int, str]:
    """Every live process whose command line mentions ``text`` (pid → command line)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")
                state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
            except (OSError, IndexError):
                continue
            if text in cmdline and state != "Z":
                found[int(entry.name)] = cmdline
    return found


def worker_installation(tmp_path: Path) -> Path:
    """safedrop as a worker on another machine has it: built into a wheel, installed into a directory of
    its own (no checkout, no editable install; sql/ comes from the package). Its path goes first on
    the worker's PYTHONPATH."""
    wheels, site = tmp_path / "wheel", tmp_path / "worker-site"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(
        [*pip, "wheel", "--no-deps", "-w", str(wheels), str(ROOT)],
        check=True,
        capture_output=True,
        cwd=tmp_path,
    )
    (wheel,) = wheels.glob("safedrop-*.whl")
    subprocess.run(
        [*pip, "install", "--no-deps", "--target", str(site), str(wheel)], check=True, capture_output=True
    )
    shutil.rmtree(ROOT / "build", ignore_errors=True)  # setuptools' scratch directory
    return site


def final(stack: Stack, client, flow_run_id, deadline_s: float, process: str):
    return wait_until(
        stack,
        f"flow run {flow_run_id} to finish",
        lambda: (r := client.read_flow_run(flow_run_id)).state.is_final() and r,
        deadline_s,
        process=process,
    )
