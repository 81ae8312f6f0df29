"""Benchmark: what a whole `safedrop run` costs the application that keeps working meanwhile.

    .venv/bin/python bench/live_traffic.py [--baseline 20] [--hold 5] [--interval-ms 5]

On a throwaway PostgreSQL holding the guide's schema with volume (1,000 tenants and credits, 100,000
credit_usage rows, targets of 20,000 rows dropped with --allow-nonempty), the application's workload
(tests/workload.py, a process of its own: credit_usage inserts, credits updates, tenants reads, each
every --interval-ms on its own connection) runs

1. alone, for --baseline seconds: the reference;
2. while `safedrop run` (the console script, as an operator runs it) does the whole job;
3. the same, while a long transaction holds credits — the targets' hot parent — until the drop has
   waited for it --hold seconds.

Printed per operation: p50, p99 and worst latency, and errors by SQLSTATE; the ratios of (2) and (3)
against (1) in the same run; the run's own lock figures from its report (how long the targets were
locked against writes — the content recheck against the backup's checksums included — and against
every query). Asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psycopg2

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from lock_safety import build_templates, fresh_copy  # noqa: E402

from safedrop.pg.pgserver import LocalPostgres  # noqa: E402

SAFEDROP = Path(sys.executable).parent / "safedrop"


def workload(url: str, report: Path, interval_ms: float) -> subprocess.Popen:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.workload",
            url,
            str(report),
            "--interval-ms",
            str(interval_ms),
            "--keys",
            "1000",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None and process.stdout.readline().strip() == "ready"
    return process


def finish(process: subprocess.Popen, report: Path) -> dict:
    process.send_signal(signal.SIGTERM)
    process.wait(60)
    return json.loads(report.read_text())


def safedrop_run(url: str, work: Path, env: dict[str, str]) -> tuple[dict, float]:
    started = time.monotonic()
    result = subprocess.run(
        [
            str(SAFEDROP),
            "run",
            "--code-policy",
            "skip",
            "--allow-nonempty",
            "--backup-dir",
            str(work / "b"),
            "--json",
        ],
        env={**env, "DATABASE_URL": url},
        cwd=work,
        capture_output=True,
        text=True,
        timeout=600,
    )
    elapsed = time.monotonic() - started
    try:
        return json.loads(result.stdout), elapsed
    except json.JSONDecodeError:
        return {"status": f"no report (exit {result.returncode}): {result.stderr[-300:]}"}, elapsed


def scenario(
    pg: LocalPostgres, work: Path, env: dict[str, str], interval_ms: float, hold_s: float | None
) -> dict:
    url = fresh_copy(pg, "bench_full", "bench_traffic")
    report_file = work / "workload.json"
    app = workload(url, report_file, interval_ms)
    holder = None
    if hold_s:
        holder = psycopg2.connect(url, application_name="bench-long-report")
        with holder.cursor() as cur:
            cur.execute("SELECT * FROM credits LIMIT 1")  # BEGIN …; held open
        threading.Thread(
            target=release_after_the_drop_waited, args=(url, holder, hold_s), daemon=True
        ).start()
    report, elapsed = safedrop_run(url, work, env)
    traffic = finish(app, report_file)
    if holder is not None:
        holder.close()
    return {"report": report, "elapsed": elapsed, "traffic": traffic}


def release_after_the_drop_waited(url: str, holder, hold_s: float) -> None:
    """Commit the long transaction once the drop has been waiting for credits for ``hold_s``."""
    observer = psycopg2.connect(url, application_name="bench-observer")
    observer.autocommit = True
    deadline = time.monotonic() + 600
    with observer.cursor() as cur:
        while time.monotonic() < deadline:
            cur.execute(
                "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid WHERE NOT l.granted "
                "AND l.relation = 'credits'::regclass AND a.application_name = 'safedrop'"
            )
            if cur.fetchone()[0]:
                break
            time.sleep(0.01)
    observer.close()
    time.sleep(hold_s)
    holder.commit()


def baseline(pg: LocalPostgres, work: Path, interval_ms: float, seconds: float) -> dict:
    url = fresh_copy(pg, "bench_full", "bench_traffic")
    report_file = work / "workload.json"
    app = workload(url, report_file, interval_ms)
    time.sleep(seconds)
    return finish(app, report_file)


def print_traffic(label: str, traffic: dict, reference: dict | None) -> None:
    print(f"  {label}")
    for kind, lat in sorted(traffic["latency_ms"].items()):
        ratio = ""
        if reference and kind in reference["latency_ms"]:
            ref = reference["latency_ms"][kind]
            ratio = (
                f"   p50 {lat['p50'] / ref['p50']:.2f}x, p99 {lat['p99'] / ref['p99']:.2f}x of the baseline"
            )
        errors = sum(n for k, n in traffic["errors"].items() if k.startswith(kind))
        print(
            f"    {kind:<22} ops {traffic['ops'][kind]:>6}  p50 {lat['p50']:7.2f} ms  p99 {lat['p99']:8.2f} ms  "
            f"worst {lat['max']:8.1f} ms  errors {errors}{ratio}"
        )
    if traffic["errors"]:
        print(f"    errors by SQLSTATE: {traffic['errors']}")


def print_run(result: dict) -> None:
    report = result["report"]
    drop = report.get("drop") or {}
    print(
        f"  safedrop run: {report.get('status')} in {result['elapsed']:.1f} s (wall, embedded Prefect); "
        f"drop attempts {drop.get('attempts')}, lock timeouts {drop.get('lock_timeouts')}; targets locked "
        f"{drop.get('writes_blocked_ms')} ms against writes (content recheck included), "
        f"{drop.get('all_blocked_ms')} ms against every query"
    )


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--baseline", type=float, default=20, help="seconds of the workload alone")
    parser.add_argument("--hold", type=float, default=5, help="seconds the long transaction holds credits")
    parser.add_argument("--interval-ms", type=float, default=5, help="pause between one client's operations")
    args = parser.parse_args(argv)
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="safedrop-bench-traffic-") as tmp, LocalPostgres() as pg:
        work = Path(tmp)
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
        env.update(PREFECT_HOME=str(work / "prefect-home"), PREFECT_SERVER_ANALYTICS_ENABLED="false")
        build_templates(pg, 20_000)
        safedrop_run(fresh_copy(pg, "bench_full", "bench_warm"), work, env)  # Prefect's first start, untimed
        print(f"PostgreSQL on port {pg.port}; workload every {args.interval_ms:g} ms per operation kind")
        reference = baseline(pg, work, args.interval_ms, args.baseline)
        print_traffic(f"the application alone, {args.baseline:g} s (the baseline)", reference, None)
        plain = scenario(pg, work, env, args.interval_ms, None)
        print_traffic("the application while `safedrop run` works", plain["traffic"], reference)
        print_run(plain)
        held = scenario(pg, work, env, args.interval_ms, args.hold)
        print_traffic(
            f"the same, while a long transaction holds credits until the drop waited {args.hold:g} s for it",
            held["traffic"],
            reference,
        )
        print_run(held)
    print(f"\nfinished in {time.monotonic() - began:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
