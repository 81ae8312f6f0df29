"""A fleet end to end: a real Prefect server, two process workers, one PostgreSQL cluster of 20 databases.

The issue's acceptance, as one story an operator lives through:

1. `safedrop fleet run` with one database made unready (a view over a target) and ``on_error: stop``:
   the canary finishes before any other database starts; never more than ``max_parallel`` children
   Running at once (from Prefect's state history); both workers ran children; the fleet stops, names
   the blocker, and the databases not started are untouched.
2. The view is dropped. A run of the fleet *deployment* (on a worker) plans and is suspended for its
   one approval: no process, no database session held while it waits. The worker that planned is
   stopped and a new one starts elsewhere; the approval is given and the run goes on on another
   worker; it is cancelled while a child's backup waits on a lock the application holds: no child is
   left Running, the database the child worked on is whole. A second fleet run nobody approves ends
   Failed ("paused and never resumed") with no database started. Then SIGTERM to `safedrop fleet run`
   at a terminal (exit 143, one line), no child left going. Then the worker running a child is stopped
   mid-pg_dump: the child goes silent, the fleet marks it Crashed and fails naming it (exit 1), pg_dump's
   session is gone, the database whole; a new worker comes up.
3. `safedrop fleet plan` changes nothing; `safedrop fleet run` again, while the application writes to
   two of the databases still to do: the done databases are skipped (already applied), the rest
   finish, the fleet succeeds, and every write the application committed is there.
"""

from __future__ import annotations

import contextlib
import json
import re
import signal
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

import psycopg2
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    FlowRunFilter,
    FlowRunFilterName,
    FlowRunFilterTags,
)
from prefect.client.schemas.objects import StateType
from prefect.flow_runs import resume_flow_run
from prefect.input.actions import read_flow_run_input
from prefect.input.run_input import keyset_from_paused_state
from prefect.settings import PREFECT_API_URL, temporary_settings
from prefect.states import Cancelling

from safedrop.fleet.childruns import DROP_TAG, PLAN_TAG, fleet_tag
from tests.conftest import GUIDE_TEMPLATE, TARGETS, fresh_database
from tests.gitrepos import make_app_repo
from tests.helpers import SAFEDROP, application
from tests.stack import Stack, final, wait_until

N, MAX_PARALLEL, UNREADY = 20, 4, "db07"
POOL = "safedrop"
NAMES = [f"db{i:02d}" for i in range(1, N + 1)]


def env_name(name: str) -> str:
    return f"FLEET_{name.upper()}_URL"


def fleet_file(path: Path, code: str, names: list[str] = NAMES, backup_dir: str | None = None) -> Path:
    lines = [
        "migration: drop_credit_allocation_tables",
        f'code_paths: ["{code}"]',
        *([f"backup_dir: {backup_dir}"] if backup_dir else []),
        f"rollout: {{canary: [{names[0]}], max_parallel: {MAX_PARALLEL}, on_error: stop}}",
        "databases:",
        *(f"  - {{name: {n}, url_env: {env_name(n)}}}" for n in names),
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def children(client, fleet_run_id, tag: str = DROP_TAG):
    runs = client.read_flow_runs(
        flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[fleet_tag(fleet_run_id), tag])),
        limit=200,
    )
    return {r.name.rsplit("-", 1)[0]: r for r in runs}


def states_overlap(intervals: Iterable[tuple[float, float]]) -> int:
    """The most intervals open at once (``(start, end)`` pairs in seconds): how many children ran together."""
    edges = sorted((moment, step) for start, end in intervals for moment, step in ((start, 1), (end, -1)))
    most = current = 0
    for _, step in edges:
        current += step
        most = max(most, current)
    return most


def running_interval(client, run) -> tuple[float, float]:
    """When the child entered Running and when it ended, from Prefect's state history."""
    states = sorted(client.read_flow_run_states(run.id), key=lambda s: s.timestamp)
    start = next(s.timestamp for s in states if s.type == StateType.RUNNING)
    end = next(s.timestamp for s in states if s.is_final())
    return start.timestamp(), end.timestamp()


