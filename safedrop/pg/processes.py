"""Running pg_dump, pg_restore and friends: one way to start, wait for and stop a tool.

This module provides:

- ``tool_env()`` / ``session_env(db, tool, server_version_num)``: a child's minimal environment, with
  the connection settings and the password in libpq variables — never in argv;
- ``dbname_arg(name)``: ``--dbname`` for a database name that could be mistaken for a conninfo;
- ``start`` / ``wait`` / ``kill`` / ``run``: a tool in the background with a timeout (the child is
  killed, not abandoned), an optional cap on the size of every file it writes, its stderr lines kept
  (and passed to a callback), a tick while it runs, and killed and reaped on any interruption;
- ``ToolFailed``: the one way a tool fails — it exited non-zero, outlived its timeout, was killed by a
  signal, or could not be started — carrying the tool, how it failed and its stderr;
- ``stderr_summary`` / ``first_error``: one line of a libpq tool's stderr, password masked;
- ``Spout``: a tool's stdout as a readable stream, a few MiB in memory at most (the tool waits while the
  reader is behind) — pg_dump's archive on its way to object storage, never on the local disk.
"""

from __future__ import annotations

import ctypes
import os
import queue
import re
import resource
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import sh

from safedrop.errors import SafedropError
from safedrop.pg.database import Database, mask_password

Failure = Literal["exit", "signal", "timeout", "not-started"]
CHECK_KILLERS = "check memory limits and who stops processes on this host"  # what to do about a signal


class ToolFailed(SafedropError):
    """A tool did not succeed. ``kind`` says how: ``exit`` (non-zero, ``exit_code``), ``signal`` (killed,
    ``signal_name``), ``timeout`` (stopped after ``timeout_s``) or ``not-started`` (``reason``).
    ``stderr`` holds what it wrote there (its last 500 lines)."""

    def __init__(
        self,
        tool: str,
        kind: Failure,
        *,
        exit_code: int | None = None,
        stderr: str = "",
        timeout_s: float | None = None,
        reason: str = "",
    ) -> None:
        self.tool, self.kind, self.exit_code = tool, kind, exit_code
        self.stderr, self.timeout_s, self.reason = stderr, timeout_s, reason
        super().__init__(self._describe())

    @property
    def signal_name(self) -> str:
        number = -(self.exit_code or 0)
        return signal.Signals(number).name if number in signal.valid_signals() else "?"

    def _describe(self) -> str:
        if self.kind == "timeout":
            return f"{self.tool} did not finish within {self.timeout_s:g} s and was stopped"
        if self.kind == "signal":
            return f"{self.tool} was killed by signal {self.signal_name} before it finished"
        if self.kind == "not-started":
            return f"{self.tool} could not be started ({self.reason})"
        return f"{self.tool} exited with code {self.exit_code}"

    def __reduce__(self):
        state = (self.exit_code, self.stderr, self.timeout_s, self.reason)
        return (_rebuild_tool_failed, (self.tool, self.kind, *state))


def _rebuild_tool_failed(tool, kind, exit_code, stderr, timeout_s, reason) -> ToolFailed:
    return ToolFailed(tool, kind, exit_code=exit_code, stderr=stderr, timeout_s=timeout_s, reason=reason)


def tool_env() -> dict[str, str]:
    """The minimal environment every child process gets (libpq variables are added per call)."""
    return {
        "PATH": os.environ.get("PATH") or "/usr/local/bin:/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
    }


def session_env(db: Database, tool: str, server_version_num: int = 0) -> dict[str, str]:
    """The libpq environment of pg_dump or pg_restore. On PostgreSQL 14+ its session also checks every
    second that the tool is still connected: a tool killed while its session waits for a lock would
    otherwise leave that session queued (holding the locks it already has, and queueing everyone who
    comes after it) until the lock is granted (``server_version_num`` not given: no such check).
    """
    env = {**tool_env(), **db.libpq_env(tool)}
    if server_version_num >= 140000:
        env["PGOPTIONS"] = f"{env.get('PGOPTIONS', '')} -c client_connection_check_interval=1000".strip()
    return env


def dbname_arg(name: str) -> str:
    """``--dbname`` for libpq tools: a bare name, or a conninfo when the name could be mistaken for one."""
    if "=" in name or name.startswith(("postgresql:", "postgres:")):
        escaped = name.replace("\\", "\\\\").replace("'", "\\'")
        return f"--dbname=dbname='{escaped}'"
    return f"--dbname={name}"


