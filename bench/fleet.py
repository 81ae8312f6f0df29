"""Benchmark: a fleet rollout's wall time against the ideal, and what each child run costs to orchestrate.

    .venv/bin/python bench/fleet.py                       # 12 databases, max_parallel 4, 2 workers
    .venv/bin/python bench/fleet.py --databases 8 --rows 2000000   # children with real work

Starts a throwaway PostgreSQL holding N copies of the demo database, a real `prefect server`, the
`safedrop` process pool with two workers (each with every database's URL in its environment), deploys
with `python -m deployments.deploy`, and times `safedrop fleet run` (canary: the first database) from
the outside. Then, from Prefect's state history of each child run:

- **ideal** = the canary's duration + the other children's summed durations / max_parallel, where a
  child's duration is its time Running (what the database work costs, the engine included);
- **ratio** = fleet wall time / ideal (goal ≤ 1.25);
- **per-child orchestration overhead**: created → Running (the worker's poll, the process start,
  the flow's import), and ended → the next child created (the fleet run's poll).

Measured here (2 cores, 2 workers, the server on PostgreSQL, deployed with --engine-python):
5 databases × 40M extra rows (2.7 GB each), max_parallel 2: ratio 1.19 (children ~25 s); 12 demo
databases, max_parallel 4: 3.3 (children ~3 s). Each child costs ~2.8 s from created to Running (the
worker's poll ~0.5–0.9 s, then a new Python process and Prefect's engine ~1.8 s; ~4 s when four
start on two cores) plus ~0.7 s until the fleet sees it end and creates the next: a fixed ~3.5 s a
child, so the goal holds for databases whose backup takes ~20 s or more. Through Prefect's workspace
supervisor (--supervisor) a child takes ~1 s more to start (1.22 on the 40M case); on a SQLite server
the fleet's reaction varied 0.7–2 s and a worker once waited out the client's 60 s timeout.

Prints figures; asserts nothing. The workers poll every second (PREFECT_WORKER_QUERY_SECONDS=1; the
default 10 s would add ~5 s to each child's start).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from safedrop import SQL_DIR  # noqa: E402
from safedrop.pg.pgserver import LocalPostgres  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(what: str, check, deadline_s: float) -> None:
    deadline = time.monotonic() + deadline_s
    while not check():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.25)


def healthy(url: str) -> bool:
    import httpx

    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def pool_ready(api: str) -> bool:
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: api}), get_client(sync_client=True) as client:
        return client.read_work_pool("safedrop").status.value == "READY"


def child_timings(api: str, fleet_run_id: str) -> list[dict]:
    """Each child's created, Running and end times (epoch seconds), from its state history."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags
    from prefect.client.schemas.objects import StateType
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from safedrop.fleet.childruns import fleet_tag

    rows = []
    with temporary_settings(updates={PREFECT_API_URL: api}), get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[fleet_tag(fleet_run_id)])), limit=200
        )
        for run in runs:
            states = sorted(client.read_flow_run_states(run.id), key=lambda s: s.timestamp)
            pending = next(s.timestamp for s in states if s.type == StateType.PENDING)
            running = next(s.timestamp for s in states if s.type == StateType.RUNNING)
            end = next(s.timestamp for s in states if s.is_final())
            rows.append(
                {
                    "name": run.name.rsplit("-", 1)[0],
                    "created": states[0].timestamp.timestamp(),
                    "pending": pending.timestamp(),
                    "running": running.timestamp(),
                    "end": end.timestamp(),
                }
            )
    return sorted(rows, key=lambda r: r["created"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--databases", type=int, default=12)
    parser.add_argument("--max-parallel", type=int, default=4)
    parser.add_argument(
        "--rows",
        type=int,
        default=0,
        help="extra rows in each database's credit_transactions (a survivor the whole-database backup "
        "dumps): gives each child real work",
    )
    parser.add_argument(
        "--supervisor",
        action="store_true",
        help="deploy without --engine-python: each child starts through Prefect's workspace supervisor",
    )
    args = parser.parse_args()
    names = [f"db{i:02d}" for i in range(1, args.databases + 1)]

    tmp = Path(tempfile.mkdtemp(prefix="safedrop-bench-fleet-"))
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_") and k != "DATABASE_URL"}
    env.update(
        PREFECT_HOME=str(tmp / "prefect-home"),
        PREFECT_API_URL=api,
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_UI_ENABLED="false",
        PREFECT_WORKER_QUERY_SECONDS="1",
    )
    processes: list[subprocess.Popen] = []
    with LocalPostgres() as pg:
        pg.psql("CREATE DATABASE demo_template")
        pg.psql((SQL_DIR / "demo" / "schema.sql").read_text(), database="demo_template")
        if args.rows:  # (without the index and the foreign-key checks while loading: 3× faster)
            pg.psql(
                "SET session_replication_role = replica; DROP INDEX credit_transactions_credit_id_idx; "
                "INSERT INTO credit_transactions (credit_id, amount, kind) SELECT 1 + g % 25, g % 17 + 1, "
                f"'grant' FROM generate_series(1, {args.rows}) g; "
                "CREATE INDEX credit_transactions_credit_id_idx ON credit_transactions (credit_id); "
                "VACUUM ANALYZE",
                database="demo_template",
            )
        for name in names:
            pg.psql(f"CREATE DATABASE {name} TEMPLATE demo_template")
        pg.psql("CREATE DATABASE prefect_server")  # the server's own records (SQLite locks under workers)
        server_db = pg.url("prefect_server").replace("postgresql:", "postgresql+asyncpg:")
        urls = {f"FLEET_{n.upper()}_URL": pg.url(n) for n in names}
        try:
            log = (tmp / "server.log").open("wb")
            processes.append(
                subprocess.Popen(
                    [BIN / "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                    env={**env, "PREFECT_SERVER_DATABASE_CONNECTION_URL": server_db},
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
            wait_for("the Prefect server", lambda: healthy(f"{api}/health"), 90)
            subprocess.run(
                [BIN / "prefect", "work-pool", "create", "safedrop", "--type", "process"],
                env=env,
                check=True,
                capture_output=True,
            )
            engine = ["--engine-python", sys.executable] if not args.supervisor else []
            subprocess.run(
                [sys.executable, "-m", "deployments.deploy", *engine],
                env=env,
                check=True,
                capture_output=True,
                cwd=ROOT,
            )
            for worker in ("worker-a", "worker-b"):
                (tmp / worker).mkdir()
                log = (tmp / f"{worker}.log").open("wb")
                processes.append(
                    subprocess.Popen(
                        [BIN / "prefect", "worker", "start", "--pool", "safedrop", "--name", worker],
                        env={**env, **urls, "SAFEDROP_BACKUP_DIR": str(tmp / worker / "backups")},
                        cwd=tmp / worker,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )
                )
            wait_for("a worker to poll the pool", lambda: pool_ready(api), 60)
            fleet = tmp / "fleet.yaml"
            fleet.write_text(
                "migration: drop_credit_allocation_tables\ncode_paths: []\ncode_policy: skip\n"
                f"rollout: {{canary: [{names[0]}], max_parallel: {args.max_parallel}, on_error: stop}}\n"
                "databases:\n"
                + "".join(f"  - {{name: {n}, url_env: FLEET_{n.upper()}_URL}}\n" for n in names)
            )
            start, started_at = time.monotonic(), time.time()
            done = subprocess.run(
                [BIN / "safedrop", "fleet", "run", "--fleet", str(fleet), "--json"],
                env=env,
                capture_output=True,
                text=True,
                cwd=tmp,
            )
            wall, ended_at = time.monotonic() - start, time.time()
            try:
                report = json.loads(done.stdout)
            except json.JSONDecodeError:
                raise SystemExit(
                    f"safedrop fleet run exited {done.returncode}:\n{done.stdout}{done.stderr}"
                ) from None
            if report["status"] != "succeeded":
                raise SystemExit(f"the fleet ended {report['status']}: {report['reasons']}")
            rows = child_timings(api, report["flow_run_id"])
        finally:
            for process in reversed(processes):
                try:
                    os.killpg(process.pid, 15)
                    process.wait(timeout=20)
                except (ProcessLookupError, subprocess.TimeoutExpired):
                    os.killpg(process.pid, 9)
            shutil.rmtree(tmp, ignore_errors=True)  # the server's database and the backups

    durations = {r["name"]: r["end"] - r["running"] for r in rows}
    canary = durations[names[0]]
    others = [d for n, d in durations.items() if n != names[0]]
    ideal = canary + sum(others) / args.max_parallel
    to_running = [r["running"] - r["created"] for r in rows]
    ends = sorted(r["end"] for r in rows)
    # the fleet's reaction: from a child's end to the next child's creation (only when one was waiting)
    react = []
    for row in rows[1:]:
        earlier_ends = [e for e in ends if e <= row["created"]]
        if earlier_ends:
            react.append(row["created"] - earlier_ends[-1])
    first_created = min(r["created"] for r in rows)
    last_end = max(r["end"] for r in rows)
    busiest = max(sum(1 for r in rows if r["running"] <= t < r["end"]) for t in (r["running"] for r in rows))
    extra = f", {args.rows:,} extra rows each" if args.rows else ""
    how = "Prefect's workspace supervisor" if args.supervisor else "deploy --engine-python"
    print(
        f"fleet of {len(names)} databases{extra}, max_parallel {args.max_parallel}, 2 process workers, "
        f"2 cores; children started through {how}"
    )
    print(f"  safedrop fleet run wall time      {wall:7.1f} s")
    print(
        f"  ideal (canary + rest / parallel)  {ideal:7.1f} s   (canary {canary:.1f} s, others' sum {sum(others):.1f} s)"
    )
    print(f"  ratio                             {wall / ideal:7.2f}    (goal ≤ 1.25)")
    print(f"  child Running time, median        {statistics.median(durations.values()):7.1f} s")
    print(
        f"  per child: created → Running      {statistics.median(to_running):7.1f} s median, {max(to_running):.1f} s max"
    )
    print(
        f"  … of which created → Pending      {statistics.median(r['pending'] - r['created'] for r in rows):7.1f} s "
        "median (a worker's poll and submission)"
    )
    print(
        f"  … and Pending → Running           {statistics.median(r['running'] - r['pending'] for r in rows):7.1f} s "
        "median (the process start, imports, Prefect's engine)"
    )
    print(f"  per child: an end → next created  {statistics.median(react):7.2f} s median" if react else "")
    print(f"  fleet start → first child created {first_created - started_at:7.1f} s")
    print(f"  last child ended → fleet done     {ended_at - last_end:7.1f} s")
    print(f"  most children Running at once     {busiest:7d}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
