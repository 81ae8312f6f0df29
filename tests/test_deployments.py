"""The deployments follow from the migrations in sql/; one run goes end to end through a real worker.

The fast tests build every deployment deployments/deploy.py makes from the migrations' ``[safedrop]``
settings (contacting no server), import each entrypoint, validate each deployment's parameters
against the flow's parameter schema (the check the server makes when a run is created), check the
credit-allocations deployments are what they always were, build deployments/serve.py's deployments
without serving them, and follow the README's "To retire another table" on its example migration.
The e2e test starts a real ``prefect server``, deploys with the README's command to the ``safedrop``
process pool, runs ``credit-allocations`` through a real worker whose environment holds no
DATABASE_URL (so the URL can only come from the Secret block), and checks the database.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

import psycopg2
import pytest
from prefect.blocks.system import Secret
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    DeploymentFilter,
    DeploymentFilterId,
)
from prefect.deployments.runner import EntrypointType, RunnerDeployment
from prefect.flow_runs import resume_flow_run
from prefect.flows import load_flow_from_entrypoint
from prefect.input.actions import read_flow_run_input
from prefect.input.run_input import keyset_from_paused_state
from prefect.settings import PREFECT_API_URL, temporary_settings
from prefect.states import Cancelling
from prefect.utilities.schema_tools import validate

from deployments import deploy
from safedrop.cli.main import main as safedrop_main
from safedrop.errors import MigrationFileError
from safedrop.migration import load_migration, migration_paths
from safedrop.parameters import DropParameters
from tests.conftest import SURVIVORS, TARGETS
from tests.gitrepos import make_app_repo
from tests.helpers import SAFEDROP
from tests.helpers import run as run_flow
from tests.stack import (
    Stack,
    final,
    processes_mentioning,
    wait_until,
    worker_installation,
)

ROOT = Path(__file__).resolve().parent.parent
SERVE_PY = ROOT / "deployments" / "serve.py"
DEPLOY = [sys.executable, "-m", "deployments.deploy"]  # the README's command, from any directory
FLOW_NAME = "drop-deprecated-tables"
POOL = "safedrop"
SECRET_BLOCK = "safedrop-database-url"
MANUAL, SCHEDULED = "credit-allocations", "credit-allocations-scheduled"
READINESS = "credit-allocations-readiness"
RESTORE = "restore-dropped-tables"
FLEET = "fleet"  # drop-deprecated-tables-fleet/fleet
LEASE_S = 30  # the shortest deployment concurrency lease Prefect allows (default 300 s)


@functools.cache
def _built() -> tuple[RunnerDeployment, ...]:
    return tuple(deploy.build_deployments())


def built() -> dict[str, RunnerDeployment]:
    """Every deployment deploy.py makes for the work pool, by name, in its order. Contacts no server."""
    return {d.name: d for d in _built()}


def params_of(name: str) -> dict:
    """A deployment's parameters, as a fresh copy a test may change."""
    return json.loads(json.dumps(built()[name].parameters))


def load_serve() -> ModuleType:
    """deployments/serve.py as the script it is run as."""
    module_spec = importlib.util.spec_from_file_location("safedrop_deployments_serve", SERVE_PY)
    assert module_spec and module_spec.loader
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


# --- the deployments follow from the migrations -------------------------------------------------------


