"""The one way library code logs: into the Prefect run's log inside a run, else to ``safedrop``."""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterator


def in_run() -> bool:
    """Whether this code runs inside a Prefect flow or task run (never, while Prefect is not loaded)."""
    if "prefect" not in sys.modules:
        return False
    from prefect.context import FlowRunContext, TaskRunContext

    return FlowRunContext.get() is not None or TaskRunContext.get() is not None


def run_logger() -> logging.Logger | logging.LoggerAdapter:
    """The Prefect run logger inside a run, else the ``safedrop`` logger."""
    if not in_run():
        return logging.getLogger("safedrop")
    from prefect import get_run_logger

    try:
        return get_run_logger()
    except Exception:
        return logging.getLogger("safedrop")


_RETRY = re.compile(r"Retry (\d+)/(\d+) will start (\d+(?:\.\d+)?) second")
_RAISED = re.compile(r"exception:? \w+\((['\"])(?P<text>.*?)\1\)")
# the flow's own closing line, which repeats the report's reasons
_VERDICTS = ("failed: ", "stopped: ", "not ready: ", "refused: ")
# Prefect's closing line, which repeats them again in the state's message
_ECHOES = tuple(f"Finished in state {name}(" for name in ("Stopped", "Failed", "Not ready"))


class ExpectedFailures(logging.Filter):
    """On Prefect's console: an expected failure (a ``SafedropError``) is the report's to tell, once,
    in one line — not a task-failure log with a traceback, nor its "Finished in state" echo. A retry
    of one is said plainly: "connection-precheck: <reason>; retrying in 1 s, 1 of 3"."""

    def filter(self, record: logging.LogRecord) -> bool:
        from safedrop.errors import SafedropError

        error = record.exc_info[1] if record.exc_info else None
        message = record.getMessage()
        if message.startswith(_VERDICTS) or message.startswith(_ECHOES):
            return False
        expected = isinstance(error, SafedropError) or any(
            f" {name}(" in message or f"exception {name}:" in message for name in _error_names()
        )
        if not expected:
            return True
        retry = _RETRY.search(message)
        if retry is None:
            return False
        raised = _RAISED.search(message)
        said = str(error) if error else (raised.group("text") if raised else "failed")
        first = (said.strip().splitlines() or ["failed"])[0]
        attempt, total, delay = retry.groups()
        record.msg, record.args, record.exc_info, record.exc_text = (
            f"{first}; retrying in {float(delay):.1f} s, {attempt} of {total}",
            (),
            None,
            None,
        )
        return True


def _error_names() -> list[str]:
    from safedrop import errors

    return [name for name, obj in vars(errors).items() if isinstance(obj, type) and name[0].isupper()]


def prefect_console_handlers() -> Iterator[logging.Handler]:
    """Every Prefect console handler on any logger (none when Prefect's logging was never set up)."""
    from prefect.logging.handlers import PrefectConsoleHandler

    loggers = [logging.getLogger()] + [logging.getLogger(n) for n in list(logging.root.manager.loggerDict)]
    for logger in loggers:
        for handler in getattr(logger, "handlers", []):
            if isinstance(handler, PrefectConsoleHandler):
                yield handler


def quiet_expected_failures() -> None:
    """Put ``ExpectedFailures`` on every Prefect console handler (the API's logs keep everything)."""
    for handler in prefect_console_handlers():
        if not any(isinstance(f, ExpectedFailures) for f in handler.filters):
            handler.addFilter(ExpectedFailures())
