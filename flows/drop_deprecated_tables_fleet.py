"""The fleet runbook: one migration across many databases, each database its own run on any worker."""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.runtime import flow_run
from prefect.states import Cancelled, Completed, Failed, State

from safedrop.errors import RunEnded, SafedropError
from safedrop.fleet.childruns import FleetCancelled, cancel_children, end_cancelled, note_fleet_run
from safedrop.fleet.fleetfile import FLEET_FLOW_NAME, FleetParameters, child_deployment
from safedrop.fleet.fleetreport import FleetReport
from safedrop.migration import load_migration
from tasks.fleet_approval import await_fleet_approval
from tasks.fleet_plan import check_fleet, plan_fleet, publish_fleet_plan
from tasks.fleet_rollout import roll_out
from tasks.fleet_summary import FleetRecord, fleet_summary


def cancel_my_children(flow, flow_run, state) -> None:  # noqa: ANN001 - Prefect's hook signature
    """A fleet run that is cancelled, crashes or fails leaves no child of it running (Prefect does not
    cancel the children run_deployment started). Run by the worker after it ended a cancelled run's
    process, by the engine otherwise."""
    cancel_children(flow_run.id, f"the fleet run {flow_run.name} ended {state.name}")


@flow(
    name=FLEET_FLOW_NAME,
    log_prints=False,
    validate_parameters=True,
    on_cancellation=[cancel_my_children],
    on_crashed=[cancel_my_children],
    on_failure=[cancel_my_children],
)
def drop_deprecated_tables_fleet(params: FleetParameters) -> State:
    """Retire a migration's tables from many databases: plan them all, one approval, then roll out.

    Every database becomes its own run of the migration's fleet-child deployment, so any worker of the
    pool, on any machine, can take it; each keeps its own prechecks, backup, artifacts and ledger. First
    every database's dry run (at most max_parallel at once) makes the fleet plan — readiness, row
    counts, what CASCADE removes, code references — which is approved once (the run is suspended until
    an operator resumes it). With approval: skip (a terminal run) there is no separate plan: each
    database's run makes its own prechecks. Then the canaries, one at a time and alone, then the rest,
    at most max_parallel at once; each database's run is held to the plan approved for it and stops
    with nothing changed if its database changed. on_error: stop starts no
    database after one stopped or failed (running ones finish); continue goes on. Databases already
    done are skipped, so running the fleet again resumes it. The fleet run ends Completed only when
    every database succeeded or was already done; cancelling it cancels its running children.

    Args:
        params: The fleet (the fleet file's contents: migration, keep, code_paths, rollout, databases
            and where each one's URL is), whether to only plan, and the approval.
    """
    fleet = params.fleet
    note_fleet_run(flow_run.get_id())  # a terminal's Ctrl-C cancels its children (safedrop fleet)
    record = FleetRecord(params=params, flow_run_id=flow_run.get_id(), migration=fleet.migration)
    try:
        migration = load_migration(fleet.migration)
        record.migration, record.slug = migration.name, migration.slug
        deployment = child_deployment(migration)

        # 1. The fleet can run: its child deployment is on the server, a worker polls the pool, and
        #    every Secret block exists (a database without one is not started).
        check_fleet(record, deployment)

        # 2. The plan — every database's prechecks, each its own dry run on any worker — approved once;
        #    each database's run is then held to its part of it. At a terminal (approval: skip) running
        #    the command is the approval, and each database's run makes its own prechecks.
        if params.dry_run or params.approval == "required":
            plan_fleet(record, deployment)
            plan = publish_fleet_plan(record)
            if params.dry_run:
                return _finish(record)
            await_fleet_approval(plan, record.fleet_digest or "", timeout_s=params.approval_timeout_s)

        # 3. The rollout: canaries first and alone, then at most max_parallel at once.
        roll_out(record, deployment)
        return _finish(record)
    except FleetCancelled as error:
        report = fleet_summary(record, [str(error)])
        if record.flow_run_id:
            end_cancelled(record.flow_run_id, str(error))
        return Cancelled(message=str(error), data=report)
    except SafedropError as error:
        return _finish(record, error)


def _finish(record: FleetRecord, error: SafedropError | None = None) -> State:
    """4. Summary: the fleet report, and a state that says honestly how the fleet went."""
    reasons = list(getattr(error, "reasons", None) or ([str(error)] if error else []))
    report: FleetReport = fleet_summary(record, reasons, at_least=error.status if error else None)
    message = "; ".join(report.reasons) or f"{report.status}: {len(report.databases)} databases"
    logger = get_run_logger()
    if report.dry_run and report.status in ("ready", "already-applied", "stopped"):
        names = {"ready": "Ready", "already-applied": "Already applied", "stopped": "Not ready"}
        if report.status == "stopped":
            logger.warning("not ready: %s", message)
        return Completed(name=names[report.status], message=message, data=report)
    if report.status in ("succeeded", "already-applied"):
        name = "Completed" if report.status == "succeeded" else "Already applied"
        return Completed(name=name, message=message, data=report)
    (logger.info if report.status == "stopped" else logger.error)("%s: %s", report.status, message)
    return Failed(
        name=report.status.capitalize(),
        message=message,
        data=RunEnded(message, report=report, status=report.status),
    )
