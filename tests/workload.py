"""An application's traffic, as a process of its own: what a run of safedrop must not disturb.

    python -m tests.workload URL REPORT.json [--interval-ms 5] [--update-targets]

One thread (own connection, autocommit, like a pooled web request) per kind of operation:
inserts into credit_usage (whose foreign-key checks lock tenants, then credits), updates of credits,
reads of tenants, and with ``--update-targets`` updates of credit_allocations rows. Each operation is
timed; errors are counted by SQLSTATE, never retried. Prints ``ready`` once every kind has run; on
SIGTERM or SIGINT it stops and writes ``{"ops": …, "errors": …, "latency_ms": …, "last_target_write":
…}`` to REPORT.json. Used by tests/test_live_traffic.py and bench/live_traffic.py.
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import sys
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path

import psycopg2

KINDS = {
    "credit_usage insert": (
        "INSERT INTO credit_usage (tenant_id, credit_id, feature, amount) VALUES (%(k)s, %(k)s, 'api', 1)"
    ),
    "credits update": "UPDATE credits SET balance = balance + 1, updated_at = now() WHERE id = %(k)s",
    "tenants read": "SELECT name FROM tenants WHERE id = %(k)s",
}
TARGET_UPDATE = "UPDATE credit_allocations SET amount = amount + 1 WHERE id = 1 RETURNING amount"


class Workload:
    def __init__(self, url: str, interval_s: float, kinds: dict[str, str], keys: int) -> None:
        self.url, self.interval_s, self.kinds, self.keys = url, interval_s, kinds, keys
        self.stop = threading.Event()
        self.latencies: dict[str, list[float]] = defaultdict(list)
        self.errors: Counter[str] = Counter()
        self.started: set[str] = set()
        self.last_target_write: float | None = None  # the amount of the last committed target update
        self.lock = threading.Lock()

    def run_kind(self, kind: str, statement: str) -> None:
        conn = psycopg2.connect(self.url, application_name=f"workload {kind}")
        conn.autocommit = True
        n = 0
        try:
            with conn.cursor() as cur:
                while not self.stop.is_set():
                    n += 1
                    began = time.monotonic()
                    try:
                        cur.execute(statement, {"k": 1 + n % self.keys})
                        row = cur.fetchone() if cur.description else None
                        with self.lock:
                            self.latencies[kind].append((time.monotonic() - began) * 1000)
                            if statement is TARGET_UPDATE and row:
                                self.last_target_write = float(row[0])
                    except psycopg2.Error as exc:
                        with self.lock:
                            self.errors[f"{kind}: {exc.pgcode or type(exc).__name__}"] += 1
                    self.started.add(kind)
                    self.stop.wait(self.interval_s)
        finally:
            conn.close()

    def report(self) -> dict:
        def pct(values: list[float], q: float) -> float:
            ordered = sorted(values)
            return round(ordered[min(len(ordered) - 1, int(q * (len(ordered) - 1)))], 2) if ordered else 0.0

        return {
            "ops": {k: len(v) for k, v in self.latencies.items()},
            "errors": dict(self.errors),
            "latency_ms": {
                k: {"p50": round(statistics.median(v), 2), "p99": pct(v, 0.99), "max": round(max(v), 2)}
                for k, v in self.latencies.items()
                if v
            },
            "last_target_write": self.last_target_write,
        }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("url")
    parser.add_argument("report", type=Path)
    parser.add_argument("--interval-ms", type=float, default=5)
    parser.add_argument("--keys", type=int, default=25, help="ids 1..keys of tenants and credits exist")
    parser.add_argument("--update-targets", action="store_true", help="also update credit_allocations row 1")
    args = parser.parse_args(argv)
    kinds = dict(KINDS)
    if args.update_targets:
        kinds["credit_allocations update"] = TARGET_UPDATE
    workload = Workload(args.url, args.interval_ms / 1000, kinds, args.keys)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: workload.stop.set())
    threads = [threading.Thread(target=workload.run_kind, args=item, daemon=True) for item in kinds.items()]
    for thread in threads:
        thread.start()
    while not workload.stop.is_set() and len(workload.started) < len(kinds):
        workload.stop.wait(0.01)
    print("ready", flush=True)
    workload.stop.wait()
    for thread in threads:
        thread.join(30)
    args.report.write_text(json.dumps(workload.report(), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