def fleet_cli(stack: Stack, fleet: Path, cwd: Path, command: str = "run") -> tuple[int, dict]:
    done = stack.command(
        [str(SAFEDROP), "fleet", command, "--fleet", str(fleet), "--json"], timeout=400, cwd=cwd
    )
    assert "Traceback" not in done.stdout + done.stderr, stack.explain("a traceback from safedrop fleet run")
    try:
        return done.returncode, json.loads(done.stdout)
    except json.JSONDecodeError:
        raise AssertionError(
            stack.explain(f"safedrop fleet run printed no report (exit {done.returncode})")
        ) from None


@pytest.mark.e2e
@pytest.mark.timeout(900)
def test_a_fleet_of_20_databases_rolls_out_on_two_workers(stack: Stack, pg, tmp_path, s3):
    api = stack.env["PREFECT_API_URL"]
    with contextlib.ExitStack() as cleanup:
        dbs = {
            n: cleanup.enter_context(contextlib.contextmanager(fresh_database)(pg, n, GUIDE_TEMPLATE))
            for n in NAMES
        }
        # The server keeps its own records in PostgreSQL, as a fleet's server should: on SQLite, two
        # workers and a fleet's API calls made it answer "database is locked", and one worker's request
        # for a child waited out the client's 60 s timeout.
        pg.psql("CREATE DATABASE prefect_server")
        try:
            _story(
                stack,
                api,
                dbs,
                tmp_path,
                pg.url("prefect_server").replace("postgresql:", "postgresql+asyncpg:"),
                s3,
            )
        finally:
            stack.stop()
            pg.psql("DROP DATABASE prefect_server WITH (FORCE)")