def test_every_migration_makes_four_deployments_on_the_safedrop_pool():
    expected = []
    for path in migration_paths():
        name = load_migration(str(path)).settings.deployment
        expected += [name, f"{name}-scheduled", f"{name}-readiness", f"{name}-fleet-child"]
    assert list(built()) == [*expected, RESTORE, FLEET]
    assert [n for n in built() if n.startswith("credit-allocations")] == [
        MANUAL,
        SCHEDULED,
        READINESS,
        f"{MANUAL}-fleet-child",
    ]
    for name, d in built().items():
        assert d.work_pool_name == POOL, name
        if name.endswith("-fleet-child") or name == FLEET:
            # a fleet's children run in parallel (different databases); one per database is the run lock's job
            assert d.concurrency_limit is None, name
        else:
            assert d.concurrency_limit == 1, name
            assert d.concurrency_options.collision_strategy.value == "CANCEL_NEW", name
        assert d.description.strip() and "safedrop" in d.tags, name
        # Nothing points at the deploying machine: a module entrypoint, no storage (so no pull step),
        # no path, no job variables but a fleet child's heartbeat; deploy.py builds no image.
        assert d.entrypoint_type == EntrypointType.MODULE_PATH, name
        beat = {"env": {"PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "30"}} if name.endswith("-fleet-child") else {}
        assert d.storage is None and d._path is None and d.job_variables == beat, name
        module, _, attribute = d.entrypoint.rpartition(".")
        assert "/" not in module and not module.endswith(".py"), d.entrypoint
        assert callable(getattr(importlib.import_module(module), attribute)), d.entrypoint


def test_restore_deployment_loads_and_is_manual_only():
    d = built()[RESTORE]
    flow = load_flow_from_entrypoint(d.entrypoint, use_placeholder_flow=False)
    assert flow.name == "restore-dropped-tables" == d.flow_name
    assert d.schedules == [] and d.parameters == {}


def test_fleet_deployment_loads_and_takes_the_fleet_at_run_time():
    d = built()[FLEET]
    flow = load_flow_from_entrypoint(d.entrypoint, use_placeholder_flow=False)
    assert flow.name == "drop-deprecated-tables-fleet" == d.flow_name
    assert d.schedules == [] and d.parameters == {} and "fleet" in d.tags


def test_engine_python_starts_fleet_children_without_the_workspace_supervisor(capsys):
    """--engine-python sets the fleet-child deployments' command (the workers' own Python, quoted);
    every other deployment keeps Prefect's default. A relative path is refused in one line."""
    tuned = {d.name: d for d in deploy.build_deployments(engine_python="/srv/safe drop/bin/python")}
    children = [name for name in tuned if name.endswith("-fleet-child")]
    assert f"{MANUAL}-fleet-child" in children
    beat = {"env": {"PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "30"}}  # a fleet notices a child that went silent
    for name, d in tuned.items():
        command = {"command": "'/srv/safe drop/bin/python' -m prefect.engine"}
        assert (d.job_variables or {}) == ({**beat, **command} if name in children else {}), name
        assert (built()[name].job_variables or {}) == (beat if name in children else {})  # Prefect's command
    assert deploy.main(["--check", "--engine-python", "venv/bin/python"]) == 2
    assert capsys.readouterr().err == (
        "deploy: --engine-python must be an absolute path (the workers' Python), not 'venv/bin/python'\n"
    )


@pytest.mark.parametrize("name", [n for n in built() if n not in (RESTORE, FLEET)])
def test_entrypoint_loads_and_parameters_validate(name):
    d = built()[name]
    flow = load_flow_from_entrypoint(d.entrypoint, use_placeholder_flow=False)
    assert flow.name == FLOW_NAME == d.flow_name

    # What the server does when a run is created (enforce_parameter_schema): raises on a bad parameter.
    validate(d.parameters, flow.parameters.model_dump(), raise_on_error=True)
    # What the flow does when it starts: the pydantic model (extra="forbid" catches a misspelled field).
    params = flow.validate_parameters(d.parameters)["params"]
    assert isinstance(params, DropParameters)
    settings = load_migration(params.migration).settings
    assert settings.deployment in d.tags and name.startswith(settings.deployment)
    assert params.keep == settings.keep  # the migration's own list, written once in its file
    assert params.code_paths == settings.code_paths
    assert params.database_secret_block == SECRET_BLOCK
    assert params.backup_dir is None  # the worker's own backup directory, never a checkout's
    assert params.code_paths and all("://" in p for p in params.code_paths)  # cloned where the run runs
    # readiness: the dry run only; a fleet's child by hand too (the fleet gives it its parameters)
    assert params.dry_run is name.endswith(("-readiness", "-fleet-child"))
    # The database URL is never a parameter: nothing but the code's git URLs looks like a URL.
    others = {k: v for k, v in d.parameters["params"].items() if k != "code_paths"}
    assert "://" not in json.dumps(others)


def test_credit_allocations_deployments_are_what_they_were():
    """The values prefect.yaml declared before the deployments followed from the migration file."""
    params = {
        "migration": "drop_credit_allocation_tables",
        "keep": SURVIVORS,
        "database_secret_block": SECRET_BLOCK,
        "code_paths": ["https://github.com/acme/wrapper-backend.git#main"],
    }
    assert built()[MANUAL].parameters == {"params": {**params, "approval": "required"}}
    assert built()[SCHEDULED].parameters == {"params": {**params, "approval": "required"}}
    assert built()[READINESS].parameters == {"params": {**params, "dry_run": True}}
    assert built()[MANUAL].tags == ["safedrop", "destructive", MANUAL, "manual"]
    assert built()[SCHEDULED].tags == ["safedrop", "destructive", MANUAL, "scheduled"]
    assert built()[READINESS].tags == ["safedrop", "read-only", MANUAL, "readiness"]
    assert built()[RESTORE].tags == ["safedrop", "restore", "manual"]
    assert "suspended until an operator approves" in built()[MANUAL].description
    assert "INACTIVE" in built()[SCHEDULED].description
    assert "`safedrop-database-url`" in built()[RESTORE].description


def test_parameter_form_describes_every_field():
    """The UI run form is the flow's parameter schema: every field of it carries a description."""
    schema = load_flow_from_entrypoint(
        "flows.drop_deprecated_tables:drop_deprecated_tables", use_placeholder_flow=False
    ).parameters.model_dump()
    definitions = schema.get("definitions", {})
    assert set(schema["properties"]) == {"params"}
    for name, prop in schema["properties"].items():
        ref = prop.get("$ref", "").rsplit("/", 1)[-1]
        assert prop.get("description") or definitions.get(ref, {}).get("description"), name
    assert definitions, "expected the DropParameters model in the schema's definitions"
    missing = [
        f"{model}.{field}"
        for model, definition in definitions.items()
        for field, prop in definition.get("properties", {}).items()
        if not (prop.get("description") or "").strip()
    ]
    assert not missing, f"fields without a description (blank in the UI form): {missing}"
    assert set(definitions["DropParameters"]["properties"]) == set(DropParameters.model_fields)
    keep = definitions["DropParameters"]["properties"]["keep"]
    assert "the migration's own list" in keep["description"] and keep.get("default") is None


def test_scheduled_deployment_is_declared_inactive_and_manual_has_no_schedule():
    assert built()[MANUAL].schedules == []
    (schedule,) = built()[SCHEDULED].schedules
    assert schedule.active is False and schedule.slug == "maintenance-window"
    assert schedule.schedule.cron == "0 3 * * SUN" and schedule.schedule.timezone == "UTC"
    assert built()[SCHEDULED].parameters == built()[MANUAL].parameters


def test_readiness_deployment_is_a_nightly_active_dry_run():
    (schedule,) = built()[READINESS].schedules
    assert schedule.active is True and schedule.slug == "nightly"
    assert schedule.schedule.cron == "0 2 * * *" and schedule.schedule.timezone == "UTC"
    assert built()[READINESS].parameters["params"]["dry_run"] is True


def test_serve_builds_the_same_deployments_without_a_work_pool():
    served = {d.name: d for d in load_serve().build_deployments()}
    assert list(served) == list(built())
    for name, d in served.items():
        b = built()[name]
        assert d.flow_name == b.flow_name and d.entrypoint == b.entrypoint
        assert d.parameters == b.parameters
        assert d.description == b.description and d.tags == b.tags
        assert [(s.schedule, s.active, s.slug) for s in d.schedules] == [
            (s.schedule, s.active, s.slug) for s in b.schedules
        ]
        assert d.work_pool_name is None  # served: no work pool, no worker
        assert d.concurrency_limit == b.concurrency_limit
        if b.concurrency_limit:
            assert d.concurrency_options.collision_strategy.value == "CANCEL_NEW"


def _settings(deployment: str = "orders-archive", **replace: str) -> str:
    lines = {
        "deployment": f'"{deployment}"',
        "keep": '["orders"]',
        "code_paths": '["https://git.example.com/shop.git#main"]',
        "schedule": '{ cron = "0 3 * * SUN", timezone = "UTC", active = false }',
        "readiness": '{ cron = "0 2 * * *", timezone = "UTC", active = true }',
        **replace,
    }
    body = "".join(f"-- {key} = {value}\n" for key, value in lines.items() if value)
    return f"-- Retire orders_archive.\n-- [safedrop]\n{body}DROP TABLE orders_archive;\n"


def test_a_migration_without_settings_or_with_a_taken_name_makes_no_deployment(tmp_path, monkeypatch):
    bare = tmp_path / "drop_orders_archive.sql"
    bare.write_text("DROP TABLE orders_archive;\n")
    with pytest.raises(MigrationFileError) as error:
        deploy.migration_deployments(load_migration(str(bare)))
    assert str(error.value) == (
        f"migration {bare} has no [safedrop] settings, so no deployment follows from it; open the file "
        "with them (see the README's 'To retire another table')"
    )

    first, second = tmp_path / "a.sql", tmp_path / "b.sql"
    first.write_text(_settings("orders-archive"))
    second.write_text(_settings("orders-archive"))
    monkeypatch.setattr(deploy, "migration_paths", lambda: [first, second])
    with pytest.raises(MigrationFileError) as error:
        deploy.build_deployments()
    assert str(error.value) == (
        f"migrations {first} and {second} both make the deployment 'orders-archive'; give each its own "
        "`deployment` in its [safedrop] settings"
    )


def test_a_window_that_runs_unattended_says_so(tmp_path):
    path = tmp_path / "drop_orders_archive.sql"
    path.write_text(
        _settings(schedule='{ cron = "0 3 * * SUN", timezone = "UTC", active = true, approval = "skip" }')
    )
    manual, scheduled, readiness, _ = deploy.migration_deployments(load_migration(str(path)))
    assert manual.parameters["params"]["approval"] == "required"
    assert scheduled.parameters["params"]["approval"] == "skip"
    assert [s.active for s in scheduled.schedules] == [True]
    assert "no approval pause" in scheduled.description and "ACTIVE" in scheduled.description
    assert "approval" not in readiness.parameters["params"]


# --- to retire another table: the README's steps, on its example ----------------------------------------

EXAMPLE = ROOT / "sql" / "drop_legacy_invoice_exports.sql"
INVOICE_SCHEMA = """
CREATE TABLE invoices (
    id         bigserial PRIMARY KEY,
    tenant_id  bigint NOT NULL REFERENCES tenants (id),
    total      numeric(12, 2) NOT NULL
);
CREATE TABLE invoice_exports (
    id           bigserial PRIMARY KEY,
    invoice_id   bigint NOT NULL REFERENCES invoices (id),
    exported_at  timestamptz NOT NULL DEFAULT now()
);
-- Deprecated: replaced by invoice_exports, empty since.
CREATE TABLE legacy_invoice_exports (
    id          bigserial PRIMARY KEY,
    invoice_id  bigint REFERENCES invoices (id),
    payload     text
);
INSERT INTO invoices (tenant_id, total) SELECT id, 10 * id FROM tenants;
INSERT INTO invoice_exports (invoice_id) SELECT id FROM invoices WHERE id % 2 = 0;
"""


def _readme_example() -> tuple[str, str]:
    """The migration file the README's "To retire another table" shows: its name and its text."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## To retire another table", 1)[1].split("\n## ", 1)[0]
    match = re.search(r"`sql/([a-z0-9_]+\.sql)`.*?```sql\n(.*?)```", section, re.S)
    assert match, "the README's 'To retire another table' shows no migration file"
    return match[1], match[2]


@pytest.mark.usefixtures("prefect_harness")
def test_a_newcomer_retires_another_table(guide_db, tmp_path, monkeypatch, capsys):
    # 1. The file the README shows is the one in sql/, word for word.
    name, text = _readme_example()
    assert (ROOT / "sql" / name).read_text() == text and ROOT / "sql" / name == EXAMPLE

    # 2. `python -m deployments.deploy --check`, from any directory: its three deployments, validated.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    checked = subprocess.run(
        [*DEPLOY, "--check"], cwd=elsewhere, env=env, capture_output=True, text=True, timeout=120
    )
    assert checked.returncode == 0, checked.stderr
    assert f"checked {FLOW_NAME}/legacy-invoice-exports: manual only" in checked.stdout.splitlines()
    assert (
        f"checked {FLOW_NAME}/legacy-invoice-exports-scheduled: cron `0 4 * * SAT` UTC, INACTIVE"
        in checked.stdout.splitlines()
    )
    assert (
        f"checked {FLOW_NAME}/legacy-invoice-exports-readiness: cron `30 2 * * *` UTC, active"
        in checked.stdout.splitlines()
    )
    keep = ["invoices", "invoice_exports"]
    assert built()["legacy-invoice-exports"].parameters["params"]["keep"] == keep

    # 3. `safedrop plan --migration drop_legacy_invoice_exports`: the migration's own keep list.
    guide_db.execute(INVOICE_SCHEMA)
    app = tmp_path / "billing-service"
    (app / "src").mkdir(parents=True)
    (app / "src" / "exports.js").write_text("await db.query('SELECT * FROM invoice_exports');\n")
    monkeypatch.setenv("DATABASE_URL", "unset")  # so monkeypatch removes what main() exports
    code = safedrop_main(
        [
            "plan",
            "--migration",
            EXAMPLE.stem,
            "--code-path",
            str(app),
            "--database-url",
            guide_db.url,
            "--json",
        ]
    )
    report = json.loads(capsys.readouterr().out)
    assert code == 0 and report["status"] == "ready", report["reasons"]
    assert [t["name"] for t in report["keep"]] == [f"public.{t}" for t in keep]
    assert [t["name"] for t in report["targets"]] == ["public.legacy_invoice_exports"]

    # 4. The flow with only migration=<it> (what a deployment run does, minus the UI's approval):
    #    its table goes, its survivors are intact, the credit tables untouched.
    monkeypatch.setenv("DATABASE_URL", guide_db.url)
    survivors = {t: guide_db.count(t) for t in [*keep, *SURVIVORS, *TARGETS]}
    state, report = run_flow(migration=EXAMPLE.stem, backup_dir=str(tmp_path / "backups"))
    assert state.is_completed() and report.status == "succeeded", report.reasons
    assert report.dropped == ["public.legacy_invoice_exports"]
    assert [k.name for k in report.keep] == [f"public.{t}" for t in keep]
    assert not guide_db.exists("public.legacy_invoice_exports")
    assert {t: guide_db.count(t) for t in survivors} == survivors
    assert [(s.table, s.exists, s.problems) for s in report.verification.survivors] == [
        (f"public.{t}", True, []) for t in keep
    ]


# --- end to end: server, pool, Secret block, deploy, worker, run --------------------------------------


def _pool_ready(client) -> bool:
    """A worker has polled the pool (its status turns READY)."""
    return client.read_work_pool(POOL).status.value == "READY"


def _paused_run(client, earlier: set):
    """The manual deployment's flow run (not one of ``earlier``) once it is paused, else None (fails fast
    if it ended)."""
    deployment = client.read_deployment_by_name(f"{FLOW_NAME}/{MANUAL}")
    only_this = DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id]))
    for run in client.read_flow_runs(deployment_filter=only_this):
        if run.id in earlier:
            continue
        if run.state and run.state.is_final():
            raise AssertionError(f"the run ended {run.state.name} before any approval: {run.state.message}")
        if run.state and run.state.is_paused():
            return run
    return None


def _cancel_mid_backup(stack: Stack, api: str, guide_db, backup_dir: Path, *, code: str):
    """Start a manual run, cancel it while pg_dump waits for a lock; returns the cancelled run's id."""
    before = guide_db.snapshot()
    params = params_of(MANUAL)
    params["params"]["backup_dir"] = str(backup_dir)
    params["params"]["code_paths"] = [code]
    blocker = psycopg2.connect(guide_db.url, application_name="e2e-lock-holder")
    try:
        with blocker.cursor() as cur:  # pg_dump locks every table it dumps before reading any
            cur.execute("LOCK TABLE tenants IN ACCESS EXCLUSIVE MODE")  # no precheck reads it
        with temporary_settings(updates={PREFECT_API_URL: api}), get_client(sync_client=True) as client:
            deployment = client.read_deployment_by_name(f"{FLOW_NAME}/{MANUAL}")
            flow_run = client.create_flow_run_from_deployment(deployment.id, parameters=params)
            dump_pid = wait_until(
                stack,
                "pg_dump to start and wait for its lock",
                lambda: _dumping(guide_db, backup_dir),
                120,
                process="worker",
            )
            client.set_flow_run_state(flow_run.id, Cancelling(message="cancelled by the e2e test"))
            ended = wait_until(
                stack,
                "the run to be cancelled",
                lambda: (r := client.read_flow_run(flow_run.id)).state.is_final() and r,
                60,
                process="worker",
            )
        assert ended.state.is_cancelled(), stack.explain(
            f"run ended {ended.state.name}: {ended.state.message}"
        )
        wait_until(stack, f"pg_dump {dump_pid} to go", lambda: not processes_mentioning(str(backup_dir)), 30)
        wait_until(stack, "pg_dump's session to end", lambda: not _pg_dump_sessions(guide_db), 30)
    finally:
        blocker.rollback()
        blocker.close()
    assert guide_db.snapshot() == before, stack.explain("the database changed")
    leftovers = [p.name for p in backup_dir.rglob("*") if p.is_file()] if backup_dir.exists() else []
    assert leftovers == [], stack.explain(f"the cancelled backup left {leftovers}")
    return flow_run.id


def _pg_dump_sessions(guide_db) -> int:
    return guide_db.scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'safedrop pg_dump' AND datname = current_database()"
    )


def _dumping(guide_db, backup_dir: Path) -> int | None:
    """pid of the pg_dump writing into ``backup_dir`` once its session waits for a lock, else None."""
    dumps = [pid for pid, cmd in processes_mentioning(str(backup_dir)).items() if "pg_dump" in cmd.split()[0]]
    waiting = guide_db.scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'safedrop pg_dump' "
        "AND datname = current_database() AND wait_event_type = 'Lock'"
    )
    return dumps[0] if dumps and waiting else None


def _suspended(stack: Stack, client, flow_run_id, process: str):
    def check():
        run = client.read_flow_run(flow_run_id)
        if run.state.is_final():
            raise AssertionError(f"the run ended {run.state.name} before any approval: {run.state.message}")
        return run if run.state.is_paused() else None

    return wait_until(stack, "the run to be suspended for approval", check, 120, process=process)


def _sessions_of_safedrop(guide_db) -> int:
    return guide_db.scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'safedrop%' "
        "AND datname = current_database() AND pid <> pg_backend_pid()"
    )


