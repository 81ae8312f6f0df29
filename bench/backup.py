"""Benchmark: safedrop's backup step and restore against raw pg_dump, on realistic data.

    .venv/bin/python bench/backup.py                 # ~2 GB database (a few minutes)
    .venv/bin/python bench/backup.py --size-gb 0.2   # quick run
    .venv/bin/python bench/backup.py --repeat 3      # medians of 3

Starts a throwaway PostgreSQL (safedrop.pg.pgserver.LocalPostgres), fills a database server-side
(generate_series + random()/md5: mixed text, numeric, timestamps, jsonb, uuid — NOT the highly
compressible pgbench kind, which hides compression costs), then times:

- safedrop's backup step (``take_backup``: snapshot, checksums, pg_dump, TOC check, sha256, manifest)
  vs raw ``pg_dump -Fc -Z1`` of the same database (goal ≤ 1.05×);
- safedrop's defaults vs ``pg_dump -Fc`` with pg_dump's default compression (goal ≤ 0.5×);
- scope ``targets`` vs ``database``; the directory format with 2 jobs;
- verification: ``pg_restore --list``, ``verify_restore`` (scratch database);
- restore: the precheck (sha256 of the archive, TOC, catalogs), pg_restore of the dropped tables,
  verification.

Prints times, sizes and ratios; asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from safedrop.backup.archive import read_toc, sha256_file  # noqa: E402
from safedrop.migration import TableName  # noqa: E402
from safedrop.pg.database import database_from_url  # noqa: E402
from safedrop.pg.pgserver import LocalPostgres  # noqa: E402
from safedrop.pg.pgtools import find_pg_dump  # noqa: E402
from tasks.backup import BackupOptions, take_backup  # noqa: E402
from tasks.restore import plan_restore, run_restore, verify_restored  # noqa: E402

DB = "bench"
TARGETS = [TableName("public", "legacy_events"), TableName("public", "legacy_event_items")]

SCHEMA = """
CREATE TABLE customers (
    id bigserial PRIMARY KEY, uid uuid NOT NULL, name text NOT NULL, email text NOT NULL,
    country text NOT NULL, created_at timestamptz NOT NULL, profile jsonb NOT NULL
);
CREATE TABLE orders (
    id bigserial PRIMARY KEY, customer_id bigint NOT NULL, amount numeric(12, 2) NOT NULL,
    status text NOT NULL, created_at timestamptz NOT NULL, items jsonb NOT NULL, note text
);
CREATE TABLE events (
    id bigserial PRIMARY KEY, occurred_at timestamptz NOT NULL, kind text NOT NULL, session uuid NOT NULL,
    score double precision NOT NULL, tags text[] NOT NULL, payload jsonb NOT NULL
);
CREATE TABLE legacy_events (
    id bigserial PRIMARY KEY, customer_id bigint NOT NULL, occurred_at timestamptz NOT NULL,
    kind text NOT NULL, payload jsonb NOT NULL, note text
);
CREATE TABLE legacy_event_items (
    id bigserial PRIMARY KEY, event_id bigint NOT NULL REFERENCES legacy_events (id),
    sku text NOT NULL, qty int NOT NULL, price numeric(10, 2) NOT NULL, attrs jsonb NOT NULL
);
CREATE INDEX legacy_event_items_event_id_idx ON legacy_event_items (event_id);
CREATE VIEW legacy_daily AS SELECT date_trunc('day', occurred_at) AS day, count(*) FROM legacy_events GROUP BY 1;
"""

WORDS = (
    "ARRAY['alpha','bravo','charlie','delta','echo','foxtrot','golf','hotel','india','juliet','kilo',"
    "'lima','mike','november','oscar','papa','quebec','romeo','sierra','tango','uniform','victor',"
    "'whiskey','xray','yankee','zulu','credit','invoice','refund','export','seat','api','usage']"
)
W = f"({WORDS})[1 + floor(random() * 33)::int]"

# One batch of rows per table, server-side; the share says how much of the database each table gets.
BATCHES = {
    "customers": (
        0.08,
        f"""
        INSERT INTO customers (uid, name, email, country, created_at, profile)
        SELECT gen_random_uuid(), initcap({W}) || ' ' || initcap({W}) || ' ' || substr(md5(random()::text), 1, 6),
               lower({W}) || '.' || substr(md5(random()::text), 1, 10) || '@example.' || {W},
               (ARRAY['DE','FR','US','GB','NL','PL','ES','IT','SE','JP'])[1 + floor(random() * 10)::int],
               now() - random() * interval '900 days',
               jsonb_build_object('plan', {W}, 'seats', floor(random() * 500)::int,
                                  'tags', jsonb_build_array({W}, {W}), 'ref', md5(random()::text))
        FROM generate_series(1, __ROWS__)""",
    ),
    "orders": (
        0.25,
        f"""
        INSERT INTO orders (customer_id, amount, status, created_at, items, note)
        SELECT 1 + floor(random() * 100000)::bigint, round((random() * 5000)::numeric, 2),
               (ARRAY['paid','open','void','refunded'])[1 + floor(random() * 4)::int],
               now() - random() * interval '900 days',
               jsonb_build_array(jsonb_build_object('sku', upper(substr(md5(random()::text), 1, 8)),
                                                    'qty', floor(random() * 9)::int + 1,
                                                    'price', round((random() * 300)::numeric, 2)),
                                 jsonb_build_object('sku', upper(substr(md5(random()::text), 1, 8)),
                                                    'qty', floor(random() * 9)::int + 1)),
               CASE WHEN random() < 0.4 THEN {W} || ' ' || {W} || ' ' || {W} || ' ' || md5(random()::text) END
        FROM generate_series(1, __ROWS__)""",
    ),
    "events": (
        0.55,
        f"""
        INSERT INTO events (occurred_at, kind, session, score, tags, payload)
        SELECT now() - random() * interval '400 days', {W} || '.' || {W}, gen_random_uuid(), random() * 1000,
               ARRAY[{W}, {W}],
               jsonb_build_object('path', '/' || {W} || '/' || substr(md5(random()::text), 1, 12),
                                  'ms', floor(random() * 3000)::int, 'ua', {W} || '/' || floor(random() * 90)::int,
                                  'ip', (floor(random() * 255)::int)::text || '.' || (floor(random() * 255)::int)::text
                                        || '.' || (floor(random() * 255)::int)::text || '.1',
                                  'trace', md5(random()::text))
        FROM generate_series(1, __ROWS__)""",
    ),
    "legacy_events": (
        0.08,
        f"""
        INSERT INTO legacy_events (customer_id, occurred_at, kind, payload, note)
        SELECT 1 + floor(random() * 100000)::bigint, now() - random() * interval '2000 days', {W},
               jsonb_build_object('v', floor(random() * 1e6)::int, 'src', {W}, 'h', md5(random()::text)),
               CASE WHEN random() < 0.5 THEN {W} || ' ' || md5(random()::text) END
        FROM generate_series(1, __ROWS__)""",
    ),
    "legacy_event_items": (
        0.04,
        f"""
        INSERT INTO legacy_event_items (event_id, sku, qty, price, attrs)
        SELECT 1 + floor(random() * (SELECT max(id) FROM legacy_events))::bigint,
               upper(substr(md5(random()::text), 1, 10)), floor(random() * 20)::int + 1,
               round((random() * 999)::numeric, 2), jsonb_build_object('c', {W}, 'w', round(random()::numeric, 3))
        FROM generate_series(1, __ROWS__)""",
    ),
}


def fill(pg: LocalPostgres, size_gb: float) -> None:
    """Grow each table in batches until it holds its share of ``size_gb``."""
    pg.psql(f"CREATE DATABASE {DB}")
    pg.psql(SCHEMA, database=DB)
    started = time.monotonic()
    for table, (share, insert) in BATCHES.items():
        goal = share * size_gb * 1024**3
        batch = 20_000
        while True:
            pg.psql(insert.replace("__ROWS__", str(batch)), database=DB)
            size = int(pg.psql(f"SELECT pg_total_relation_size('{table}')", database=DB))
            if size >= goal:
                break
            per_row = size / max(int(pg.psql(f"SELECT count(*) FROM {table}", database=DB)), 1)
            batch = int(min(max((goal - size) / per_row, 1000), 1_000_000))
    pg.psql("VACUUM ANALYZE", database=DB)
    total = int(pg.psql("SELECT pg_database_size(current_database())", database=DB))
    print(f"database {DB}: {total / 1024**3:.2f} GiB in {time.monotonic() - started:.0f} s", flush=True)
    for table in BATCHES:
        size = int(pg.psql(f"SELECT pg_total_relation_size('{table}')", database=DB))
        print(f"  {table:<20} {size / 1024**2:8.1f} MiB", flush=True)


def timed(fn: Callable[[], object], repeat: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeat):
        t0 = time.monotonic()
        result = fn()
        times.append(time.monotonic() - t0)
    return statistics.median(times), result


def runs(values: list[float]) -> str:
    return " ".join(f"{v:.1f}" for v in values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-gb", type=float, default=2.0, help="database size to generate (default 2)")
    parser.add_argument("--repeat", type=int, default=1, help="runs per measurement; the median is shown")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="safedrop-bench-"))
    os.chmod(work, 0o755)
    rows: list[tuple[str, float, str]] = []

    def record(name: str, seconds: float, note: str = "") -> float:
        rows.append((name, seconds, note))
        print(f"  {name:<58} {seconds:8.2f} s  {note}", flush=True)
        return seconds

    try:
        with LocalPostgres() as pg:
            fill(pg, args.size_gb)
            db = database_from_url(pg.url(DB))
            version = int(pg.psql("SHOW server_version_num"))
            tools = find_pg_dump(version)
            env = {**os.environ, **db.libpq_env("pg_dump")}
            out = work / "raw"
            out.mkdir()

            def raw_dump(*extra: str) -> int:
                target = out / "raw.dump"
                target.unlink(missing_ok=True)
                subprocess.run(
                    [str(tools.pg_dump), "--format=custom", *extra, "--no-password", f"--file={target}"],
                    env=env,
                    check=True,
                )
                return target.stat().st_size

            def backup(scope: str, **kw) -> object:
                directory = work / f"sd-{scope}-{time.monotonic_ns()}"
                options = BackupOptions(scope=scope, **kw)
                return take_backup(db, TARGETS, directory, options, server_version_num=version)

            print("warming the cache …", flush=True)
            raw_dump("--compress=0")
            print(f"measurements (median of {args.repeat}):", flush=True)
            # interleaved, so drift in the machine's load hits all three alike
            samples: dict[str, list[float]] = {"raw1": [], "sd": [], "rawd": []}
            for _ in range(args.repeat):
                for key, fn in (
                    ("raw1", lambda: raw_dump("--compress=1")),
                    ("sd", lambda: backup("database")),
                    ("rawd", lambda: raw_dump()),
                ):
                    seconds, value = timed(fn, 1)
                    samples[key].append(seconds)
                    if key == "raw1":
                        size_raw1 = value
                    elif key == "sd":
                        full = value
                    else:
                        size_rawd = value
            t_raw1, t_sd, t_rawd = (statistics.median(samples[k]) for k in ("raw1", "sd", "rawd"))
            record(
                "raw pg_dump -Fc -Z1", t_raw1, f"{size_raw1 / 1024**2:.0f} MiB  runs {runs(samples['raw1'])}"
            )
            record(
                "safedrop backup, scope database (defaults: -Fc -Z1)",
                t_sd,
                f"{full.bytes / 1024**2:.0f} MiB  runs {runs(samples['sd'])}",
            )
            record(
                "raw pg_dump -Fc (pg_dump's default compression)",
                t_rawd,
                f"{size_rawd / 1024**2:.0f} MiB  runs {runs(samples['rawd'])}",
            )
            t_dir, _ = timed(lambda: backup("database", archive_format="directory", jobs=2), args.repeat)
            record("safedrop backup, database, directory format, 2 jobs", t_dir)
            t_tg, targets = timed(lambda: backup("targets"), args.repeat)
            record("safedrop backup, scope targets", t_tg, f"{targets.bytes / 1024**2:.0f} MiB")

            t_toc, _ = timed(lambda: read_toc(Path(full.path), tools), args.repeat)
            record("verification: pg_restore --list (TOC)", t_toc)
            t_sha, _ = timed(lambda: sha256_file(Path(full.path)), args.repeat)
            record("sha256 of the database-scope archive", t_sha)
            t_vr, _ = timed(lambda: backup("targets", verify_restore=True), args.repeat)
            record("safedrop backup, scope targets + verify_restore", t_vr, f"(+{t_vr - t_tg:.2f} s)")
            t_vrd, _ = timed(lambda: backup("database", verify_restore=True), 1)
            record("safedrop backup, scope database + verify_restore", t_vrd, f"(+{t_vrd - t_sd:.2f} s)")

            for label, result in (("database", full), ("targets", targets)):
                pg.psql("DROP TABLE legacy_event_items, legacy_events CASCADE", database=DB)
                t_plan, plan = timed(lambda r=result: plan_restore(db, r.path), 1)
                record(f"restore precheck ({label}-scope archive: sha256, TOC, catalogs)", t_plan)
                t_res, _ = timed(lambda p=plan: run_restore(db, p), 1)
                record(f"restore: pg_restore --single-transaction ({label})", t_res)
                t_ver, _ = timed(lambda p=plan: verify_restored(db, p), 1)
                record(f"restore verification: counts, checksums ({label})", t_ver)

            print("\nratios:")
            print(
                f"  safedrop backup / raw pg_dump -Z1 (same settings)   {t_sd / t_raw1:5.2f}x   (goal <= 1.05)"
            )
            print(
                f"  safedrop defaults / pg_dump's defaults               {t_sd / t_rawd:5.2f}x   (goal <= 0.5)"
            )
            print(f"  archive size, -Z1 / pg_dump default                  {size_raw1 / size_rawd:5.2f}x")
            print(f"  scope targets / scope database                       {t_tg / t_sd:5.3f}x")
            print(f"  directory format 2 jobs / custom                     {t_dir / t_sd:5.2f}x")
            print(f"  verify_restore overhead (targets scope)              {t_vr - t_tg:5.2f} s")
            print(f"  TOC check                                            {t_toc:5.3f} s")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
