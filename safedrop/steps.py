"""How the runbook's steps run: as Prefect tasks inside a flow run, or as plain functions.

Every step of the flows is declared with ``@step(name, retry_delays=…)``: a Prefect task, with its
retries for transient failures (``safedrop.retries``), that a flow run orchestrates and records —
and, inside ``plain_steps()``, simply the function, called in this process with the same bounded
retries, each announced ("retrying in 2 s, 1 of 3"). The command line runs the flows that way when
no Prefect server is configured: Prefect's temporary local server costs ~9 s per process on this
machine for ~0.5 s of work, and a server the CLI would leave running is a process nobody asked for.
With ``PREFECT_API_URL`` set, the CLI runs the flow through Prefect and the run is recorded there.
"""

from __future__ import annotations

import contextvars
import functools
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from safedrop.retries import is_transient, retrying
from safedrop.runlog import run_logger

_PLAIN = contextvars.ContextVar("safedrop_plain_steps", default=False)
F = TypeVar("F", bound=Callable[..., Any])


@contextmanager
def plain_steps() -> Iterator[None]:
    """Within the block every step is its plain function: no Prefect engine, no API, no artifacts."""
    token = _PLAIN.set(True)
    try:
        yield
    finally:
        _PLAIN.reset(token)


def running_plain() -> bool:
    return _PLAIN.get()


def step(name: str, *, retry_delays: tuple[float, ...] = (), jitter: float = 0.0) -> Callable[[F], F]:
    """Declare a step: a Prefect task named ``name`` (retrying transient failures after each of
    ``retry_delays`` seconds), or, inside ``plain_steps()``, the plain function with the same retries.
    The function stays reachable as ``.fn``, the task as ``.task()``. Prefect is imported when a task
    is first needed, so the plain path never loads it (``import prefect`` alone costs ~1.1 s)."""

    def declare(fn: F) -> F:
        @functools.cache
        def prefect_task():
            from prefect import task

            options = retrying(*retry_delays, jitter=jitter) if retry_delays else retrying()
            return task(name=name, **options)(fn)

        @functools.wraps(fn)
        def call(*args: Any, **kwargs: Any) -> Any:
            if not _PLAIN.get():
                return prefect_task()(*args, **kwargs)
            return _with_retries(fn, name, retry_delays, args, kwargs)

        call.fn = fn  # type: ignore[attr-defined]
        call.task = prefect_task  # type: ignore[attr-defined]
        return call  # type: ignore[return-value]

    return declare


def _with_retries(fn: Callable[..., Any], name: str, delays: tuple[float, ...], args, kwargs) -> Any:
    for attempt, delay in enumerate((*delays, None), start=1):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            if delay is None or not is_transient(exc):
                raise
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            run_logger().warning(
                "%s: %s; retrying in %g s, %d of %d", name, first, delay, attempt, len(delays)
            )
            time.sleep(delay)
    raise AssertionError("unreachable")
