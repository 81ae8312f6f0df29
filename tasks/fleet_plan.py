"""The fleet's plan: every database's prechecks, each as its own dry-run child run, a few at once.

Before any child: the migration's fleet-child deployment must be on the server, a worker must be
polling its work pool, and every database's Secret block must exist (a missing one would make that
database's run fall back to DATABASE_URL: another database). Then each database's dry run — the
single-database flow with ``dry_run`` — goes to any worker of the pool, at most ``max_parallel`` at
once, and publishes its report; the plan is those reports. Two databases that turn out to be the same
database (their runs connected to the same ``user@host:port/dbname``) both fail the plan.

Each dry run is created with an idempotency key made of the fleet run's id and the database's name:
a fleet run suspended for approval starts again from the top when it is resumed, and finds the very
runs the operator's plan was made of (nothing runs twice, the plan is the one approved). They are
read-only; each database's destructive run rechecks everything anyway.
"""

from __future__ import annotations

from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import FlowRun, WorkPoolStatus
from prefect.exceptions import ObjectNotFound

from safedrop.errors import ConfigurationError
from safedrop.fleet.childruns import PLAN_TAG, Watch, child_report, drive, fleet_tag, start_child, status_of
from safedrop.fleet.fleetfile import FleetSpec
from safedrop.fleet.fleetreport import fleet_digest, plan_markdown
from safedrop.fleet.rollout import Rollout
from safedrop.report.artifacts import publish_markdown
from safedrop.results import Status
from safedrop.runlog import run_logger
from tasks.fleet_summary import FleetRecord, build_fleet_report, publish_fleet_table


def check_fleet_can_run(fleet: FleetSpec, deployment: str) -> dict[str, tuple[Status, list[str]]]:
    """Raise when no child can run (no deployment, no worker); return the databases that cannot be
    planned (their Secret block is missing) with the reason, as plan verdicts."""
    verdicts: dict[str, tuple[Status, list[str]]] = {}
    with get_client(sync_client=True) as client:
        try:
            found = client.read_deployment_by_name(deployment)
        except ObjectNotFound:
            raise ConfigurationError(
                f"no deployment {deployment} on the Prefect server: deploy the migration's deployments "
                "first (python -m deployments.deploy); no database was started"
            ) from None
        pool = found.work_pool_name
        if pool:
            try:
                status = client.read_work_pool(pool).status
            except ObjectNotFound:
                raise ConfigurationError(
                    f"the work pool {pool!r} of {deployment} does not exist: create it and start workers "
                    f"(prefect work-pool create {pool} --type process; prefect worker start --pool {pool}); "
                    "no database was started"
                ) from None
            if status != WorkPoolStatus.READY:
                raise ConfigurationError(
                    f"no worker is polling the work pool {pool!r} that runs the fleet's children: start one "
                    f"on each machine that may work on the databases (prefect worker start --pool {pool}); "
                    "no database was started"
                )
        for database in fleet.databases:
            if database.secret_block is None:
                continue  # an environment variable of the workers: its dry run says if it is missing
            try:
                client.read_block_document_by_name(database.secret_block, "secret", include_secrets=False)
            except ObjectNotFound:
                verdicts[database.name] = (
                    "failed",
                    [
                        f"no Secret block named {database.secret_block!r} on the Prefect server: create it "
                        "with the database's URL (see the README's 'Deploying'); nothing was started for it"
                    ],
                )
    return verdicts


def child_name(database: str, kind: str) -> str:
    return f"{database}-{kind}"


def check_fleet(record: FleetRecord, deployment: str) -> None:
    """The fleet can run (else raise, nothing started); a database whose Secret block is missing is
    marked failed, and will not be started."""
    for name, (status, reasons) in check_fleet_can_run(record.params.fleet, deployment).items():
        record.databases[name].plan_status, record.databases[name].plan_reasons = status, reasons


def plan_fleet(record: FleetRecord, deployment: str) -> None:
    """Every database's dry run through the fleet-child deployment; fills in each database's plan."""
    fleet = record.params.fleet
    verdicts = {
        n: (d.plan_status, d.plan_reasons) for n, d in record.databases.items() if d.plan_status != "ready"
    }
    rollout = Rollout.of(
        fleet.order, max_parallel=fleet.rollout.max_parallel, on_error="continue", plan=verdicts
    )

    def start(name: str):
        return start_child(
            deployment,
            fleet.child_parameters(name, dry_run=True),
            name=child_name(name, "plan"),
            tags=[fleet_tag(record.flow_run_id or "local"), PLAN_TAG],
            idempotency_key=f"{record.flow_run_id}:plan:{name}",
        )

    def ended(name: str, run: FlowRun) -> tuple[Status, list[str]]:
        report = child_report(run, record.slug)
        status, reasons = status_of(run, report)
        database = record.databases[name]
        database.plan, database.plan_run = report, run
        database.plan_status, database.plan_reasons = status, reasons
        run_logger().info("plan of %s: %s", name, status)  # the why is in the plan, once
        return status, reasons

    def not_created(name: str, reason: str) -> None:
        record.databases[name].plan_status, record.databases[name].plan_reasons = "failed", [reason]

    params = record.params
    watch = Watch(start, ended, not_created, record.flow_run_id, params.poll_interval_s)
    watch.silence_s = params.child_silence_s
    drive(rollout, watch)
    _refuse_one_database_twice(record)


def _refuse_one_database_twice(record: FleetRecord) -> None:
    by_database: dict[str, list[str]] = {}
    for name, database in record.databases.items():
        if database.plan and database.plan.database:
            by_database.setdefault(database.plan.database, []).append(name)
    for where, names in by_database.items():
        if len(names) > 1:
            for name in names:
                others = " and ".join(n for n in names if n != name)
                record.databases[name].plan_status = "failed"
                record.databases[name].plan_reasons.append(
                    f"{name} and {others} are the same database ({where}): fix the fleet file's "
                    "secret_block/url_env, or the URL they hold; nothing was started for it"
                )


def publish_fleet_plan(record: FleetRecord) -> str:
    """The fleet plan as the operator approves it (Markdown), with its fleet digest; also the plan
    artifact and the first fleet table."""
    report = build_fleet_report(record)
    record.fleet_digest = report.fleet_digest = fleet_digest(report.databases)
    plans = {name: d.plan for name, d in record.databases.items() if d.plan is not None}
    markdown = plan_markdown(report, plans)
    publish_markdown(f"{record.slug}-fleet-plan", markdown, "The fleet plan: every database's readiness")
    publish_fleet_table(record)
    return markdown
