"""Retry only what a retry can fix: the one test of a failure, and the one Prefect retry condition.

This module provides:

- ``is_transient(error)``: a failure that carries ``transient = True`` (a refused or dropped connection,
  ``ConnectionFailed(transient=True)``, ``TransientBackupFailure``);
- ``looks_transient(text)``: whether a libpq or pg_dump message speaks of such a failure (and of
  nothing a retry cannot change, like a wrong password);
- ``backup_failure(message)``: a ``BackupFailed``, or its transient subclass when the text says so;
- ``retry_if_transient``: the ``retry_condition_fn`` every task with retries uses;
- ``retrying(*delays_s)``: those tasks' keyword arguments, in one place.
"""

from __future__ import annotations

from typing import Any

from safedrop.errors import BackupFailed, TransientBackupFailure

# Substrings (lower case) of libpq/pg_dump messages for failures that a retry can fix …
TRANSIENT_MARKERS = (
    "server closed the connection unexpectedly",
    "terminating connection",
    "connection refused",
    "could not connect to server",
    "timeout expired",
    "connection timed out",
    "could not receive data from server",
    "could not send data to server",
    "connection reset by peer",
    "no connection to the server",
    "ssl syscall error",
    "the database system is starting up",
    "the database system is shutting down",
    "the database system is in recovery mode",
    "the database system is not yet accepting connections",
    "too many clients already",
    "remaining connection slots are reserved",
    "temporary failure in name resolution",
)
# … unless the message also says something a retry cannot change.
PERMANENT_MARKERS = (
    "password authentication failed",
    "no pg_hba.conf entry",
    "does not exist",
    "permission denied",
    "server version mismatch",
    "row-level security",
)


def is_transient(error: BaseException) -> bool:
    """True for failures worth retrying: a refused, dropped or timed-out connection."""
    return bool(getattr(error, "transient", False))


def looks_transient(text: str) -> bool:
    """Whether a tool's or the server's message describes a failure that trying again can fix."""
    lowered = text.lower()
    return any(m in lowered for m in TRANSIENT_MARKERS) and not any(m in lowered for m in PERMANENT_MARKERS)


def backup_failure(message: str, *, detail_text: str = "") -> BackupFailed:
    """A BackupFailed, or its transient subclass when ``detail_text`` (or the message) says so."""
    cls = TransientBackupFailure if looks_transient(detail_text or message) else BackupFailed
    return cls(message)


def retry_if_transient(task, task_run, state) -> bool:
    """Prefect ``retry_condition_fn``: retry only failures a retry can fix (see ``is_transient``)."""
    try:
        error = state.result(raise_on_failure=False)
    except Exception:
        return False
    return isinstance(error, BaseException) and is_transient(error)


def retrying(*delays_s: float, jitter: float = 0.0) -> dict[str, Any]:
    """A task's keyword arguments: retry a transient failure after each of ``delays_s`` seconds, nothing
    else; never cache (every run must look at the database as it is now)."""
    from prefect.cache_policies import NO_CACHE

    return dict(
        retries=len(delays_s),
        retry_delay_seconds=list(delays_s),
        retry_jitter_factor=jitter or None,
        retry_condition_fn=retry_if_transient,
        cache_policy=NO_CACHE,
    )
