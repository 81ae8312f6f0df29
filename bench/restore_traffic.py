"""Benchmark: what the restore does to live writes, safedrop's restore against the plain pg_restore.

    .venv/bin/python bench/restore_traffic.py [--rows 300000] [--usage-rows 300000] [--hold 4] [--reps 3]

On a throwaway PostgreSQL: the guide's schema with volume — credits and tenants (1,000 rows), the
targets credit_allocations and credit_allocation_transactions (--rows rows each), and credit_usage
(--usage-rows rows) with a foreign key into credit_allocations. The targets are backed up (scope
targets) and dropped with CASCADE; each run restores them into a fresh copy of that database.

Application-like writes meanwhile, two threads (psycopg2, autocommit, every op timed, one op every
few milliseconds): ``UPDATE credits`` and ``INSERT INTO credit_usage`` (whose foreign-key checks read
credits and tenants, and, once it is back, credit_allocations).

- method "pg_restore": ``pg_restore --single-transaction --exit-on-error --use-list`` of the same
  entries safedrop restores (what the restore did before it learnt lock_timeout and NOT VALID: each
  foreign key added with validation, inside the one transaction, no lock_timeout);
- method "safedrop": ``tasks.restore.run_restore`` with the flow's default schedule (the tables in one
  lock-safe pg_restore transaction, the foreign keys NOT VALID, then validated one by one).

Scenarios: "quiet" (just the writers), and "credits held" (a transaction updates one credits row the
writers do not touch and stays open for --hold seconds, from just before the restore). Printed per
method and scenario (median of --reps): the restore's duration, the writers' worst and p99 latency
over the ops that started while the restore ran, and their errors. Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psycopg2

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from safedrop import SQL_DIR  # noqa: E402
from safedrop.migration import TableName  # noqa: E402
from safedrop.parameters import RestoreParameters  # noqa: E402
from safedrop.pg.database import database_from_url  # noqa: E402
from safedrop.pg.lockschedule import LockSchedule  # noqa: E402
from safedrop.pg.pgserver import LocalPostgres  # noqa: E402
from safedrop.pg.processes import dbname_arg, run, session_env  # noqa: E402
from tasks.backup import BackupOptions, take_backup  # noqa: E402
from tasks.restore import plan_restore, run_restore  # noqa: E402

FK = "credit_usage_allocation_id_fkey"
TARGETS = [TableName("public", "credit_allocation_transactions"), TableName("public", "credit_allocations")]
N_TENANTS = 1000
HELD_CREDIT = N_TENANTS  # the long transaction's row; the writers use the others


def build_template(pg: LocalPostgres, rows: int, usage_rows: int, work: Path) -> str:
    """The database after the drop, and the archive of what it dropped; returns the archive's path."""
    pg.psql("CREATE DATABASE bench_restore")
    pg.psql(
        (SQL_DIR / "demo" / "schema.sql").read_text()
        + f"""
        INSERT INTO tenants (name) SELECT 'tenant ' || g FROM generate_series(26, {N_TENANTS}) g;
        INSERT INTO credits (tenant_id, balance) SELECT id, 1000 FROM tenants WHERE id > 25;
        INSERT INTO credit_allocations (tenant_id, credit_id, amount, period_start, period_end)
            SELECT 1 + g % {N_TENANTS}, 1 + g % {N_TENANTS}, g % 100, '2024-01-01', '2024-02-01'
            FROM generate_series(1, {rows}) g;
        INSERT INTO credit_allocation_transactions (allocation_id, amount) SELECT id, 1 FROM credit_allocations;
        ALTER TABLE credit_usage ADD COLUMN allocation_id bigint CONSTRAINT {FK} REFERENCES credit_allocations;
        INSERT INTO credit_usage (tenant_id, credit_id, feature, amount, allocation_id)
            SELECT 1 + g % {N_TENANTS}, 1 + g % {N_TENANTS}, 'api', 1, 1 + g % {rows}
            FROM generate_series(1, {usage_rows}) g;
        VACUUM ANALYZE;
        """,
        database="bench_restore",
    )
    db = database_from_url(pg.url("bench_restore"), "bench")
    version = int(pg.psql("SHOW server_version_num", database="bench_restore"))
    options = BackupOptions(scope="targets")
    result = take_backup(db, TARGETS, work, options, server_version_num=version, allow_cascade=[FK])
    pg.psql("DROP TABLE credit_allocation_transactions, credit_allocations CASCADE", database="bench_restore")
    return result.path


def fresh_copy(pg: LocalPostgres, name: str) -> str:
    pg.psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    pg.psql(f"CREATE DATABASE {name} TEMPLATE bench_restore")
    pg.psql("CHECKPOINT")
    return pg.url(name)


@dataclass
class Op:
    start: float
    seconds: float
    error: str | None


