"""The one way library code logs: into the Prefect run's log inside a run, else to ``safedrop``."""

from __future__ import annotations

import logging

from prefect import get_run_logger
from prefect.context import FlowRunContext, TaskRunContext


def in_run() -> bool:
    """Whether this code runs inside a Prefect flow or task run."""
    return FlowRunContext.get() is not None or TaskRunContext.get() is not None


def run_logger() -> logging.Logger | logging.LoggerAdapter:
    """The Prefect run logger inside a run, else the ``safedrop`` logger."""
    try:
        return get_run_logger()
    except Exception:
        return logging.getLogger("safedrop")
