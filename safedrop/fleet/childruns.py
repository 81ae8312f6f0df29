"""A fleet run's children on the Prefect server: start them, watch them, read their reports, cancel them.

Every database's run is a flow run of the migration's fleet-child deployment, created with
``run_deployment(..., as_subflow=True, timeout=0)``: linked to the fleet run (the UI shows it as a
subflow), scheduled for any worker of the pool, and not waited for — the fleet run watches all of its
children itself, a few API calls per poll whatever their number. Each child carries the tag
``safedrop-fleet:<fleet run id>``, which is how the fleet finds its children again to cancel them.

Prefect does not cancel the children ``run_deployment`` started when their parent is cancelled, nor
does a child's failure fail the parent; the fleet flow does both: it reads its own state at every poll
and cancels its children when it is being cancelled (a run in this process, e.g. ``safedrop fleet``),
and its ``on_cancellation``/``on_crashed`` hooks do it when a worker cancels or loses the fleet run's
process (the worker runs those hooks after it ended the process).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from uuid import UUID

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    ArtifactFilterKey,
    FlowRunFilter,
    FlowRunFilterId,
    FlowRunFilterTags,
)
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.deployments import run_deployment
from prefect.events.filters import EventFilter, EventNameFilter, EventOccurredFilter, EventResourceFilter
from prefect.exceptions import ObjectNotFound, PrefectHTTPStatusError
from prefect.states import Cancelled, Cancelling, Crashed

from safedrop.errors import SafedropError
from safedrop.fleet.rollout import Rollout
from safedrop.report.json_artifact import REPORT_ARTIFACT, report_from_markdown
from safedrop.results import RunReport, Status
from safedrop.runlog import run_logger

FLEET_TAG = "safedrop-fleet:"
PLAN_TAG, DROP_TAG = "safedrop-fleet-plan", "safedrop-fleet-drop"  # a child's kind, for filtering in the UI
# No flow code has run yet (Pending: a worker is starting its process, which will find it Cancelled and
# not start): Cancelled at once. Cancelling a Pending run instead can leave it Cancelling for good when
# its process starts after the worker's cancellation check.
_NOT_STARTED_YET = {StateType.SCHEDULED, StateType.PENDING, StateType.PAUSED}
_BATCH = 100
_PAGE = 200  # the most flow runs the API returns a call


class FleetCancelled(SafedropError):
    """The fleet run is being cancelled: its children were cancelled too."""


_IN_THIS_PROCESS: list[str] = []  # the fleet runs this process runs (a terminal's `safedrop fleet`)


def note_fleet_run(flow_run_id: str | UUID | None) -> None:
    if flow_run_id:
        _IN_THIS_PROCESS.append(str(flow_run_id))


def interrupt_fleet_runs(message: str) -> int:
    """A signal stops this process: cancel the children of the fleet runs it ran, and end those runs
    Cancelled (no process is left to do either). Returns how many children were cancelled."""
    cancelled = 0
    for fleet_run_id in _IN_THIS_PROCESS:
        cancelled += len(cancel_children(fleet_run_id, message))
        end_cancelled(fleet_run_id, message)
    return cancelled


def fleet_tag(fleet_run_id: str | UUID) -> str:
    return f"{FLEET_TAG}{fleet_run_id}"


def start_child(
    deployment: str,
    parameters: dict,
    *,
    name: str,
    tags: Iterable[str],
    idempotency_key: str,
) -> UUID:
    """Create the child flow run (linked to the current flow run) and return its id without waiting.

    The idempotency key makes a repeated call — the fleet run resumed after its approval starts again
    from the top — return the run created the first time instead of a new one.
    """
    flow_run = run_deployment(
        deployment,
        parameters=parameters,
        flow_run_name=name,
        tags=list(tags),
        idempotency_key=idempotency_key,
        timeout=0,
        as_subflow=True,
    )
    return flow_run.id


def read_runs(ids: Iterable[UUID]) -> dict[UUID, FlowRun]:
    """The flow runs by id (in batches: one API call per hundred)."""
    wanted = list(ids)
    found: dict[UUID, FlowRun] = {}
    with get_client(sync_client=True) as client:
        for i in range(0, len(wanted), _BATCH):
            batch = wanted[i : i + _BATCH]
            for run in client.read_flow_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=batch)), limit=len(batch)
            ):
                found[run.id] = run
    return found


def is_being_cancelled(flow_run_id: str | UUID) -> bool:
    with get_client(sync_client=True) as client:
        state = client.read_flow_run(UUID(str(flow_run_id))).state
    return state is not None and state.type in (StateType.CANCELLING, StateType.CANCELLED)


def cancel_children(fleet_run_id: str | UUID, message: str) -> list[UUID]:
    """Cancel every child of the fleet run that has not ended; returns their ids.

    A child waiting for a worker (Scheduled) is Cancelled at once; one that a worker took (Pending,
    Running) is set Cancelling, and its worker ends its process — the single-database flow is built
    to be cancelled (pg_dump is stopped, the drop's transaction rolls back or was committed, and the
    ledger says which).
    """
    cancelled: list[UUID] = []
    with get_client(sync_client=True) as client:
        for child in _children(client, fleet_run_id):
            if child.state is None or child.state.is_final() or child.state.type == StateType.CANCELLING:
                continue
            if child.state.type in _NOT_STARTED_YET:
                client.set_flow_run_state(child.id, Cancelled(message=message), force=True)
            else:
                client.set_flow_run_state(child.id, Cancelling(message=message), force=True)
            cancelled.append(child.id)
    return cancelled


def end_cancelled(flow_run_id: str | UUID, message: str) -> None:
    """Put the fleet run itself in Cancelled once its children are cancelled: whichever of Prefect's
    engine and the worker notices the cancellation first, the run must not be left Running."""
    with get_client(sync_client=True) as client:
        state = client.read_flow_run(UUID(str(flow_run_id))).state
        if state is None or not state.is_final():
            client.set_flow_run_state(UUID(str(flow_run_id)), Cancelled(message=message), force=True)


def _children(client, fleet_run_id: str | UUID) -> list[FlowRun]:
    """Every child flow run of the fleet run (the API returns at most 200 a call)."""
    only_these = FlowRunFilter(tags=FlowRunFilterTags(all_=[fleet_tag(fleet_run_id)]))
    found: list[FlowRun] = []
    while True:
        page = client.read_flow_runs(flow_run_filter=only_these, limit=_PAGE, offset=len(found))
        found += page
        if len(page) < _PAGE:
            return found


def child_report(run: FlowRun, migration_slug: str) -> RunReport | None:
    """The report a finished child published (its ``<migration>-report`` artifact), or None."""
    key = f"{migration_slug}-{REPORT_ARTIFACT}"
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[run.id]), key=ArtifactFilterKey(any_=[key])
            )
        )
    for artifact in sorted(artifacts, key=lambda a: a.created or 0, reverse=True):
        try:
            return report_from_markdown(str(artifact.data))
        except ValueError:
            continue
    return None


_STATE_STATUS: dict[str, Status] = {
    "Completed": "succeeded",
    "Already applied": "already-applied",
    "Ready": "ready",
    "Not ready": "stopped",
    "Stopped": "stopped",
}


_CLI_ALLOW = re.compile(r"--allow-cascade (\S+)")


def in_fleet_terms(reason: str) -> str:
    """A database's reason as the fleet's operator acts on it: the fleet file's key, not the CLI flag."""
    return _CLI_ALLOW.sub(r"allow_cascade: [\1] in the fleet file", reason)