def _story(stack: Stack, api: str, dbs: dict, tmp_path: Path, server_db: str, s3) -> None:
    repo = make_app_repo(tmp_path / "git")  # branch cleanup: the application no longer reads the targets
    code = f"{repo.url}#cleanup"
    # every worker knows every database's URL, and reaches the bucket (a real S3-API server)
    urls = {**{env_name(n): db.url for n, db in dbs.items()}, **s3.server.env}

    # The server, the pool, the deployments (the README's command), and two workers in directories of
    # their own, each with its own backup directory (two machines), both knowing every database's URL.
    stack.start_server(  # expired approvals are failed within a second (default: every 5 s)
        PREFECT_SERVER_SERVICES_PAUSE_EXPIRATIONS_LOOP_SECONDS="1",
        PREFECT_SERVER_DATABASE_CONNECTION_URL=server_db,
        # No schedule matters to this story (the stack's scheduler looks every second for the deployment
        # tests), and no automation: the server's spare CPU goes to the children.
        PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS="60",
        PREFECT_SERVER_SERVICES_SCHEDULER_RECENT_DEPLOYMENTS_LOOP_SECONDS="60",
        PREFECT_SERVER_SERVICES_TRIGGERS_ENABLED="false",
        PREFECT_SERVER_SERVICES_LATE_RUNS_ENABLED="false",
    )
    stack.ok("work-pool", "create", POOL, "--type", "process")
    deployed = stack.command(  # fleet children started without the workspace supervisor (README)
        [sys.executable, "-m", "deployments.deploy", "--engine-python", sys.executable],
        timeout=120,
        cwd=tmp_path,
    )
    assert deployed.returncode == 0, stack.explain("deploy failed")
    backups = {worker: _start_worker(stack, worker, tmp_path, urls) for worker in ("worker-a", "worker-b")}
    with temporary_settings(updates={PREFECT_API_URL: api}), get_client(sync_client=True) as client:
        wait_until(stack, "both workers to poll the pool", lambda: _polling(client) >= set(backups), 60)

    # 1. One database unready; on_error: stop. The fleet's backups go to one prefix of a bucket.
    dbs[UNREADY].execute("CREATE VIEW credit_overview AS SELECT id FROM credit_allocations")
    prefix = f"s3://{s3.name}/fleet"
    fleet = fleet_file(tmp_path / "fleet.yaml", code, backup_dir=prefix)
    code_a, report = fleet_cli(stack, fleet, tmp_path)
    assert code_a == 3 and report["status"] == "stopped", stack.explain(json.dumps(report, indent=1))
    by_name = {d["name"]: d for d in report["databases"]}
    assert list(by_name) == NAMES
    blocker = by_name[UNREADY]
    assert blocker["status"] == "stopped" and blocker["started"], blocker
    assert any("public.credit_overview" in r for r in blocker["reasons"]), blocker
    assert any(r.startswith(f"{UNREADY}: ") and "public.credit_overview" in r for r in report["reasons"])
    done_a = [n for n, d in by_name.items() if d["status"] == "succeeded"]
    untouched = [n for n, d in by_name.items() if not d["started"]]
    assert done_a and untouched and NAMES[0] in done_a, report
    assert set(done_a) | set(untouched) | {UNREADY} == set(NAMES), report
    for name in untouched:  # the rollout stopped: never started, and said why
        assert by_name[name]["status"] == "ready" and by_name[name]["flow_run_id"] is None
        assert by_name[name]["reasons"] == [
            f"not started: the rollout stopped after {UNREADY} stopped (on_error: stop)"
        ]
    for name, db in dbs.items():
        gone = name in done_a
        assert all(db.exists(f"public.{t}") != gone for t in TARGETS), name
        if gone:  # its backup is in the bucket, under the fleet's prefix and its own name
            backup = by_name[name]["backup"]
            assert backup and backup["path"].startswith(f"{prefix}/{name}/{dbs[name].name}-"), by_name[name]
            archive = backup["path"].removeprefix(f"s3://{s3.name}/")
            assert [k for k in s3.keys() if k.startswith(f"fleet/{name}/")] == [
                archive,
                f"{archive}.manifest.json",
            ], s3.keys()
    assert {k.split("/")[1] for k in s3.keys()} == set(done_a) and not s3.uploads_in_progress()
    assert not [p for b in backups.values() if b.exists() for p in b.rglob("*") if p.is_file()]

    with temporary_settings(updates={PREFECT_API_URL: api}), get_client(sync_client=True) as client:
        runs = children(client, report["flow_run_id"])
        assert set(runs) == set(done_a) | {UNREADY}
        intervals = {name: running_interval(client, run) for name, run in runs.items()}
        table = _artifact(client, report["flow_run_id"], "drop-credit-allocation-tables-fleet")
    rows = {row["database"]: row for row in json.loads(table)}
    assert list(rows) == NAMES and rows[UNREADY]["status"] == "stopped", table
    assert all(rows[n]["backup"] and rows[n]["child run"] for n in done_a), table
    canary_end = intervals[NAMES[0]][1]
    assert all(start >= canary_end for n, (start, _) in intervals.items() if n != NAMES[0]), intervals
    assert states_overlap(intervals.values()) <= MAX_PARALLEL, intervals
    submitted = {w: sum(str(r.id) in stack.log(w) for r in runs.values()) for w in ("worker-a", "worker-b")}
    assert all(submitted.values()), f"both workers run children: {submitted}"

    # 2. The blocker fixed; the fleet deployment on a worker: one approval — given after the worker that
    #    planned was replaced by a new one — then cancelled mid-backup. Beside it, a fleet run nobody
    #    approves.
    dbs[UNREADY].execute("DROP VIEW credit_overview")
    rest = [n for n in NAMES if n not in done_a]
    held, ignored = rest[0], rest[-1]
    small = [NAMES[0], *rest[:2]]  # a done canary (skipped), and two to do
    busy = [n for n in rest if n not in small][-2:]  # for the application's writes in 3; not done before
    assert ignored in busy, rest  # (the rollout stopped with at least three databases not done)
    small_fleet = fleet_file(tmp_path / "fleet-small.yaml", code, small)
    spec = _spec(small_fleet)
    held_fleet = fleet_file(tmp_path / "fleet-held.yaml", code, [held])  # 2b, 2c: one child each
    unanswered_spec = _spec(fleet_file(tmp_path / "fleet-unanswered.yaml", code, [ignored]))
    blocker_conn = psycopg2.connect(dbs[held].url, application_name="e2e-application")
    try:
        with blocker_conn.cursor() as cur:  # pg_dump locks every table it dumps; no precheck reads tenants
            cur.execute("LOCK TABLE tenants IN ACCESS EXCLUSIVE MODE")
        with temporary_settings(updates={PREFECT_API_URL: api}), get_client(sync_client=True) as client:
            deployment = client.read_deployment_by_name("drop-deprecated-tables-fleet/fleet")
            fleet_run = client.create_flow_run_from_deployment(
                deployment.id, parameters={"params": {"fleet": spec}}
            )
            unanswered = client.create_flow_run_from_deployment(
                deployment.id, parameters={"params": {"fleet": unanswered_spec, "approval_timeout_s": 10}}
            )
            waiting = wait_until(
                stack,
                "the fleet run to be suspended for its approval",
                lambda: _suspended(client, fleet_run.id),
                180,
            )
            # Waiting for the operator holds nothing: its process exits, no database session is left.
            wait_until(
                stack,
                "the suspended fleet run's process to exit",
                lambda: not _processes_of(fleet_run.id),
                60,
            )
            assert not [n for n in small if _safedrop_sessions(dbs[n])], "a suspended fleet holds a session"
            # The worker that planned goes away (a deploy, a reboot); another, on a machine of its own,
            # comes up. The approval is given meanwhile, and the run goes on wherever a worker takes it.
            wait_until(  # (the other fleet's plan done: stopping its worker would crash it)
                stack,
                "the unanswered fleet run to be suspended too",
                lambda: (r := client.read_flow_run(unanswered.id)).state.is_paused() or r.state.is_final(),
                180,
            )
            planner = next(w for w in ("worker-a", "worker-b") if str(fleet_run.id) in stack.log(w))
            stack.stop_one(planner)
            _start_worker(stack, "worker-c", tmp_path, urls)
            wait_until(stack, "worker-c to poll the pool", lambda: "worker-c" in _polling(client), 60)
            plan = _artifact(client, fleet_run.id, "drop-credit-allocation-tables-fleet-plan")
            assert all(n in plan for n in small) and "already-applied" in plan, plan
            form = read_flow_run_input(
                keyset_from_paused_state(waiting.state)["schema"], flow_run_id=waiting.id
            )
            digest = form["properties"]["fleet_digest"]["default"]
            assert f"`{digest}`" in plan
            raw = client.read_flow_run_input(
                waiting.id, keyset_from_paused_state(waiting.state)["description"]
            )
            shown = json.loads(raw) if raw.startswith('"') else raw  # the form's text, as the UI shows it
            assert shown.endswith(  # what nobody answering means, said before it happens
                "\n\nNo answer within 3,600 s: no database is started. The run then ends Failed with "
                'Prefect\'s words "The flow was paused and never resumed."\n'
            ), shown[-300:]
            resume_flow_run(
                waiting.id, run_input={"approve": True, "fleet_digest": digest, "approver": "e2e"}
            )
            wait_until(
                stack,
                f"{held}'s backup to wait on the application's lock",
                lambda: _dump_waiting(dbs[held]),
                180,
            )
            resumed_on = [w for w in stack.processes if w != planner and str(fleet_run.id) in stack.log(w)]
            assert resumed_on and planner not in resumed_on, stack.explain("where the resumed fleet ran")
            client.set_flow_run_state(fleet_run.id, Cancelling(message="cancelled by the e2e test"))
            ended = final(stack, client, fleet_run.id, 120, "server")
            assert ended.state.type == StateType.CANCELLED, stack.explain(
                f"fleet run ended {ended.state.name}"
            )

            def all_children_final():
                runs = client.read_flow_runs(
                    flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[fleet_tag(fleet_run.id)])),
                    limit=200,
                )
                return runs and all(r.state.is_final() for r in runs) and runs

            runs = wait_until(stack, "every child of the cancelled fleet to end", all_children_final, 120)
            assert not [r.name for r in runs if r.state.type == StateType.RUNNING]
            held_run = next(r for r in runs if r.name == f"{held}-drop")
            assert held_run.state.type == StateType.CANCELLED, held_run.state

            # Nobody answered the other fleet: Prefect ended it, said what, and nothing was started.
            expired = final(stack, client, unanswered.id, 120, "server")
            assert expired.state.type == StateType.FAILED, expired.state
            assert expired.state.message == "The flow was paused and never resumed.", expired.state
            assert not children(client, unanswered.id), "an unapproved fleet started a database's drop"
            assert list(children(client, unanswered.id, PLAN_TAG)) == [ignored]
        wait_until(stack, "pg_dump's session to go", lambda: not _dump_waiting(dbs[held], any_state=True), 60)

        # 2b. At a terminal: SIGTERM to `safedrop fleet run` while a child's backup waits on the lock.
        cli = _fleet_run_in_background(stack, held_fleet, tmp_path)
        try:
            wait_until(stack, f"{held}'s backup to wait again", lambda: _dump_waiting(dbs[held]), 180)
            cli.send_signal(signal.SIGTERM)
            out, err = cli.communicate(timeout=60)
        finally:
            if cli.poll() is None:
                cli.kill()
        stack.transcript.append(f"$ safedrop fleet run (SIGTERM)  # exit {cli.returncode}\n{out}{err}")
        assert cli.returncode == 143 and "Traceback" not in out + err, stack.explain("SIGTERM")
        last = err.strip().splitlines()[-1]
        assert re.fullmatch(
            r"safedrop: interrupted; the fleet run stopped and \d+ running database run\(s\) were cancelled; "
            "each database's report says what it did — run the fleet again to finish",
            last,
        ), last
        with temporary_settings(updates={PREFECT_API_URL: api}), get_client(sync_client=True) as client:
            wait_until(stack, "no child left going after SIGTERM", lambda: not _children_going(client), 120)
        wait_until(stack, "pg_dump's session to go", lambda: not _dump_waiting(dbs[held], any_state=True), 60)

        # 2c. The machine running a child goes away mid-backup (power lost: its worker and the child's
        #     process killed, nothing told to the server): the child goes silent, the fleet marks it
        #     Crashed and fails naming it, pg_dump's session goes with it, the database is whole; a new
        #     worker comes up.
        # (a minute of silence: the shortest the fleet takes)
        cli = _fleet_run_in_background(stack, held_fleet, tmp_path, "--json", "--child-silence", "1m")
        try:
            wait_until(stack, f"{held}'s backup to wait once more", lambda: _dump_waiting(dbs[held]), 180)
            with temporary_settings(updates={PREFECT_API_URL: api}), get_client(sync_client=True) as client:
                (child,) = [r for r in _named(client, f"{held}-drop") if r.state.type == StateType.RUNNING]
            host = _worker_running(stack, child.id)
            stack.kill_one(host)
            out, err = cli.communicate(timeout=180)
        finally:
            if cli.poll() is None:
                cli.kill()
        stack.transcript.append(
            f"$ safedrop fleet run (its worker {host} stopped)  # exit {cli.returncode}\n{err}"
        )
        assert "Traceback" not in out + err, stack.explain("a traceback after the worker went")
        lost = json.loads(out)
        held_report = next(d for d in lost["databases"] if d["name"] == held)
        assert cli.returncode == 1 and lost["status"] == "failed", stack.explain(json.dumps(lost, indent=1))
        assert held_report["status"] == "failed" and held_report["flow_run_id"] == str(child.id), held_report
        why = " ".join(held_report["reasons"])
        assert "no heartbeat from its run for 60 s: its worker or machine went away mid-run" in why, (
            held_report
        )
        wait_until(stack, "pg_dump's session to go", lambda: not _dump_waiting(dbs[held], any_state=True), 60)
        _start_worker(stack, "worker-d", tmp_path, urls)
    finally:
        blocker_conn.rollback()
        blocker_conn.close()
    assert all(dbs[held].exists(f"public.{t}") for t in TARGETS)
    assert all(dbs[ignored].exists(f"public.{t}") for t in TARGETS)

    # 3. The plan at a terminal (nothing changed), then the same fleet again: it finishes the rest and
    #    skips the done ones.
    plan_code, plan = fleet_cli(stack, small_fleet, tmp_path, "plan")
    assert plan_code == 0 and plan["status"] == "ready" and plan["dry_run"], stack.explain("fleet plan")
    # (the cancelled runs' neighbours may have finished before the cancellation: their targets are gone)
    done_now = {n for n in small if not dbs[n].exists(f"public.{TARGETS[0]}")}
    assert held not in done_now and set(done_a) & set(small) <= done_now
    assert {d["name"]: d["status"] for d in plan["databases"]} == {
        n: "already-applied" if n in done_now else "ready" for n in small
    }
    # 3. Resume: the same fleet again finishes the rest and skips the done ones — while the application
    #    works on two of the databases still to do; not one of its committed writes may be lost.
    before = {n: dbs[n].scalar("SELECT count(*) FROM credit_usage") for n in busy}
    with contextlib.ExitStack() as apps:
        traffic = {n: apps.enter_context(application(dbs[n], tmp_path, "--interval-ms", "20")) for n in busy}
        code_b, report_b = fleet_cli(stack, fleet, tmp_path)
    for name in busy:
        assert traffic[name]["errors"] == {}, (name, traffic[name])
        inserted = dbs[name].scalar("SELECT count(*) FROM credit_usage") - before[name]
        assert inserted == traffic[name]["ops"]["credit_usage insert"] > 0, (name, traffic[name])
    assert code_b == 0 and report_b["status"] == "succeeded", stack.explain(json.dumps(report_b, indent=1))
    statuses = {d["name"]: d["status"] for d in report_b["databases"]}
    assert {n for n, s in statuses.items() if s == "already-applied"} >= set(done_a), statuses
    assert statuses[UNREADY] == "succeeded" and statuses[held] == "succeeded", statuses
    assert set(statuses.values()) <= {"succeeded", "already-applied"}
    assert not any(db.exists(f"public.{t}") for db in dbs.values() for t in TARGETS)


