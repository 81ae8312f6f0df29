"""The fleet's rollout: each ready database's destructive run, canaries first and alone, then a few at once.

The order and the limits are safedrop/fleet/rollout.py's; this step starts each database's run of the
fleet-child deployment (``approval: skip``, the fleet's approval stands for it, and
``expected_plan_digest``: the plan approved for that database), watches them, and re-publishes the
fleet table each time one ends. Databases the plan found already done are skipped; those it found
unready count, at their turn, as stopped (``on_error`` decides what follows).

One database is never worked on twice at once: each run takes safedrop's advisory lock on its
database and tags its flow run with the database (safedrop/pg/runlock.py), so a database another run
(another fleet's, a manual one) is working on stops this one, naming the other, with nothing changed.
"""

from __future__ import annotations

from prefect.client.schemas.objects import FlowRun

from safedrop.fleet.childruns import DROP_TAG, Watch, child_report, drive, fleet_tag, start_child, status_of
from safedrop.fleet.rollout import Rollout
from safedrop.results import Status
from safedrop.runlog import run_logger
from tasks.fleet_plan import child_name
from tasks.fleet_summary import FleetRecord, publish_fleet_table


def roll_out(record: FleetRecord, deployment: str) -> None:
    """Run every ready database's destructive child as the rollout allows; fills in each outcome."""
    fleet = record.params.fleet
    rollout = Rollout.of(
        fleet.order,
        canary=fleet.rollout.canary,
        max_parallel=fleet.rollout.max_parallel,
        on_error=fleet.rollout.on_error,
        plan={name: (d.plan_status, d.plan_reasons) for name, d in record.databases.items()},
    )
    logger = run_logger()

    def start(name: str):
        database = record.databases[name]
        approved = database.plan.plan_digest if database.plan else None  # None: no plan was approved
        identity = database.plan.database_identity if database.plan else None  # the database it saw
        child_id = start_child(
            deployment,
            fleet.child_parameters(
                name,
                dry_run=False,
                expected_plan_digest=approved,
                expected_system_identifier=identity.system_identifier if identity else None,
            ),
            name=child_name(name, "drop"),
            tags=[fleet_tag(record.flow_run_id or "local"), DROP_TAG],
            idempotency_key=f"{record.flow_run_id}:drop:{name}",
        )
        database.started, database.run_id = True, child_id
        logger.info("started %s (flow run %s)", name, child_id)
        publish_fleet_table(record)
        return child_id

    def ended(name: str, run: FlowRun) -> tuple[Status, list[str]]:
        report = child_report(run, record.slug)
        status, reasons = status_of(run, report)
        database = record.databases[name]
        database.report, database.run, database.status, database.reasons = report, run, status, reasons
        logger.info("%s: %s", name, status)  # the why is in the fleet table and the report, once
        publish_fleet_table(record)
        return status, reasons

    def not_created(name: str, reason: str) -> None:
        database = record.databases[name]
        database.started, database.status, database.reasons = True, "failed", [reason]

    try:
        params = record.params
        watch = Watch(start, ended, not_created, record.flow_run_id, params.poll_interval_s)
        watch.silence_s = params.child_silence_s
        drive(rollout, watch)
    finally:
        record.not_started_reason = rollout.halt_reason()
