"""Waiting for an operator's answer to a form: suspended (a deployment's run) or paused (in-process).

A deployment's run is **suspended**: its process exits, holding no worker slot, so the person may take
an hour or a week, and Resume schedules it again on any worker; the resumed run reaches the same wait
again and finds the answer under the same ``key``. A run outside a deployment (a test, the CLI through
a server) pauses in its process instead.
"""

from __future__ import annotations

from typing import TypeVar

from prefect.client.orchestration import get_client
from prefect.context import FlowRunContext
from prefect.exceptions import FlowPauseTimeout
from prefect.flow_runs import pause_flow_run, suspend_flow_run
from prefect.input import RunInput
from prefect.states import Running

from safedrop.errors import PrecheckStop

Form = TypeVar("Form", bound=RunInput)


def _suspends() -> bool:
    context = FlowRunContext.get()
    return bool(context is not None and context.flow_run is not None and context.flow_run.deployment_id)


def ask(
    form: type[Form],
    *,
    key: str,
    plan: str,
    unanswered_outcome: str,
    timeout_reason: str,
    timeout_s: int,
    poll_interval_s: int,
    **initial: object,
) -> Form:
    """The operator's answer to ``form`` (``plan`` is its text, followed by what no answer means).

    No answer within ``timeout_s`` (a run that paused in its process): PrecheckStop([timeout_reason]).
    """
    filled = form.with_initial_data(description=plan + unanswered(timeout_s, unanswered_outcome), **initial)
    try:
        if _suspends():
            return suspend_flow_run(wait_for_input=filled, timeout=timeout_s, key=key)
        return pause_flow_run(wait_for_input=filled, timeout=timeout_s, poll_interval=poll_interval_s)
    except FlowPauseTimeout:
        leave_expired_pause()
        raise PrecheckStop([timeout_reason]) from None


def unanswered(timeout_s: int, outcome: str) -> str:
    """What the form says happens when nobody answers. A suspended run has no process left to say it
    with its own reason: Prefect's server ends it, in its own words."""
    text = f"\n\nNo answer within {timeout_s:,} s: {outcome}."
    if _suspends():
        text += ' The run then ends Failed with Prefect\'s words "The flow was paused and never resumed."'
    return text + "\n"


def leave_expired_pause() -> None:
    """Put the run back in Running after the wait timed out, so it can end with its own report.

    Otherwise the server rejects every later state of a run whose pause expired and ends it Failed
    with a generic "The flow was … and never resumed." — losing the report and the reason.
    """
    context = FlowRunContext.get()
    if context is None or context.flow_run is None:
        return
    with get_client(sync_client=True) as client:
        client.set_flow_run_state(
            context.flow_run.id, Running(message="no approval in time; stopping"), force=True
        )
