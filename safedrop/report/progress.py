"""Progress of a long step — log lines, an optional sink (a Prefect progress artifact), a bar on a TTY.

This module provides (and needs no Prefect: a run's artifact comes in as a sink, see
``safedrop.report.artifacts.run_progress``):

- ``Progress``: reports a fraction and a detail, throttled — a log line every ``log_every_s``, the sink
  at most once a second and only on a visible change, a bar on stderr when ``SAFEDROP_PROGRESS_BAR=1``;
- ``DumpProgress``: pg_dump's progress from its ``--verbose`` lines, weighted by the tables' sizes;
- ``RestoreProgress``: pg_restore's progress, its ``--verbose`` lines counted against the entries;
- ``human_bytes`` / ``size_of``: sizes for people, and of a file or an archive directory.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

PROGRESS_BAR_ENV = "SAFEDROP_PROGRESS_BAR"  # "1": draw a progress bar on stderr (the CLI sets it on a TTY)


class ProgressSink(Protocol):
    """Where a percentage goes (a Prefect progress artifact). ``update`` may raise: it is never fatal."""

    def update(self, percent: float) -> None: ...


def human_bytes(size: int) -> str:
    value = float(size)
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{int(value)} bytes" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} bytes"  # pragma: no cover


def size_of(path: Path) -> int:
    """Bytes of a file, or of every file in a directory (0 if it vanished)."""
    try:
        if path.is_dir():
            return sum(p.stat().st_size for p in path.iterdir() if p.is_file())
        return path.stat().st_size
    except OSError:
        return 0


class Progress:
    """Reports a long step: a log line every ``log_every_s``, the sink, a bar on a TTY.

    ``update`` is cheap: the sink is sent at most once a second, and only on a visible change.
    """

    def __init__(
        self,
        what: str,
        *,
        sink: ProgressSink | None = None,
        logger: logging.Logger | logging.LoggerAdapter | None = None,
        log_every_s: float = 10.0,
    ) -> None:
        self.what = what
        self.sink = sink
        self.logger = logger or logging.getLogger("safedrop")
        self.log_every_s = log_every_s
        self.started = time.monotonic()
        self._last_log = self.started
        self._last_sent = 0.0
        self._last_fraction = -1.0
        self.bar = os.environ.get(PROGRESS_BAR_ENV) == "1" and sys.stderr.isatty()

    def update(self, fraction: float, detail: str) -> None:
        fraction = max(0.0, min(fraction, 1.0))
        now = time.monotonic()
        if self.sink and now - self._last_sent >= 1.0 and fraction - self._last_fraction >= 0.005:
            try:
                self.sink.update(round(fraction * 100, 1))
                self._last_sent, self._last_fraction = now, fraction
            except Exception:  # progress is a nicety: never let it fail the step
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
        if self.sink:
            try:
                self.sink.update(100.0)
            except Exception:
                pass
        if self.bar:
            sys.stderr.write(f"\r{self.what} [{'#' * 30}] 100% {detail}\033[K\n")
            sys.stderr.flush()


class DumpProgress:
    """pg_dump's progress: ``--verbose`` says which table's rows it is copying; sizes weigh them."""

    _LINE = re.compile(r'dumping contents of table "(?P<name>.+)"\s*$')

    def __init__(self, reporter: Progress, written: Callable[[], int], weights: dict[str, int]) -> None:
        self.reporter = reporter
        self.written = written  # bytes of the archive so far (its file's size, or what the store got)
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
        written = self.written()
        self.reporter.update(
            min(done / self.total, 0.99),
            f"{human_bytes(written)} written, table {tables} of {len(self.weights)}",
        )

    def finish(self) -> None:
        self.reporter.finish(f"{human_bytes(self.written())} written, {len(self.weights)} tables")


class RestoreProgress:
    """pg_restore --verbose prints a line per entry it processes: count them against the list."""

    _LINE = re.compile(r"^pg_restore: (creating|processing data|executing|setting owner|processing item)")

    def __init__(self, reporter: Progress, total: int) -> None:
        self.reporter, self.total, self.done = reporter, max(total, 1), 0
        self.started = time.monotonic()

    def restart(self) -> None:
        self.done = 0

    def line(self, text: str) -> None:
        if self._LINE.match(text):
            self.done += 1

    def tick(self) -> None:
        self.reporter.update(
            min(self.done / self.total, 0.99), f"{min(self.done, self.total)} of {self.total} entries"
        )
