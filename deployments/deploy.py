"""Deploy the deployments every migration in sql/ implies, to the `process` work pool `safedrop`.

    .venv/bin/python -m deployments.deploy            # from any directory; after every change in sql/
    .venv/bin/python -m deployments.deploy --check    # build and validate only; contacts no server
    .venv/bin/python -m deployments.deploy --engine-python /srv/safedrop/.venv/bin/python
                                   # fleet children start the engine with the workers' Python directly

Each migration file's ``[safedrop]`` settings (safedrop/migration.py) give four deployments of the
flow ``drop-deprecated-tables``, named after its ``deployment`` setting NAME:

- ``NAME``: manual (the UI's Run button); suspended for approval after the prechecks and the backup;
- ``NAME-scheduled``: the same in the maintenance window (``schedule``), created active or not as the
  settings say;
- ``NAME-readiness``: the nightly dry run (``readiness``);
- ``NAME-fleet-child``: where a fleet sends each database's run (no deployment-wide limit: parallel
  children of one fleet are different databases, and one run per database is the run lock's job);

plus ``restore-dropped-tables``, manual only, and ``drop-deprecated-tables-fleet/fleet``, the fleet
flow (safedrop/fleet/fleetfile.py). The first three and the restore allow one active run (a second is
cancelled).

Nothing here points at the deploying machine: the entrypoints are module paths
(``flows.drop_deprecated_tables.drop_deprecated_tables``), there is no storage, no pull step and no
build step, so a worker in any directory, on any machine, runs every deployment from its own
installation of safedrop (``pip install`` it, or ``make install`` in a checkout; sql/ ships inside the
package — the worker reads the migration it is given by name from its own copy). On the worker:

- the database URL comes from the Secret block named by ``database_secret_block`` (keep DATABASE_URL
  out of the worker's environment: it is only the fallback when that block is missing);
- backups go to ``backup_dir`` when a run sets it, else $SAFEDROP_BACKUP_DIR of the worker's
  environment, else ~/.local/share/safedrop/backups — never into a code checkout. Restoring from
  another worker needs storage every worker shares (point SAFEDROP_BACKUP_DIR at it);
- the application's code is cloned from ``code_paths`` (git URLs) at run time;
- a manual run waiting for approval is suspended: no process and no database session is held while
  a person reads the plan, and Resume on the flow run page restarts it on any worker.

deployments/serve.py serves the same deployments without a work pool, built by the same code.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from typing import Any

from prefect import Flow, deploy
from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
from prefect.deployments.runner import EntrypointType, RunnerDeployment
from prefect.exceptions import ParameterTypeError
from prefect.schedules import Schedule

from flows.drop_deprecated_tables import drop_deprecated_tables
from flows.drop_deprecated_tables_fleet import drop_deprecated_tables_fleet
from flows.restore_dropped_tables import restore_dropped_tables
from safedrop.errors import MigrationFileError
from safedrop.fleet.childruns import HEARTBEAT_S
from safedrop.fleet.fleetfile import FLEET_DEPLOYMENT, FLEET_FLOW_NAME, child_deployment
from safedrop.migration import Migration, load_migration, migration_paths

POOL = "safedrop"
DATABASE_SECRET_BLOCK = "safedrop-database-url"
README_SECTION = "the README's 'To retire another table'"


def _one_run_at_a_time() -> ConcurrencyLimitConfig:
    # A second run of the same deployment while one is active is cancelled, not queued.
    return ConcurrencyLimitConfig(limit=1, collision_strategy=ConcurrencyLimitStrategy.CANCEL_NEW)


def _deployment(
    flow: Flow[..., Any], work_pool: str | None, *, one_at_a_time: bool = True, **fields: Any
) -> RunnerDeployment:
    return flow.to_deployment(
        concurrency_limit=_one_run_at_a_time() if one_at_a_time else None,
        work_pool_name=work_pool,
        entrypoint_type=EntrypointType.MODULE_PATH,  # imported from the worker's installation
        **fields,
    )


def _and(items: list[str]) -> str:
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"


def _approval_text(approval: str) -> str:
    if approval == "skip":
        return 'It runs through without an approval pause (approval = "skip" in the migration\'s settings).'
    return (
        "After the prechecks and the backup the run is suspended until an operator approves the plan on "
        "its flow run page (Resume); it then continues on any worker of the pool."
    )


def _descriptions(migration: Migration) -> dict[str, str]:
    settings = migration.settings
    assert settings is not None
    name, window, nightly = settings.deployment, settings.schedule, settings.readiness
    window_approval = window.approval or settings.approval
    survivors = (
        f"the tables that stay ({', '.join(settings.keep)}) are checked before and after"
        if settings.keep
        else "no table is named to stay (keep = [])"
    )
    manual = (
        f"Drop {_and([str(t) for t in migration.targets])} (sql/{migration.path.name}) after every "
        "precheck passes and a verified pg_dump backup is written to the worker's backup directory; "
        f"{survivors}. Manual only: Run -> Custom run (tick dry_run first to see the plan), or "
        f"`prefect deployment run '{drop_deprecated_tables.name}/{name}' --watch`. "
        f"{_approval_text(settings.approval)} The database URL comes from the Secret block "
        f"`{DATABASE_SECRET_BLOCK}`."
    )
    switch = (
        "ACTIVE: it runs in every window (`prefect deployment schedule pause` or the toggle in the UI "
        "stops it)"
        if window.active
        else "INACTIVE: nothing runs until an operator resumes the schedule (`prefect deployment "
        "schedule ls` / `resume`, or the toggle in the UI)"
    )
    same = (
        f"Same parameters, prechecks, backup and approval pause as {name}: someone approves in the "
        "window, or the run stops after approval_timeout_s with nothing dropped."
        if window_approval == "required"
        else f"Same parameters, prechecks and backup as {name}, but no approval pause (approval = "
        '"skip" for this window): it runs unattended.'
    )
    scheduled = (
        f"The {name} drop in its maintenance window, cron `{window.cron}` {window.timezone}. Created "
        f"with its schedule {switch}. {same}"
    )
    readiness = (
        f"Nightly readiness report for the {name} drop, cron `{nightly.cron}` {nightly.timezone}: a dry "
        "run (every precheck, no backup, no drop) that says whether the drop would go ahead and what "
        "still stands in its way, plus runtime evidence that the targets are dead — scans and writes on "
        "them since the previous readiness run (pg_stat_user_tables, kept in a Prefect variable). "
        f"{'Active' if nightly.active else 'Inactive'} by default; it changes nothing."
    )
    return {name: manual, f"{name}-scheduled": scheduled, f"{name}-readiness": readiness}


def _validated(migration: Migration, parameters: dict[str, Any]) -> dict[str, Any]:
    """What the flow does when a run starts: the parameter model (a misspelt field is caught here)."""
    try:
        drop_deprecated_tables.validate_parameters(parameters)
    except ParameterTypeError as exc:
        raise MigrationFileError(f"migration {migration.path}: its deployments' parameters: {exc}") from None
    return parameters


def migration_deployments(
    migration: Migration, work_pool: str | None = POOL, engine_python: str | None = None
) -> list[RunnerDeployment]:
    """The manual, scheduled, readiness and fleet-child deployments of one migration, from its settings."""
    settings = migration.settings
    if settings is None:
        raise MigrationFileError(
            f"migration {migration.path} has no [safedrop] settings, so no deployment follows from it; "
            f"open the file with them (see {README_SECTION})"
        )
    name = settings.deployment
    common: dict[str, Any] = {
        "migration": migration.name,
        "keep": list(settings.keep),
        "database_secret_block": DATABASE_SECRET_BLOCK,
        "code_paths": list(settings.code_paths),
    }
    if settings.code_secret_block:
        common["code_secret_block"] = settings.code_secret_block
    window = settings.schedule
    manual = _validated(migration, {"params": {**common, "approval": settings.approval}})
    in_window = _validated(
        migration, {"params": {**common, "approval": window.approval or settings.approval}}
    )
    dry_run = _validated(migration, {"params": {**common, "dry_run": True}})
    text = _descriptions(migration)
    kinds = [  # (name, (kind, trigger) tags, parameters, schedules)
        (name, ("destructive", "manual"), manual, []),
        # `deploy` sets the window's schedule back to what the settings say (and deletes its scheduled
        # runs): an operator who switched it on resumes it again after every deploy.
        (
            f"{name}-scheduled",
            ("destructive", "scheduled"),
            in_window,
            [_schedule(window, "maintenance-window")],
        ),
        (
            f"{name}-readiness",
            ("read-only", "readiness"),
            dry_run,
            [_schedule(settings.readiness, "nightly")],
        ),
    ]
    own = [
        _deployment(
            drop_deprecated_tables,
            work_pool,
            name=deployment,
            description=text[deployment],
            tags=["safedrop", kind, name, trigger],
            parameters=parameters,
            schedules=schedules,
        )
        for deployment, (kind, trigger), parameters, schedules in kinds
    ]
    return [*own, fleet_child_deployment(migration, work_pool, dry_run, engine_python)]


def fleet_child_deployment(
    migration: Migration, work_pool: str | None, parameters: dict[str, Any], engine_python: str | None = None
) -> RunnerDeployment:
    """``NAME-fleet-child``: where the fleet flow sends each database's run. Without the deployment-wide
    limit of one active run (that would cancel a fleet's parallel children): one run per *database* at
    a time is what safedrop's run lock guarantees (an advisory lock on the database, and a flow-run tag
    for a run suspended for approval). By hand, with its own parameters, it is a dry run.

    ``engine_python``: the Python of safedrop's installation, at the same path on every worker. The
    process worker then starts Prefect's engine with it directly instead of first starting its
    workspace supervisor (another Python process, for pull steps and storage these deployments do not
    have): measured ~1 s less per database (bench/fleet.py). Wrong on a worker, every child it takes
    crashes at once ("No such file or directory" in the worker's log), changing nothing."""
    name = child_deployment(migration).split("/", 1)[1]
    extra: dict[str, Any] = {}
    if work_pool:
        # A heartbeat every 30 s (Prefect's default: 180 s): a fleet takes a child silent for
        # child_silence_s for gone with its worker, instead of waiting for it for ever.
        variables: dict[str, Any] = {"env": {"PREFECT_FLOWS_HEARTBEAT_FREQUENCY": str(HEARTBEAT_S)}}
        if engine_python:
            variables["command"] = f"{shlex.quote(engine_python)} -m prefect.engine"
        extra["job_variables"] = variables
    return _deployment(
        drop_deprecated_tables,
        work_pool,
        one_at_a_time=False,
        name=name,
        description=(
            f"One database's run inside a fleet rollout of sql/{migration.path.name} (flow "
            f"{FLEET_FLOW_NAME}): the fleet starts it with the database's URL source, approval skip (the "
            "fleet's approval stands for it) and the plan digest approved for that database. No "
            "deployment-wide concurrency limit: one run per database at a time is safedrop's run lock's "
            "job. Started by hand with its own parameters, it is a dry run."
        ),
        tags=["safedrop", "fleet-child", migration.settings.deployment if migration.settings else name],
        parameters=parameters,
        schedules=[],
        **extra,
    )


def fleet_deployment(work_pool: str | None = POOL) -> RunnerDeployment:
    """``drop-deprecated-tables-fleet/fleet``: a fleet from the UI (Run -> Custom run, the fleet file's
    contents as the form) or `prefect deployment run`; suspended once for the fleet's approval."""
    return _deployment(
        drop_deprecated_tables_fleet,
        work_pool,
        one_at_a_time=False,  # two fleets over one database: its run lock lets one run at a time
        name=FLEET_DEPLOYMENT,
        description=(
            "Retire a migration's tables from many databases (a fleet file's contents as params.fleet: "
            "migration, keep, code_paths, rollout {canary, max_parallel, on_error}, databases each with "
            "secret_block or url_env). Every database's dry run makes the fleet plan; the run is then "
            "suspended until an operator approves it once (Resume, the fleet digest pre-filled); then "
            "canaries first and alone, the rest at most max_parallel at once, each database its own run "
            "of the migration's -fleet-child deployment on any worker. Cancelling it cancels its "
            "children. At a terminal: `safedrop fleet plan|run --fleet FILE`."
        ),
        tags=["safedrop", "fleet", "destructive", "manual"],
        parameters={},  # the fleet is given at run time
        schedules=[],
    )


def _schedule(when, slug: str) -> Schedule:
    """A migration's schedule setting (cron, timezone, active) as a Prefect schedule."""
    return Schedule(cron=when.cron, timezone=when.timezone, active=when.active, slug=slug)


def restore_deployment(work_pool: str | None = POOL) -> RunnerDeployment:
    return _deployment(
        restore_dropped_tables,
        work_pool,
        name="restore-dropped-tables",
        description=(
            "The way back: restore the tables a drop removed — with their rows, sequences, indexes, "
            "constraints, grants, comments, and the views CASCADE took — from the archive its backup step "
            "wrote, in one transaction (retried with short lock timeouts, so no application query queues "
            "behind it); then the foreign keys, added NOT VALID and validated while writes go on; then row "
            "counts and checksums checked against the archive's manifest. Refuses, changing nothing, if the "
            "archive does not match its manifest or a table already exists. Manual only: Run -> Custom run "
            "with params.backup_path = the id of the flow run that dropped the tables (its archive is found "
            "by its manifest in the worker's backup directory), the archive's file name there, or a path; "
            "tick dry_run to check first. Or `prefect deployment run "
            "'restore-dropped-tables/restore-dropped-tables' --param params='{\"backup_path\": \"<flow run "
            "id>\"}' --watch`. The database URL comes from the Secret block `safedrop-database-url` "
            "(params.database_secret_block)."
        ),
        tags=["safedrop", "restore", "manual"],
        parameters={},  # no defaults: backup_path is required at run time (the run form asks for it)
        schedules=[],
    )


def build_deployments(
    work_pool: str | None = POOL, engine_python: str | None = None
) -> list[RunnerDeployment]:
    """Every migration's deployments, then the restore and fleet deployments. Builds only: contacts no
    Prefect API. A migration without settings, or two that claim one deployment name, is a
    MigrationFileError. ``engine_python``: see fleet_child_deployment."""
    built: list[RunnerDeployment] = []
    owner: dict[str, str] = {}
    for path in migration_paths():
        migration = load_migration(str(path))  # its name (the file stem) is what runs carry
        for deployment in migration_deployments(migration, work_pool, engine_python):
            if deployment.name in owner:
                raise MigrationFileError(
                    f"migrations {owner[deployment.name]} and {path} both make the deployment "
                    f"{deployment.name!r}; give each its own `deployment` in its [safedrop] settings"
                )
            owner[deployment.name] = str(path)
            built.append(deployment)
    restore, fleet = restore_deployment(work_pool), fleet_deployment(work_pool)
    for taken in (restore, fleet):
        if taken.name in owner:
            raise MigrationFileError(
                f"migration {owner[taken.name]} claims the name {taken.name!r}; rename it"
            )
    return [*built, restore, fleet]


def describe(deployment: RunnerDeployment) -> str:
    """One line: the deployment, its schedule and whether that is on."""
    schedules = [
        f"cron `{s.schedule.cron}` {s.schedule.timezone}, {'active' if s.active else 'INACTIVE'}"
        for s in deployment.schedules or []
    ]
    return f"{deployment.flow_name}/{deployment.name}: {'; '.join(schedules) or 'manual only'}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m deployments.deploy",
        description="Deploy the deployments of every migration in sql/ (and the restore) to a work pool.",
    )
    parser.add_argument("--pool", default=POOL, help="the process work pool (default: %(default)s)")
    parser.add_argument(
        "--check", action="store_true", help="build and validate every deployment; deploy nothing"
    )
    parser.add_argument(
        "--engine-python",
        metavar="PATH",
        help="the absolute path of the Python safedrop is installed in, the same on every worker: fleet "
        "children then start without Prefect's workspace supervisor process (~1 s less per database)",
    )
    args = parser.parse_args(argv)
    if args.engine_python and not os.path.isabs(args.engine_python):
        given = args.engine_python
        print(
            f"deploy: --engine-python must be an absolute path (the workers' Python), not {given!r}",
            file=sys.stderr,
        )
        return 2
    try:
        deployments = build_deployments(args.pool, args.engine_python)
    except MigrationFileError as exc:
        print(f"deploy: {exc}", file=sys.stderr)
        return 2
    if not args.check:
        try:
            ids = deploy(
                *deployments,
                work_pool_name=args.pool,
                build=False,
                push=False,
                print_next_steps_message=False,
                ignore_warnings=True,
            )
        except ValueError as exc:  # e.g. no such work pool
            print(f"deploy: {exc}", file=sys.stderr)
            return 1
        if len(ids) != len(deployments):  # Prefect reports the failed ones in its table, and goes on
            print(f"deploy: {len(deployments) - len(ids)} of {len(deployments)} failed", file=sys.stderr)
            return 1
    for deployment in deployments:
        print(("checked " if args.check else "deployed ") + describe(deployment))
    return 0


if __name__ == "__main__":
    sys.exit(main())
