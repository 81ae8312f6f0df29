"""Benchmark: the `safedrop` command line's wall time against the same job done by hand.

    .venv/bin/python bench/cli_speed.py              # medians of 5
    .venv/bin/python bench/cli_speed.py --repeat 9

Starts a throwaway PostgreSQL, seeds the demo database (sql/demo/schema.sql: the guide's ten tables)
once per round from a template, and times, as wall clock from the outside, each a new process:

- the hand-run job the guide describes, with the raw tools: psql row counts and inbound foreign keys,
  ``pg_dump -Fc``, ``pg_restore --list`` of the archive, ``psql -1`` DROP … CASCADE;
- ``safedrop plan`` (prechecks only) and ``safedrop run`` (prechecks, verified backup, lock-safe
  drop, verification) as a user runs them: no Prefect server configured, ``--code-policy skip``
  (the hand-run job does not scan code either);
- once, for the record, a two-line Prefect flow run the same way: what any command pays when it runs
  a flow through Prefect without a server (Prefect starts a temporary local server per process).

Targets (issue 19): plan ≤ 0.5 s; run ≤ the hand-run job + 0.5 s (no Prefect on the plain path). The first round is reported apart (a
cold start: bytecode compiled, files not cached). Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from safedrop.pg.database import database_from_url  # noqa: E402
from safedrop.pg.pgserver import LocalPostgres, find_server_bin  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SAFEDROP = Path(sys.executable).with_name("safedrop")
TEMPLATE = "demo_template"
TARGETS = ["credit_allocation_transactions", "credit_allocations"]
INBOUND_FKS = (
    "SELECT conname, conrelid::regclass FROM pg_constraint WHERE contype = 'f' "
    "AND confrelid IN ('public.credit_allocations'::regclass, 'public.credit_allocation_transactions'::regclass) "
    "AND conrelid NOT IN ('public.credit_allocations'::regclass, 'public.credit_allocation_transactions'::regclass)"
)
PLAN_TARGET_S, RUN_EXTRA_S = 0.5, 0.5
TRIVIAL_FLOW = "from prefect import flow\nflow(lambda: 1, name='trivial')()\n"


def timed(fn: Callable[[], None]) -> float:
    start = time.monotonic()
    fn()
    return time.monotonic() - start


def check(argv: list[str], env: dict[str, str], ok: tuple[int, ...] = (0,)) -> None:
    result = subprocess.run(argv, env=env, capture_output=True, text=True)
    if result.returncode not in ok:
        raise SystemExit(f"{' '.join(argv[:2])} exited {result.returncode}:\n{result.stdout}{result.stderr}")


def hand_run_job(url: str, archive: Path, bindir: Path) -> Callable[[], None]:
    """What the guide's npm scripts do, with the raw tools and no checks between them."""
    db = database_from_url(url)
    env = {**os.environ, **db.libpq_env("bench")}
    psql = [str(bindir / "psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"]
    counts = " UNION ALL ".join(f"SELECT '{t}', count(*) FROM public.{t}" for t in TARGETS)
    drop = "DROP TABLE " + ", ".join(f"public.{t}" for t in TARGETS) + " CASCADE"

    def job() -> None:
        check([*psql, "-c", counts, "-c", INBOUND_FKS], env)
        check([str(bindir / "pg_dump"), "-Fc", "-f", str(archive)], env)
        check([str(bindir / "pg_restore"), "--list", str(archive)], env)
        check([*psql, "-1", "-c", drop], env)

    return job


def console_env(work: Path) -> dict[str, str]:
    """A user's shell: no Prefect server configured, homes of the benchmark's own, bytecode cached as
    Python does by default (a CI shell's PYTHONDONTWRITEBYTECODE would compile every module each time)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("PREFECT_API") and k not in ("DATABASE_URL", "PYTHONDONTWRITEBYTECODE")
    }
    env.update(
        PREFECT_HOME=str(work / "prefect-home"),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        XDG_STATE_HOME=str(work / "state"),
        SAFEDROP_BACKUP_DIR=str(work / "backups"),
    )
    return env


def safedrop(command: str, url: str, env: dict[str, str], ok: tuple[int, ...] = (0,)) -> Callable[[], None]:
    return lambda: check([str(SAFEDROP), command, "--database-url", url, "--code-policy", "skip"], env, ok)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    bindir = find_server_bin()
    times: dict[str, list[float]] = {"hand-run job": [], "safedrop plan": [], "safedrop run": []}
    with tempfile.TemporaryDirectory(prefix="safedrop-bench-cli-") as tmp, LocalPostgres() as pg:
        work = Path(tmp)
        env = console_env(work)
        pg.psql(f"CREATE DATABASE {TEMPLATE}")
        pg.psql((ROOT / "sql" / "demo" / "schema.sql").read_text(), database=TEMPLATE)
        for i in range(args.repeat + 1):  # round 0 is the cold start
            hand, ours = f"hand_{i}", f"ours_{i}"
            for name in (hand, ours):
                pg.psql(f"CREATE DATABASE {name} TEMPLATE {TEMPLATE}")
            round_times = {
                "hand-run job": timed(hand_run_job(pg.url(hand), work / f"{hand}.dump", bindir)),
                "safedrop plan": timed(safedrop("plan", pg.url(ours), env)),
                "safedrop run": timed(safedrop("run", pg.url(ours), env)),
            }
            for name in (hand, ours):
                pg.psql(f"DROP DATABASE {name}")
            if i == 0:
                cold = round_times
                continue
            for key, seconds in round_times.items():
                times[key].append(seconds)
        trivial = timed(lambda: check([sys.executable, "-c", TRIVIAL_FLOW], env))

    median = {key: statistics.median(values) for key, values in times.items()}
    hand = median["hand-run job"]
    print(f"demo database (10 tables), medians of {args.repeat} rounds, wall clock per process:")
    for key, seconds in median.items():
        spread = f"{min(times[key]):.2f}–{max(times[key]):.2f}"
        print(f"  {key:<15} {seconds:6.2f} s  ({spread} s; cold first round {cold[key]:.2f} s)")
    plan, run = median["safedrop plan"], median["safedrop run"]
    print(
        f"  plan: {plan:.2f} s — target ≤ {PLAN_TARGET_S} s: {'met' if plan <= PLAN_TARGET_S else 'MISSED'}"
    )
    print(
        f"  run: {run / hand:.1f}× the hand-run job, +{run - hand:.2f} s — target ≤ hand-run + {RUN_EXTRA_S} s: "
        f"{'met' if run <= hand + RUN_EXTRA_S else 'MISSED'}"
    )
    print(f"  for the record: a two-line Prefect flow run without a server takes {trivial:.2f} s")


if __name__ == "__main__":
    main()