_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent() -> None:
    """A preexec_fn: the kernel sends the child SIGTERM when the thread that started it is gone (Linux),
    so a safedrop stopped by SIGKILL — which runs no cleanup — leaves no pg_dump, pg_restore, ripgrep or
    git running, and pg_dump and pg_restore cancel their query on the way out (no session of theirs
    left waiting for a lock). A SIGTERM or Ctrl-C is handled: the child is stopped on the way out."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass  # not Linux: the cleanup on the way out is all there is


def size_limit(max_bytes: int) -> Callable[[], None]:
    """A preexec_fn capping every file the child writes at ``max_bytes`` (RLIMIT_FSIZE).

    SIGXFSZ is ignored so the write fails with EFBIG ("File too large"), as a full disk fails with
    ENOSPC, and the tool reports it and exits instead of dumping core.
    """

    def apply() -> None:
        die_with_parent()
        resource.setrlimit(resource.RLIMIT_FSIZE, (max_bytes, max_bytes))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)

    return apply


class Abandoned(Exception):
    """A ``Spout`` read after it was abandoned."""


class Spout:
    """A tool's stdout, readable as a stream while the tool writes it (``start(..., stdout=spout)``).

    At most ``max_chunks`` of sh's chunks wait in memory: when the reader is behind, the tool blocks on
    its pipe. ``end()`` (after the tool was waited for) marks the end; ``abandon()`` (the reader gives
    up) drops whatever comes after, so a tool being killed never blocks on a full queue.
    """

    _END = b""

    def __init__(self, max_chunks: int = 8) -> None:
        self._queue: queue.Queue[bytes] = queue.Queue(max_chunks)
        self._abandoned = threading.Event()
        self._pending = b""
        self._ended = False

    # the tool's side (sh's output thread): a file object without an encoding gets bytes
    def write(self, chunk: bytes) -> None:
        if chunk:
            self._put(chunk)

    def flush(self) -> None:
        pass

    def end(self) -> None:
        self._put(self._END)

    def _put(self, chunk: bytes) -> None:
        while not self._abandoned.is_set():
            try:
                self._queue.put(chunk, timeout=0.1)
                return
            except queue.Full:
                continue

    # the reader's side
    def read(self, size: int = -1) -> bytes:
        """Up to ``size`` bytes (all of what is waiting when -1); b"" only at the end. Raises
        ``Abandoned`` once ``abandon()`` was called (from another thread: the reader stops too)."""
        while not self._pending and not self._ended:
            if self._abandoned.is_set():
                raise Abandoned("the stream was abandoned")
            try:
                chunk = self._queue.get(timeout=0.1)
            except queue.Empty:
                continue
            if chunk == self._END:  # write() never queues an empty chunk
                self._ended = True
            else:
                self._pending = chunk
        if size < 0 or size >= len(self._pending):
            out, self._pending = self._pending, b""
        else:
            out, self._pending = self._pending[:size], self._pending[size:]
        return out

    def abandon(self) -> None:
        self._abandoned.set()
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                return


@dataclass
class Process:
    """A started tool: its name, sh's handle, the stderr lines it wrote so far, its timeout."""

    tool: str
    command: Any  # sh.RunningCommand
    stderr_lines: deque[str]
    timeout_s: float

    def alive(self) -> bool:
        return bool(self.command.process.is_alive()[0])

    def stderr(self) -> str:
        return "".join(self.stderr_lines)