def _fleet_run_in_background(stack: Stack, fleet: Path, cwd: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [str(SAFEDROP), "fleet", "run", "--fleet", str(fleet), *args],
        env=stack.env,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _start_worker(stack: Stack, worker: str, tmp_path: Path, urls: dict[str, str]) -> Path:
    """A process worker in a directory of its own (another machine), with its own backup directory and
    ``urls`` (every database's URL, the bucket's endpoint and keys) in its environment; returns the
    backup directory."""
    home = tmp_path / worker
    home.mkdir()
    backups = home / "backups"
    stack.start(
        worker,
        "worker",
        "start",
        "--pool",
        POOL,
        "--name",
        worker,
        cwd=home,
        SAFEDROP_BACKUP_DIR=str(backups),
        **urls,
    )
    return backups


def _polling(client) -> set[str]:
    """The workers the server has heard from lately (ONLINE)."""
    return {w.name for w in client.read_workers_for_work_pool(POOL) if w.status.value == "ONLINE"}


def _processes_of(flow_run_id) -> list[int]:
    """Every live process that runs this flow run (a worker gives it PREFECT__FLOW_RUN_ID)."""
    marker = f"PREFECT__FLOW_RUN_ID={flow_run_id}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and marker in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def _worker_running(stack: Stack, flow_run_id) -> str:
    """The worker whose process tree runs the flow run — not one that merely logged its id (a worker
    that lost the race to claim a run logs "Aborted submission of flow run …" too)."""
    workers = {p.pid: w for w, p in stack.processes.items() if w.startswith("worker") and p.poll() is None}
    for pid in _processes_of(flow_run_id):
        while pid > 1:
            if pid in workers:
                return workers[pid]
            try:
                status = Path(f"/proc/{pid}/status").read_text()
            except OSError:
                break
            pid = int(next(line.split()[1] for line in status.splitlines() if line.startswith("PPid:")))
    raise AssertionError(stack.explain(f"no worker runs flow run {flow_run_id}"))


def _safedrop_sessions(db) -> int:
    return db.scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'safedrop%' "
        "AND datname = current_database() AND pid <> pg_backend_pid()"  # (this query's is named so too)
    )


def _named(client, name: str):
    return client.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[name])))


def _children_going(client) -> list[str]:
    """Every fleet child on the server that has not ended."""
    runs = client.read_flow_runs(
        flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[DROP_TAG])), limit=200
    )
    return [r.name for r in runs if not r.state.is_final()]


def _spec(path: Path) -> dict:
    from safedrop.fleet.fleetfile import load_fleet

    return load_fleet(path).model_dump(mode="json")


def _suspended(client, flow_run_id):
    run = client.read_flow_run(flow_run_id)
    if run.state.is_final():
        raise AssertionError(f"the fleet run ended {run.state.name} before its approval: {run.state.message}")
    return run if run.state.is_paused() else None


def _artifact(client, flow_run_id, key: str) -> str:
    artifacts = client.read_artifacts(
        artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
    )
    newest = max((a for a in artifacts if a.key == key), key=lambda a: a.created)  # re-published: the last
    return str(newest.data)


def _dump_waiting(db, any_state: bool = False) -> bool:
    wait = "" if any_state else " AND wait_event_type = 'Lock'"
    return bool(
        db.scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'safedrop pg_dump' "
            f"AND datname = current_database(){wait}"
        )
    )
