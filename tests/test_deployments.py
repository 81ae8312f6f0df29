"""Everything declared in prefect.yaml loads and builds; one run goes end to end through a real worker.

The fast tests import each entrypoint, validate each deployment's parameters against the flow's
parameter schema (the check the server makes when a run is created) and build deployments/serve.py's
deployments without serving them. The e2e test starts a real ``prefect server``, deploys prefect.yaml
to the ``safedrop`` process pool, runs ``credit-allocations`` through a real worker whose environment
holds no DATABASE_URL (so the URL can only come from the Secret block), and checks the database.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import psycopg2
import pytest
import yaml
from prefect.blocks.system import Secret
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    DeploymentFilter,
    DeploymentFilterId,
)
from prefect.flow_runs import resume_flow_run
from prefect.flows import load_flow_from_entrypoint
from prefect.input.actions import read_flow_run_input
from prefect.input.run_input import keyset_from_paused_state
from prefect.settings import PREFECT_API_URL, temporary_settings
from prefect.states import Cancelling
from prefect.utilities.schema_tools import validate

from safedrop.parameters import DropParameters
from tests.conftest import SURVIVORS, TARGETS

ROOT = Path(__file__).resolve().parent.parent
PREFECT_YAML = ROOT / "prefect.yaml"
SERVE_PY = ROOT / "deployments" / "serve.py"
PREFECT = str(Path(sys.executable).with_name("prefect"))  # the venv's CLI: the worker's runs use its Python
FLOW_NAME = "drop-deprecated-tables"
POOL = "safedrop"
SECRET_BLOCK = "safedrop-database-url"
MANUAL, SCHEDULED = "credit-allocations", "credit-allocations-scheduled"
READINESS = "credit-allocations-readiness"


def specs() -> list[dict[str, Any]]:
    return yaml.safe_load(PREFECT_YAML.read_text())["deployments"]


def spec(name: str) -> dict[str, Any]:
    return next(s for s in specs() if s["name"] == name)


def load_serve() -> ModuleType:
    """deployments/serve.py as a module (deployments/ is a folder of scripts, not a package)."""
    module_spec = importlib.util.spec_from_file_location("safedrop_deployments_serve", SERVE_PY)
    assert module_spec and module_spec.loader
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


# --- prefect.yaml: everything declared loads ---------------------------------------------------------


def test_prefect_yaml_declares_both_deployments_on_the_safedrop_pool():
    config = yaml.safe_load(PREFECT_YAML.read_text())
    names = [s["name"] for s in config["deployments"]]
    assert [n for n in names if n.startswith("credit-allocations")] == [MANUAL, SCHEDULED, READINESS]
    assert config["pull"] == [
        {"prefect.deployments.steps.set_working_directory": {"directory": "{{ checkout.stdout }}"}}
    ]
    assert config["build"][0]["prefect.deployments.steps.run_shell_script"]["id"] == "checkout"
    for s in config["deployments"]:
        assert s["work_pool"]["name"] == POOL, s["name"]
        assert s["concurrency_limit"] == {"limit": 1, "collision_strategy": "CANCEL_NEW"}, s["name"]
        assert s["description"].strip() and "safedrop" in s["tags"], s["name"]
        assert (ROOT / s["entrypoint"].split(":")[0]).is_file(), s["entrypoint"]


RESTORE = "restore-dropped-tables"


def test_restore_deployment_loads_and_is_manual_only():
    s = spec(RESTORE)
    path, func = s["entrypoint"].split(":")
    flow = load_flow_from_entrypoint(f"{ROOT / path}:{func}", use_placeholder_flow=False)
    assert flow.name == "restore-dropped-tables"
    assert not s.get("schedules")
    assert "://" not in json.dumps(s.get("parameters") or {})


@pytest.mark.parametrize("name", [s["name"] for s in specs() if s["name"] != RESTORE])
def test_entrypoint_loads_and_parameters_validate(name):
    s = spec(name)
    path, func = s["entrypoint"].split(":")
    flow = load_flow_from_entrypoint(f"{ROOT / path}:{func}", use_placeholder_flow=False)
    assert flow.name == FLOW_NAME

    # What the server does when a run is created (enforce_parameter_schema): raises on a bad parameter.
    validate(s["parameters"], flow.parameters.model_dump(), raise_on_error=True)
    # What the flow does when it starts: the pydantic model (extra="forbid" catches a misspelled field).
    params = flow.validate_parameters(s["parameters"])["params"]
    assert isinstance(params, DropParameters)
    assert params.migration == "drop_credit_allocation_tables"
    assert params.keep == SURVIVORS
    assert params.database_secret_block == SECRET_BLOCK
    assert params.backup_dir == "backups"
    assert params.dry_run is (name == READINESS)  # readiness: the dry run only
    # The URL is never a parameter: nothing in any deployment's parameters looks like one.
    assert "://" not in json.dumps(s["parameters"])


def test_parameter_form_describes_every_field():
    """The UI run form is the flow's parameter schema: every field of it carries a description."""
    schema = load_flow_from_entrypoint(
        f"{ROOT / 'flows/drop_deprecated_tables.py'}:drop_deprecated_tables", use_placeholder_flow=False
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


def test_scheduled_deployment_is_declared_inactive_and_manual_has_no_schedule():
    assert spec(MANUAL)["schedules"] == []
    (schedule,) = spec(SCHEDULED)["schedules"]
    assert schedule["active"] is False
    assert schedule["cron"] == "0 3 * * SUN" and schedule["timezone"] == "UTC"
    assert spec(SCHEDULED)["parameters"] == spec(MANUAL)["parameters"]


def test_readiness_deployment_is_a_nightly_active_dry_run():
    (schedule,) = spec(READINESS)["schedules"]
    assert schedule["active"] is True and schedule["cron"] == "0 2 * * *"
    assert spec(READINESS)["parameters"]["params"]["dry_run"] is True


def test_serve_builds_the_prefect_yaml_deployments_without_serving():
    built = {d.name: d for d in load_serve().build_deployments()}
    assert [n for n in built if n.startswith("credit-allocations")] == [MANUAL, SCHEDULED, READINESS]
    assert built[RESTORE].flow_name == "restore-dropped-tables" and built[RESTORE].schedules == []
    for name, d in built.items():
        if name == RESTORE:
            continue
        s = spec(name)
        assert d.flow_name == FLOW_NAME
        assert d.entrypoint == s["entrypoint"]
        assert d.parameters == s["parameters"]
        assert d.description == s["description"] and d.tags == s["tags"]
        assert d.work_pool_name is None  # served: no work pool, no worker
        assert d.concurrency_limit == 1
        assert d.concurrency_options is not None
        assert d.concurrency_options.collision_strategy.value == "CANCEL_NEW"
    assert built[MANUAL].schedules == []
    (schedule,) = built[SCHEDULED].schedules
    assert schedule.active is False
    assert schedule.schedule.cron == "0 3 * * SUN" and schedule.schedule.timezone == "UTC"


# --- end to end: server, pool, Secret block, deploy, worker, run --------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Stack:
    """The server and worker processes of one e2e test, and every command's output, for failure messages."""

    def __init__(self, tmp_path: Path, env: dict[str, str]):
        self.tmp_path, self.env = tmp_path, env
        self.processes: dict[str, subprocess.Popen] = {}
        self.transcript: list[str] = []
        self.started = time.monotonic()

    def start(self, name: str, *args: str, **env: str) -> subprocess.Popen:
        log = (self.tmp_path / f"{name}.log").open("wb")
        process = subprocess.Popen(
            [PREFECT, *args],
            cwd=ROOT,
            env={**self.env, **env},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: killpg stops it and its flow-run children
        )
        log.close()
        self.processes[name] = process
        return process

    def cli(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        """One `prefect` command from the repository root; its output goes into the transcript."""
        t0 = time.monotonic()
        try:
            result = subprocess.run(
                [PREFECT, *args], cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=timeout
            )
        except subprocess.TimeoutExpired as exc:
            raise AssertionError(self.explain(f"`prefect {' '.join(args)}` ran over {timeout} s")) from exc
        self.transcript.append(
            f"$ prefect {' '.join(args)}  # exit {result.returncode}, {time.monotonic() - t0:.1f} s\n"
            f"{result.stdout}{result.stderr}"
        )
        return result

    def ok(self, *args: str, timeout: float = 60) -> str:
        result = self.cli(*args, timeout=timeout)
        assert result.returncode == 0, self.explain(f"`prefect {' '.join(args)}` exited {result.returncode}")
        return result.stdout

    def log(self, name: str) -> str:
        path = self.tmp_path / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def explain(self, what: str) -> str:
        parts = [f"{what} ({time.monotonic() - self.started:.1f} s into the test)"]
        for name in self.processes:
            parts.append(f"--- {name}.log (last 6000 chars) ---\n{self.log(name)[-6000:]}")
        parts.append("--- commands ---\n" + "\n".join(self.transcript)[-8000:])
        return "\n".join(parts)

    def stop(self) -> None:
        for process in reversed(list(self.processes.values())):  # last started first: server last
            if process.poll() is not None:
                continue
            try:
                os.killpg(process.pid, signal.SIGTERM)
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=5)
            except ProcessLookupError:
                pass


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_") and k != "DATABASE_URL"}
    env.update(
        PREFECT_HOME=str(tmp_path / "prefect-home"),  # fresh: its own SQLite database, no profile
        PREFECT_API_URL=f"http://127.0.0.1:{port}/api",
        PREFECT_SERVER_API_HOST="127.0.0.1",
        PREFECT_SERVER_API_PORT=str(port),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_UI_ENABLED="false",
        PREFECT_LOGGING_LEVEL="INFO",
        PREFECT_WORKER_QUERY_SECONDS="1",
        # The scheduler looks every second, so an active schedule would have produced runs by the end.
        PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS="1",
        PREFECT_SERVER_SERVICES_SCHEDULER_RECENT_DEPLOYMENTS_LOOP_SECONDS="1",
        COLUMNS="200",
    )
    stack = Stack(tmp_path, env)
    try:
        yield stack
    finally:
        stack.stop()


def _wait_until(stack: Stack, what: str, check, deadline_s: float, process: str | None = None):
    deadline = time.monotonic() + deadline_s
    while True:
        try:
            result = check()
        except AssertionError as exc:
            raise AssertionError(stack.explain(str(exc))) from None
        if result:
            return result
        if process and stack.processes[process].poll() is not None:
            raise AssertionError(stack.explain(f"{process} exited ({stack.processes[process].returncode})"))
        if time.monotonic() > deadline:
            raise AssertionError(stack.explain(f"timed out after {deadline_s} s waiting for {what}"))
        time.sleep(0.25)


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


def _healthy(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _processes_mentioning(text: str) -> dict[int, str]:
    """Every live process whose command line mentions ``text`` (pid → command line)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")
                state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
            except (OSError, IndexError):
                continue
            if text in cmdline and state != "Z":
                found[int(entry.name)] = cmdline
    return found


def _cancel_mid_backup(stack: Stack, api: str, guide_db, backup_dir: Path):
    """Start a manual run, cancel it while pg_dump waits for a lock; returns the cancelled run's id."""
    before = guide_db.snapshot()
    params = json.loads(json.dumps(spec(MANUAL)["parameters"]))
    params["params"]["backup_dir"] = str(backup_dir)
    params["params"]["code_policy"] = "skip"  # prefect.yaml names no code source
    blocker = psycopg2.connect(guide_db.url, application_name="e2e-lock-holder")
    try:
        with blocker.cursor() as cur:  # pg_dump locks every table it dumps before reading any
            cur.execute("LOCK TABLE tenants IN ACCESS EXCLUSIVE MODE")  # no precheck reads it
        with temporary_settings(updates={PREFECT_API_URL: api}), get_client(sync_client=True) as client:
            deployment = client.read_deployment_by_name(f"{FLOW_NAME}/{MANUAL}")
            flow_run = client.create_flow_run_from_deployment(deployment.id, parameters=params)
            dump_pid = _wait_until(
                stack,
                "pg_dump to start and wait for its lock",
                lambda: _dumping(guide_db, backup_dir),
                120,
                process="worker",
            )
            client.set_flow_run_state(flow_run.id, Cancelling(message="cancelled by the e2e test"))
            ended = _wait_until(
                stack,
                "the run to be cancelled",
                lambda: (r := client.read_flow_run(flow_run.id)).state.is_final() and r,
                60,
                process="worker",
            )
        assert ended.state.is_cancelled(), stack.explain(
            f"run ended {ended.state.name}: {ended.state.message}"
        )
        _wait_until(
            stack, f"pg_dump {dump_pid} to go", lambda: not _processes_mentioning(str(backup_dir)), 30
        )
        _wait_until(stack, "pg_dump's session to end", lambda: not _pg_dump_sessions(guide_db), 30)
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
    dumps = [
        pid for pid, cmd in _processes_mentioning(str(backup_dir)).items() if "pg_dump" in cmd.split()[0]
    ]
    waiting = guide_db.scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'safedrop pg_dump' "
        "AND datname = current_database() AND wait_event_type = 'Lock'"
    )
    return dumps[0] if dumps and waiting else None


@pytest.mark.e2e
@pytest.mark.timeout(360)
def test_deployment_runs_through_a_worker_with_the_secret_block(stack: Stack, guide_db, tmp_path):
    api = stack.env["PREFECT_API_URL"]
    password = guide_db.server.password
    before = {t: guide_db.count(t) for t in SURVIVORS}
    assert all(guide_db.exists(f"public.{t}") for t in TARGETS)
    timings: dict[str, float] = {}

    def mark(step: str) -> None:
        timings[step] = round(time.monotonic() - stack.started, 1)

    # 1. Server (fresh PREFECT_HOME), up when /api/health answers.
    port = stack.env["PREFECT_SERVER_API_PORT"]
    stack.start("server", "server", "start", "--host", "127.0.0.1", "--port", port)
    _wait_until(stack, "/api/health", lambda: _healthy(f"{api}/health"), 90, process="server")
    mark("server up")

    # 2. Work pool; its worker starts now (its start-up overlaps the deploy). No DATABASE_URL in its
    # environment (the fixture removed it), polling every second.
    stack.ok("work-pool", "create", POOL, "--type", "process")
    assert "DATABASE_URL" not in stack.env
    stack.start("worker", "worker", "start", "--pool", POOL)

    # 3. The Secret block, through the Python API against this server.
    with temporary_settings(updates={PREFECT_API_URL: api}):
        Secret(value=guide_db.url).save(SECRET_BLOCK, overwrite=True)
    mark("pool, worker started, secret")

    # 4. Deploy everything in prefect.yaml, from the repository root; then wait for the worker.
    out = " ".join(stack.ok("--no-prompt", "deploy", "--all", timeout=90).split())
    for name in (MANUAL, SCHEDULED):
        assert f"'{FLOW_NAME}/{name}' successfully" in out, stack.explain(f"{name} not deployed")
    mark("deployed")
    with temporary_settings(updates={PREFECT_API_URL: api}), get_client(sync_client=True) as client:
        _wait_until(stack, "the worker to poll the pool", lambda: _pool_ready(client), 60, process="worker")
    mark("worker ready")

    # 5. Readiness first, while a view over a target still blocks the drop: the dry run completes
    #    (it is a report) and its summary artifact names what stands in the way.
    guide_db.execute("CREATE VIEW org_credit_overview AS SELECT tenant_id FROM credit_allocations")
    stack.ok(
        "deployment", "run", f"{FLOW_NAME}/{READINESS}", "--watch", "--watch-timeout", "120", timeout=150
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
    guide_db.execute("DROP VIEW org_credit_overview")
    mark("readiness")

    # 6. Cancelled mid-backup, as from the UI's Cancel button: the worker ends the run's process, and
    #    pg_dump — held at its first lock by a session of ours — must not outlive it.
    cancelled = _cancel_mid_backup(stack, api, guide_db, tmp_path / "cancelled")
    mark("cancelled mid-backup")

    # 7. Run the manual deployment; only backup_dir changes (into tmp_path), the rest is prefect.yaml's.
    #    `--watch` waits through the approval pause; the test approves as an operator would in the UI.
    params = json.loads(json.dumps(spec(MANUAL)["parameters"]))
    params["params"]["backup_dir"] = str(tmp_path / "backups")
    params["params"]["code_policy"] = "skip"  # prefect.yaml names no code source
    run_args = ["deployment", "run", f"{FLOW_NAME}/{MANUAL}", "--params", json.dumps(params)]
    watch = stack.start("run", *run_args, "--watch", "--watch-timeout", "120")
    with temporary_settings(updates={PREFECT_API_URL: api}), get_client(sync_client=True) as client:
        paused = _wait_until(
            stack, "the run to pause", lambda: _paused_run(client, {cancelled}), 90, process="run"
        )
        mark("paused for approval")
        # Nothing dropped before the approval; the backup is already taken.
        assert all(guide_db.exists(f"public.{t}") for t in TARGETS), stack.explain("dropped before approval")
        assert list((tmp_path / "backups").glob("*.dump")), stack.explain("no backup before the approval")
        # The UI's Resume form: the pause's input schema, evidence digest pre-filled; tick `approve`.
        form = read_flow_run_input(keyset_from_paused_state(paused.state)["schema"], flow_run_id=paused.id)
        digest = form["properties"]["evidence_digest"]["default"]
        resume_flow_run(paused.id, run_input={"approve": True, "evidence_digest": digest, "approver": "e2e"})
    try:
        returncode = watch.wait(timeout=120)
    except subprocess.TimeoutExpired:
        raise AssertionError(stack.explain("`deployment run --watch` still waiting after approval")) from None
    mark("run finished")
    assert returncode == 0, stack.explain(f"deployment run --watch exited {returncode}")
    watched = " ".join(stack.log("run").split())
    assert "finished successfully in 'Completed'" in watched, stack.explain("run did not complete")

    # 8. The database: targets gone, survivors there with their rows; a backup in tmp_path.
    assert not any(guide_db.exists(f"public.{t}") for t in TARGETS), stack.explain("targets still exist")
    assert {t: guide_db.count(t) for t in SURVIVORS} == before, stack.explain("survivors changed")
    assert list((tmp_path / "backups").glob("*.dump")), stack.explain("no backup in backup_dir")
    assert not list((ROOT / "backups").glob(f"{guide_db.name}-*")), "backup written into the checkout"

    # 9. What the server holds: the run, parameters without the URL, the scheduled deployment inactive.
    with temporary_settings(updates={PREFECT_API_URL: api}), get_client(sync_client=True) as client:
        manual = client.read_deployment_by_name(f"{FLOW_NAME}/{MANUAL}")
        scheduled = client.read_deployment_by_name(f"{FLOW_NAME}/{SCHEDULED}")
        (run,) = [
            r
            for r in client.read_flow_runs(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[manual.id]))
            )
            if r.id != cancelled
        ]
        scheduled_runs = client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[scheduled.id]))
        )
    assert run.state and run.state.is_completed(), stack.explain(f"run state {run.state}")
    assert run.parameters == params, stack.explain(f"run parameters {run.parameters}")
    # The build step resolved the checkout's absolute path at deploy time.
    assert manual.pull_steps == [
        {"prefect.deployments.steps.set_working_directory": {"directory": str(ROOT)}}
    ], stack.explain(f"pull steps {manual.pull_steps}")
    for d in (manual, scheduled):
        assert d.work_pool_name == POOL and d.parameters == spec(d.name)["parameters"]
        assert d.global_concurrency_limit is not None and d.global_concurrency_limit.limit == 1
        assert d.concurrency_options is not None
        assert d.concurrency_options.collision_strategy.value == "CANCEL_NEW"
    assert manual.schedules == []
    assert [s.active for s in scheduled.schedules] == [False]
    assert scheduled_runs == [], stack.explain(f"the inactive schedule produced runs: {scheduled_runs}")

    # 10. The password never reached a log, an argv or a parameter.
    outputs = {f"{name} log": stack.log(name) for name in stack.processes}
    outputs["command output"] = "\n".join(stack.transcript)
    for where, text in outputs.items():
        if password in text:  # not `assert … in`: pytest would print the password in its explanation
            pytest.fail(f"the database password appears in the {where}")
    mark("checked")
    print(f"e2e timings (s since start): {timings}")