def start(
    command: Path,
    args: Sequence[str],
    *,
    env: dict[str, str],
    timeout_s: float,
    on_line: Callable[[str], None] | None = None,
    max_bytes: int | None = None,
    stdout: Spout | None = None,
    stdin: Iterable[bytes] | None = None,
) -> Process:
    """Start a tool in the background; its stderr lines are kept (and passed to ``on_line``), its stdout
    goes to ``stdout`` when given (a ``Spout``: read it while the tool runs); ``stdin`` feeds it chunks
    (an object streamed from the store: the tool may stop reading early, as ``pg_restore --list`` does).

    Raises ToolFailed (``not-started``) when it cannot be started at all.
    """
    lines: deque[str] = deque(maxlen=500)

    def err(line: str) -> None:
        lines.append(line)
        if on_line is not None:
            try:
                on_line(line.rstrip("\n"))
            except Exception:
                pass

    kwargs: dict[str, Any] = dict(
        _env=env,
        _timeout=timeout_s,
        _bg=True,
        _bg_exc=False,
        _tty_out=False,
        _return_cmd=True,
        _err=err,
        _timeout_signal=signal.SIGTERM,  # then kill() makes sure
    )
    kwargs["_preexec_fn"] = size_limit(max_bytes) if max_bytes else die_with_parent
    if stdout is not None:
        kwargs.update(_out=stdout, _out_bufsize=1024 * 1024)
    if stdin is not None:
        kwargs.update(_in=stdin, _in_bufsize=64 * 1024)
    tool = Path(command).name
    try:
        running = sh.Command(str(command))(*args, **kwargs)
    except (sh.CommandNotFound, OSError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise ToolFailed(tool, "not-started", reason=reason) from None
    return Process(tool, running, lines, timeout_s)


def kill(process: Process, grace_s: float = 5.0) -> None:
    """Stop the tool if it still runs, and reap it, so nothing writes after we clean up.

    SIGTERM first: pg_dump and pg_restore answer it by cancelling their query on the server, so no
    session of theirs is left waiting for a lock; SIGKILL if it is still running after ``grace_s``."""
    try:
        if not process.alive():
            return
        process.command.process.signal(signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while process.alive() and time.monotonic() < deadline:
            time.sleep(0.02)
        if process.alive():
            process.command.process.signal(signal.SIGKILL)
        process.command.process.wait()
    except Exception:
        pass


def wait(process: Process, *, on_tick: Callable[[], None] | None = None, tick_s: float = 1.0) -> str:
    """Wait for a started tool and return its stdout, calling ``on_tick`` about every ``tick_s``.

    Raises ToolFailed when it did not succeed; kills it on any interruption (Ctrl-C included).
    """
    try:
        if on_tick is not None:
            pause, interval = threading.Event(), 0.02
            while process.alive():
                on_tick()
                pause.wait(interval)  # short first (quick tools return at once), then every tick_s
                interval = min(interval * 2, tick_s)
        process.command.wait()
    except sh.TimeoutException:
        kill(process)
        raise ToolFailed(process.tool, "timeout", timeout_s=process.timeout_s) from None
    except sh.ErrorReturnCode as exc:
        kind: Failure = "signal" if isinstance(exc, sh.SignalException) else "exit"
        raise ToolFailed(process.tool, kind, exit_code=exc.exit_code, stderr=process.stderr()) from None
    except BaseException:
        kill(process)
        raise
    return str(process.command)


def run(
    command: Path,
    args: Sequence[str],
    *,
    env: dict[str, str],
    timeout_s: float,
    on_tick: Callable[[], None] | None = None,
    **kwargs: Any,
) -> str:
    """Run a tool, wait for it and return its stdout (see ``start`` and ``wait``)."""
    return wait(start(command, args, env=env, timeout_s=timeout_s, **kwargs), on_tick=on_tick)


def _error_index(lines: list[str]) -> int | None:
    return next((i for i, line in enumerate(lines) if "error:" in line), None)


def first_error(stderr: str, exit_code: int | None = None) -> str:
    """What follows the first ``error:`` in a tool's stderr, else its last line, else the exit code."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    index = _error_index(lines)
    if index is not None:
        return lines[index].split("error:", 1)[1].strip()
    return lines[-1] if lines else f"exit code {exit_code}"


def stderr_summary(stderr: bytes | str, db: Database) -> str:
    """One line from a libpq tool's stderr: the first ``error:`` line (plus its ``detail:``)."""
    text = stderr.decode("utf-8", "replace") if isinstance(stderr, bytes) else stderr
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    summary, detail = "", ""
    index = _error_index(lines)
    if index is not None:
        summary = lines[index].split("error:", 1)[1].strip()
        for follower in lines[index + 1 :]:
            if "detail:" in follower:
                detail = follower.split("detail:", 1)[1].strip()
                break
            if "error:" in follower or follower.startswith(("pg_dump:", "pg_restore:")):
                break
            detail = detail or follower  # libpq's continuation lines (e.g. server closed …)
    if not summary and lines:
        summary = lines[-1]
    if detail and detail not in summary:
        summary = f"{summary} ({detail})"
    summary = re.sub(r"\s+", " ", summary)
    return mask_password(summary, db)[:500]