@pytest.mark.e2e
@pytest.mark.timeout(600)
def test_deployment_runs_through_a_worker_with_the_secret_block(stack: Stack, guide_db, tmp_path, s3):
    """Deployed with the README's command from a directory that is then deleted; workers that have safedrop
    installed (a wheel, not this checkout) in directories of their own — other machines, sharing no disk,
    their backups in a bucket (a real S3-API server); the application's code from a git URL; an approval
    that comes after the deployment concurrency lease would have expired and after the worker was
    restarted elsewhere; the restore deployment on that other worker puts the tables back from the
    bucket."""
    api = stack.env["PREFECT_API_URL"]
    password = guide_db.server.password
    before = {t: guide_db.count(t) for t in SURVIVORS}
    assert all(guide_db.exists(f"public.{t}") for t in TARGETS)
    timings: dict[str, float] = {}

    def mark(step: str) -> None:
        timings[step] = round(time.monotonic() - stack.started, 1)

    site = worker_installation(tmp_path)
    repo = make_app_repo(tmp_path / "git")  # main still reads credit_allocations; branch cleanup does not
    bucket = f"s3://{s3.name}/{s3.location.prefix}"
    worker_env = {"PYTHONPATH": str(site), "SAFEDROP_BACKUP_DIR": bucket, **s3.server.env}
    mark("worker installation")

    # 1. Server (fresh PREFECT_HOME), up when /api/health answers. The deployment concurrency lease is
    #    as short as Prefect allows (30 s), so the approval below comes long after it would have expired.
    stack.start_server(PREFECT_SERVER_CONCURRENCY_INITIAL_DEPLOYMENT_LEASE_DURATION=str(LEASE_S))
    mark("server up")

    # 2. Work pool; a worker in a directory of its own (no checkout), whose Python finds safedrop only
    #    in the wheel's installation, and whose environment holds no DATABASE_URL.
    stack.ok("work-pool", "create", POOL, "--type", "process")
    assert "DATABASE_URL" not in stack.env
    worker_dir = tmp_path / "worker-1"
    worker_dir.mkdir()
    where = subprocess.run(
        [
            sys.executable,
            "-c",
            "import safedrop, sql; print(safedrop.__file__); print(list(sql.__path__)[0])",
        ],
        cwd=worker_dir,
        env={**stack.env, **worker_env},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert all(w.startswith(str(site)) for w in where), where
    stack.start("worker", "worker", "start", "--pool", POOL, cwd=worker_dir, **worker_env)

    # 3. The Secret block, through the Python API against this server.
    with temporary_settings(updates={PREFECT_API_URL: api}):
        Secret(value=guide_db.url).save(SECRET_BLOCK, overwrite=True)
    mark("pool, worker started, secret")

    # 4. Deploy every migration's deployments with the README's command, from a directory that holds
    #    nothing, then remove that directory.
    deploy_dir = tmp_path / "deploy-from"
    deploy_dir.mkdir()
    deployed = stack.command(DEPLOY, timeout=120, cwd=deploy_dir)
    assert deployed.returncode == 0, stack.explain(f"deploy exited {deployed.returncode}")
    for name in built():
        assert f" {built()[name].flow_name}/{name}: " in deployed.stdout, stack.explain(
            f"{name} not deployed"
        )
    shutil.rmtree(deploy_dir)
    mark("deployed")
    with temporary_settings(updates={PREFECT_API_URL: api}), get_client(sync_client=True) as client:
        wait_until(stack, "the worker to poll the pool", lambda: _pool_ready(client), 60, process="worker")
    mark("worker ready")

    # 5. Readiness first, while a view over a target and the application's code (main, over file://)
    #    still use the targets: the dry run completes (it is a report) and its summary names both.
    guide_db.execute("CREATE VIEW org_credit_overview AS SELECT tenant_id FROM credit_allocations")
    readiness = params_of(READINESS)
    readiness["params"]["code_paths"] = [repo.url]
    stack.ok(
        "deployment",
        "run",
        f"{FLOW_NAME}/{READINESS}",
        "--params",
        json.dumps(readiness),
        "--watch",
        "--watch-timeout",
        "120",
        timeout=150,
    )
    with temporary_settings(updates={PREFECT_API_URL: api}), get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name(f"{FLOW_NAME}/{READINESS}")
        runs = client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id]))
        )
        # the nightly schedule is active, so future runs are scheduled too; ours is the finished one
        (readiness_run,) = [r for r in runs if r.state and r.state.is_final()]
        assert readiness_run.state.is_completed() and readiness_run.state.name == "Not ready", (
            readiness_run.state
        )
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[readiness_run.id]))
        )
        summary = next(a for a in artifacts if a.key == "drop-credit-allocation-tables-summary")
        assert "public.org_credit_overview" in summary.data, summary.data
        assert "src/services/billing.js" in summary.data, summary.data  # found in the clone of main
    guide_db.execute("DROP VIEW org_credit_overview")
    mark("readiness")

    # 5b. The command line, with PREFECT_API_URL set and no database URL: its run is recorded on the
    #     server with its artifacts, and the URL comes from the Secret block.
    plan = stack.command([str(SAFEDROP), "plan", "--code-policy", "skip"], timeout=120, cwd=tmp_path)
    assert plan.returncode == 0 and "Traceback" not in plan.stdout + plan.stderr, stack.explain("CLI plan")
    with temporary_settings(updates={PREFECT_API_URL: api}), get_client(sync_client=True) as client:
        (cli_run,) = [r for r in client.read_flow_runs() if r.deployment_id is None]
        assert cli_run.state.is_completed(), stack.explain(f"CLI run {cli_run.state}")
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[cli_run.id]))
        )
        assert "drop-credit-allocation-tables-summary" in {a.key for a in artifacts}, artifacts
    mark("CLI run recorded")

    # 6. Cancelled mid-backup, as from the UI's Cancel button: the worker ends the run's process, and
    #    pg_dump — held at its first lock by a session of ours — must not outlive it.
    cancelled = _cancel_mid_backup(stack, api, guide_db, tmp_path / "cancelled", code=f"{repo.url}#cleanup")
    mark("cancelled mid-backup")

    # 7. The manual deployment with its deployed parameters, but the code from the cleanup branch (no
    #    references left) and no backup_dir (the worker's own). It is suspended for approval: no
    #    process, no database session held while the operator reads the plan.
    #    One target is partitioned, so the backup reused after the resume is verified partition by
    #    partition (its rows live in the leaves), as the first attempt verified it.
    guide_db.execute(
        "CREATE TABLE cat_parted (LIKE credit_allocation_transactions) PARTITION BY RANGE (id);"
        "CREATE TABLE cat_parted_1 PARTITION OF cat_parted FOR VALUES FROM (MINVALUE) TO (100);"
        "CREATE TABLE cat_parted_2 PARTITION OF cat_parted FOR VALUES FROM (100) TO (MAXVALUE);"
        "DROP TABLE credit_allocation_transactions;"
        "ALTER TABLE cat_parted RENAME TO credit_allocation_transactions"
    )
    params = params_of(MANUAL)
    params["params"]["code_paths"] = [f"{repo.url}#cleanup"]
    params["params"]["allow_cascade"] = ["public.cat_parted_1", "public.cat_parted_2"]  # they go too
    with temporary_settings(updates={PREFECT_API_URL: api}), get_client(sync_client=True) as client:
        manual = client.read_deployment_by_name(f"{FLOW_NAME}/{MANUAL}")
        flow_run = client.create_flow_run_from_deployment(manual.id, parameters=params)
        suspended = _suspended(stack, client, flow_run.id, "worker")
        suspended_at = time.monotonic()
        mark("suspended for approval")
        assert suspended.state.name == "Suspended", stack.explain(f"state {suspended.state}")
        assert all(guide_db.exists(f"public.{t}") for t in TARGETS), stack.explain("dropped before approval")
        assert [k for k in s3.keys() if k.endswith(".dump")], stack.explain("no backup in the bucket")
        wait_until(stack, "no safedrop session left", lambda: _sessions_of_safedrop(guide_db) == 0, 30)

        # 8. One run at a time still holds while the first waits: a second run stops, naming it.
        second = client.create_flow_run_from_deployment(manual.id, parameters=params)
        ended = final(stack, client, second.id, 120, "worker")
        assert ended.state.name == "Stopped", stack.explain(f"second run: {ended.state}")
        assert "another safedrop run is waiting for approval" in ended.state.message, ended.state.message
        assert str(flow_run.id) in ended.state.message, ended.state.message
        mark("second run stopped")

        # 9. The worker is restarted (a deploy, a reboot) — in another directory — while the run waits,
        #    and the wait outlasts the deployment concurrency lease.
        stack.stop_one("worker")
        shutil.rmtree(worker_dir)  # that machine is gone, with its disk
        worker_dir_2 = tmp_path / "worker-2"
        worker_dir_2.mkdir()
        stack.start("worker-2", "worker", "start", "--pool", POOL, cwd=worker_dir_2, **worker_env)

        def still_suspended_past_the_lease() -> bool:
            run = client.read_flow_run(flow_run.id)
            assert run.state.is_paused(), f"the waiting run left its suspension: {run.state}"
            return time.monotonic() - suspended_at > LEASE_S + 15

        wait_until(stack, "the lease period to pass", still_suspended_past_the_lease, LEASE_S + 60)
        mark("waited past the lease, worker restarted")

        # 10. The operator approves in the UI's Resume form: its schema, the evidence digest pre-filled.
        waiting = client.read_flow_run(flow_run.id)
        form = read_flow_run_input(keyset_from_paused_state(waiting.state)["schema"], flow_run_id=waiting.id)
        digest = form["properties"]["evidence_digest"]["default"]
        resume_flow_run(waiting.id, run_input={"approve": True, "evidence_digest": digest, "approver": "e2e"})
        done = final(stack, client, flow_run.id, 180, "worker-2")
        mark("run finished")
    assert done.state.is_completed(), stack.explain(f"run ended {done.state.name}: {done.state.message}")

    # 11. The database: targets gone, survivors there with their rows; one backup, taken by the first
    #     worker and reused by the second after the resume, in the bucket and nowhere on either machine.
    assert not any(guide_db.exists(f"public.{t}") for t in TARGETS), stack.explain("targets still exist")
    assert not guide_db.exists("public.cat_parted_1"), stack.explain("a partition of a target survived")
    assert {t: guide_db.count(t) for t in SURVIVORS} == before, stack.explain("survivors changed")
    archives = [k for k in s3.keys() if k.endswith(".dump")]
    assert len(archives) == 1 and not s3.uploads_in_progress(), stack.explain(
        f"expected one backup: {archives}"
    )
    assert "reusing this flow run's backup" in stack.log("worker-2"), stack.explain("backup not reused")
    assert not list(ROOT.glob(f"**/{guide_db.name}-*.dump")), "backup written into the checkout"
    assert not list(tmp_path.glob(f"worker-*/**/{guide_db.name}-*.dump")), "a backup on a worker's disk"

    # 11b. The restore deployment, run on the second worker (which never wrote the archive), from the
    #      bucket's URI the ledger recorded: the tables come back, verified.
    uri = guide_db.scalar("SELECT string_agg(DISTINCT backup_path, ',') FROM safedrop.dropped_tables")
    assert uri == f"s3://{s3.name}/{archives[0]}", uri
    restore_params = {"params": {"backup_path": uri}}
    with temporary_settings(updates={PREFECT_API_URL: api}), get_client(sync_client=True) as client:
        restore_deployment = client.read_deployment_by_name(f"{RESTORE}/{RESTORE}")
        restore_run = client.create_flow_run_from_deployment(restore_deployment.id, parameters=restore_params)
        restored = final(stack, client, restore_run.id, 180, "worker-2")
    assert restored.state.is_completed(), stack.explain(
        f"restore ended {restored.state.name}: {restored.state.message}"
    )
    assert all(guide_db.exists(f"public.{t}") for t in ("credit_allocations", "cat_parted_1")), stack.explain(
        "the restore did not bring the tables back"
    )
    mark("restored from the bucket on the other worker")

    # 12. What the server holds: parameters without the database URL, the scheduled deployment inactive.
    with temporary_settings(updates={PREFECT_API_URL: api}), get_client(sync_client=True) as client:
        manual = client.read_deployment_by_name(f"{FLOW_NAME}/{MANUAL}")
        scheduled = client.read_deployment_by_name(f"{FLOW_NAME}/{SCHEDULED}")
        scheduled_runs = client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[scheduled.id]))
        )
        run = client.read_flow_run(flow_run.id)
    assert run.parameters == params, stack.explain(f"run parameters {run.parameters}")
    assert manual.pull_steps in (None, []), stack.explain(f"pull steps {manual.pull_steps}")
    assert manual.entrypoint == built()[MANUAL].entrypoint
    for d in (manual, scheduled):
        assert d.work_pool_name == POOL and d.parameters == built()[d.name].parameters
        assert d.global_concurrency_limit is not None and d.global_concurrency_limit.limit == 1
        assert d.concurrency_options is not None
        assert d.concurrency_options.collision_strategy.value == "CANCEL_NEW"
    assert manual.schedules == []
    assert [s.active for s in scheduled.schedules] == [False]
    assert scheduled_runs == [], stack.explain(f"the inactive schedule produced runs: {scheduled_runs}")
    assert cancelled != flow_run.id

    # 13. The password never reached a log, an argv or a parameter.
    outputs = {f"{name} log": stack.log(name) for name in stack.processes}
    outputs["command output"] = "\n".join(stack.transcript)
    for where_, text in outputs.items():
        if password in text:  # not `assert … in`: pytest would print the password in its explanation
            pytest.fail(f"the database password appears in the {where_}")
        if s3.server.env["AWS_SECRET_ACCESS_KEY"] in text:
            pytest.fail(f"the store's secret key appears in the {where_}")
    mark("checked")
    print(f"e2e timings (s since start): {timings}")