def status_of(run: FlowRun, report: RunReport | None) -> tuple[Status, list[str]]:
    """How a finished child ended: its report's status and reasons; without a report (it crashed, was
    cancelled, or never started), failed, with its state's message."""
    if report is not None:
        return report.status, [in_fleet_terms(r) for r in report.reasons]
    state = run.state
    name = state.name if state else "unknown"
    message = (state.message if state else "") or ""
    if state is not None and state.is_completed() and name in _STATE_STATUS:
        return _STATE_STATUS[name], [message] if message else []
    return "failed", [
        f"its run {run.name} ended {name} without a report{': ' + message if message else ''}; see the "
        "child run's logs — a re-run of the fleet finds out from the database's ledger what was done"
    ]


HEARTBEAT_S = 30  # the children's heartbeat (Prefect's shortest): the fleet-child deployments set it
_HEARTBEAT = "prefect.flow-run.heartbeat"


def silent(ids: Iterable[UUID], silence_s: float) -> set[UUID]:
    """Those of these flow runs that sent no heartbeat in the last ``silence_s`` seconds (one query)."""
    wanted = {f"prefect.flow-run.{i}": i for i in ids}
    if not wanted:
        return set()
    since = datetime.now(UTC) - timedelta(seconds=silence_s)
    heard: set[UUID] = set()
    with get_client(sync_client=True) as client:
        page = client.read_events(
            filter=EventFilter(
                occurred=EventOccurredFilter(since=since),
                event=EventNameFilter(name=[_HEARTBEAT]),
                resource=EventResourceFilter(id=list(wanted)),
            ),
            limit=50,  # the most the API gives a page
        )
        while True:
            heard |= {wanted[e.resource.id] for e in page.events if e.resource.id in wanted}
            if not page.next_page:
                return set(wanted.values()) - heard
            page = client.read_events_page(page.next_page)


