"""Stopping cleanly: SIGTERM and Ctrl-C end the command line's run between two statements, never halfway.

``install()`` (the console script calls it first thing) turns SIGTERM and SIGINT into ``Interrupted``,
a ``BaseException``: nothing that catches ``Exception`` swallows it, every ``with`` block on the way
out closes its connection (the server rolls back what was not committed), and a running pg_dump or
pg_restore is killed and reaped. A query the signal finds waiting (for a lock, say) is cancelled on
the server at once: psycopg2 waits through ``wait_cancelling``, in Python, so the signal is handled
within milliseconds instead of when the server answers.

A signal during the drop cannot know by itself whether the drop's transaction committed: the COMMIT
may be under way on the server (a cancel does not stop a COMMIT that is writing its record, nor one
whose deferred triggers ignore it). So the drop step waits for its session on the server to end and
reads the truth back from the catalog and the ledger (``tasks/drop.py``); the ``Interrupted`` carries
it (``outcome``, the ``DropResult`` when it committed, and the run's report, for the command line to
print), never a guess.
"""

from __future__ import annotations

import select
import signal
import time
from types import FrameType
from typing import Any

import psycopg2.extensions

EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}


class Interrupted(BaseException):
    """The operator (or systemd, a CI runner, ``timeout``) stopped the command. ``stage`` says where."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.stage = "start-up"  # the flow refines it: prechecks, backup, approval, drop, verification
        # Interrupted during the drop: what the database says happened ("committed", "rolled back", or
        # "unknown": it could not be read back), the drop's result if it committed, and why not known.
        self.outcome: str | None = None
        self.drop: Any = None
        self.unknown_because = ""
        self.report: Any = None  # the run report, when the drop committed (or may have): the facts to print

    @property
    def exit_code(self) -> int:
        return EXIT_CODES.get(signal.Signals(self.signum), 128 + self.signum)


def _raise(signum: int, frame: FrameType | None) -> None:
    raise Interrupted(signum)


def install() -> None:
    """SIGTERM and SIGINT raise ``Interrupted``; psycopg2 waits in Python (``wait_cancelling``)."""
    signal.signal(signal.SIGTERM, _raise)
    signal.signal(signal.SIGINT, _raise)
    psycopg2.extensions.set_wait_callback(wait_cancelling)


def wait_cancelling(conn) -> None:
    """psycopg2's wait callback: poll the connection; on any interruption, cancel the query on the
    server (so its session stops waiting for a lock and ends with the connection), then re-raise.

    While connecting, libpq's own ``connect_timeout`` does not apply (the callback does the waiting),
    so it is applied here: a server that accepts and never answers fails with "timeout expired"."""
    deadline = _connect_deadline(conn)
    while True:
        try:
            state = conn.poll()
            if state == psycopg2.extensions.POLL_OK:
                return
            if state == psycopg2.extensions.POLL_READ:
                ready = select.select([conn.fileno()], [], [], _left(deadline))[0]
            elif state == psycopg2.extensions.POLL_WRITE:
                ready = select.select([], [conn.fileno()], [], _left(deadline))[1]
            else:
                raise psycopg2.OperationalError(f"bad state from poll: {state}")
            if not ready and deadline is not None and time.monotonic() >= deadline:
                conn.close()
                raise psycopg2.OperationalError("timeout expired")
        except psycopg2.Error:
            raise  # the server answered (an error is an answer), or never did while connecting
        except BaseException:
            try:
                conn.cancel()
            except Exception:
                pass
            raise


def _connect_deadline(conn) -> float | None:
    """When a connection still being set up must give up: its ``connect_timeout`` (libpq's rule: at
    least 2 s when set, none when 0 or absent); ``None`` for a query on an open connection."""
    if conn.status != psycopg2.extensions.STATUS_SETUP:
        return None
    try:
        seconds = int(psycopg2.extensions.parse_dsn(conn.dsn).get("connect_timeout", "0"))
    except (ValueError, psycopg2.ProgrammingError):
        return None
    return time.monotonic() + max(seconds, 2) if seconds > 0 else None


def _left(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.0, deadline - time.monotonic())