@dataclass
class Writers:
    url: str
    ops: list[Op] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def __enter__(self) -> Writers:
        self.threads = [threading.Thread(target=self._client, args=(k,), daemon=True) for k in (0, 1)]
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(60)

    def _client(self, kind: int) -> None:
        conn = psycopg2.connect(self.url, application_name=f"bench-writer-{kind}")
        conn.autocommit = True
        n, mine = 0, []
        with conn.cursor() as cur:
            while not self.stop.wait(0.003):
                n += 1
                key = 1 + n % (N_TENANTS - 1)
                began, error = time.monotonic(), None
                try:
                    if kind == 0:
                        cur.execute("UPDATE credits SET balance = balance + 1 WHERE id = %s", (key,))
                    else:
                        cur.execute(
                            "INSERT INTO credit_usage (tenant_id, credit_id, feature, amount, allocation_id) "
                            "VALUES (%s, %s, 'api', 1, %s)",
                            (key, key, key),
                        )
                except psycopg2.Error as exc:
                    error = exc.pgcode or type(exc).__name__
                mine.append(Op(began, time.monotonic() - began, error))
        conn.close()
        self.ops.extend(mine)


def plain_pg_restore(url: str, archive: str) -> None:
    """The same entries in one pg_restore transaction, foreign keys validated inside it, no lock_timeout."""
    db = database_from_url(url, "bench")
    plan = plan_restore(db, archive)
    with tempfile.TemporaryDirectory() as tmp:
        listing = Path(tmp) / "all.list"
        listing.write_text("".join(e.line + "\n" for e in plan.entries))
        args = ["--single-transaction", "--exit-on-error", f"--use-list={listing}", "--no-password"]
        run(
            plan.tools.pg_restore,
            [*args, dbname_arg(db.url.database or ""), archive],
            env=session_env(db, "pg_restore", plan.server_version_num),
            timeout_s=3600,
        )


def safedrop_restore(url: str, archive: str) -> None:
    db = database_from_url(url, "bench")
    schedule = LockSchedule.from_parameters(RestoreParameters(backup_path=archive))
    result = run_restore(db, plan_restore(db, archive), schedule=schedule)
    assert {o.state for o in result.foreign_keys} == {"validated"}, result.foreign_keys


def one_run(pg: LocalPostgres, archive: str, method: str, held: bool, hold_s: float) -> dict:
    url = fresh_copy(pg, "bench_run")
    restore = plain_pg_restore if method == "pg_restore" else safedrop_restore
    holder = None
    with Writers(url) as writers:
        time.sleep(0.5)  # the writers warm up (pacing a workload, not waiting for a condition)
        if held:
            holder = psycopg2.connect(url, application_name="bench-long-transaction")
            with holder.cursor() as cur:
                cur.execute("UPDATE credits SET balance = balance + 1 WHERE id = %s", (HELD_CREDIT,))
            threading.Timer(hold_s, holder.rollback).start()
        began = time.monotonic()
        restore(url, archive)
        ended = time.monotonic()
        time.sleep(0.3)
    if holder is not None:
        holder.close()
    during = sorted(o.seconds * 1000 for o in writers.ops if began <= o.start <= ended)
    errors = sorted({o.error for o in writers.ops if o.error})
    return {
        "restore_s": ended - began,
        "worst_ms": during[-1] if during else 0.0,
        "p99_ms": during[int(len(during) * 0.99)] if during else 0.0,
        "ops": len(during),
        "errors": ", ".join(errors) or "none",
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=300_000)
    parser.add_argument("--usage-rows", type=int, default=300_000)
    parser.add_argument("--hold", type=float, default=4.0)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    with LocalPostgres() as pg, tempfile.TemporaryDirectory(prefix="safedrop-bench-") as work:
        archive = build_template(pg, args.rows, args.usage_rows, Path(work))
        print(f"targets {args.rows:,} rows each, credit_usage {args.usage_rows:,} rows; hold {args.hold:g} s")
        print(
            f"{'scenario':<14}{'method':<12}{'restore s':>10}{'worst ms':>10}{'p99 ms':>9}{'ops':>7}  errors"
        )
        for held in (False, True):
            for method in ("pg_restore", "safedrop"):
                runs = [one_run(pg, archive, method, held, args.hold) for _ in range(args.reps)]
                median = {
                    k: statistics.median(r[k] for r in runs) for k in ("restore_s", "worst_ms", "p99_ms")
                }
                print(
                    f"{'credits held' if held else 'quiet':<14}{method:<12}{median['restore_s']:>10.2f}"
                    f"{median['worst_ms']:>10.0f}{median['p99_ms']:>9.0f}{runs[0]['ops']:>7}  "
                    f"{'; '.join(sorted({r['errors'] for r in runs}))}"
                )


if __name__ == "__main__":
    main()