def declare_lost(child_id: UUID, silence_s: float) -> None:
    """A child whose process went silent ends Crashed, so it is final for the fleet and on the server.

    Not forced: a run that ended meanwhile keeps its own final state (the server refuses the change)."""
    message = (
        f"no heartbeat from its run for {silence_s:.0f} s: its worker or machine went away mid-run; the "
        "database's own state says what was done (a re-run of the fleet finds out)"
    )
    with get_client(sync_client=True) as client:
        client.set_flow_run_state(child_id, Crashed(message=message))


_LISTEN_EVERY_S = 10


def _running_longer_than(runs: Iterable[FlowRun], seconds: float) -> list[UUID]:
    cutoff = datetime.now(UTC) - timedelta(seconds=seconds)
    return [
        r.id
        for r in runs
        if r.state is not None and r.state.type == StateType.RUNNING and r.state.timestamp < cutoff
    ]


@dataclass
class Watch:
    """What the fleet run needs to drive children: how to start one, what to do when one ends."""

    start: Callable[[str], UUID]  # database name -> the child's flow run id
    ended: Callable[[str, FlowRun], tuple[Status, list[str]]]  # called once per child, when it is final
    not_created: Callable[[str, str], None]  # a child that could not be created, and why
    fleet_run_id: str | None
    poll_interval_s: float = 1.0
    silence_s: float = 120.0  # a Running child without a heartbeat this long is taken for gone


def drive(rollout: Rollout, watch: Watch) -> dict[str, UUID]:
    """Start and watch children as the rollout says until it is done; returns each started child's id.

    Raises ``FleetCancelled`` (after cancelling the children) when the fleet run is being cancelled.
    A child that cannot be created (the deployment is gone, the API refuses) ends as failed.
    """
    logger = run_logger()
    running: dict[str, UUID] = {}
    started: dict[str, UUID] = {}
    next_listen = time.monotonic()
    while not rollout.done:
        for name in rollout.next_to_start():
            try:
                running[name] = started[name] = watch.start(name)
            except (ObjectNotFound, ValueError) as exc:  # e.g. the deployment was deleted meanwhile
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                reason = (
                    f"its run could not be created ({type(exc).__name__}: {first}); nothing was started "
                    "for it"
                )
                watch.not_created(name, reason)
                rollout.finish(name, "failed", [reason])
        if watch.fleet_run_id and is_being_cancelled(watch.fleet_run_id):
            ids = cancel_children(watch.fleet_run_id, "the fleet run was cancelled")
            logger.warning("the fleet run is being cancelled; cancelled %d child run(s)", len(ids))
            raise FleetCancelled("the fleet run was cancelled; its running children were cancelled too")
        progressed = False
        if running:
            runs = read_runs(running.values())
            if time.monotonic() >= next_listen:  # every few seconds: a child whose worker went away
                next_listen = time.monotonic() + _LISTEN_EVERY_S
                try:
                    lost = silent(_running_longer_than(runs.values(), watch.silence_s), watch.silence_s)
                except PrefectHTTPStatusError as exc:  # the watch goes on; the next look may do better
                    logger.warning("could not read the children's heartbeats: %s", str(exc).splitlines()[0])
                    lost = set()
                for child_id in lost:
                    logger.warning("child run %s is silent; marking it Crashed", child_id)
                    declare_lost(child_id, watch.silence_s)
                if lost:
                    runs = read_runs(running.values())
            for name, child_id in list(running.items()):
                run = runs.get(child_id)
                if run is None or run.state is None or not run.state.is_final():
                    continue
                status, reasons = watch.ended(name, run)
                rollout.finish(name, status, reasons)
                del running[name]
                progressed = True
        if not progressed and not rollout.done:
            time.sleep(watch.poll_interval_s)
    return started
