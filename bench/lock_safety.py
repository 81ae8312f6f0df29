"""Benchmark: what the drop does to live traffic, safedrop's lock-safe drop against a plain DROP … CASCADE.

    .venv/bin/python bench/lock_safety.py [--hold 5] [--rows 200000] [--clients 2] [--reps 21]
                                          [--recheck-mb 1024] [--recheck-reps 5] [--recheck-drops 2]

On a throwaway PostgreSQL: the guide's schema with volume (tenants, credits, credit_usage, and targets
of --rows rows each). Application-like traffic, --clients threads per kind of op (psycopg2, autocommit,
each op timed; separate streams, so clients stuck on one table do not starve the others): reads and
updates of the hot parents credits and tenants, inserts into credit_usage (whose foreign-key checks
touch tenants and credits), and reads of a target. Meanwhile a long transaction
holds a table for --hold seconds, and the drop starts half a second after it:

- scenario "target held": the long transaction reads credit_allocations (a target);
- scenario "parent held": it reads credits (a hot parent of the targets' foreign keys).

Each scenario runs twice on fresh copies of the database: the migration's statements as one plain
transaction (no lock_timeout, as the guide runs them), and ``tasks.drop.drop_targets`` with the flow's
default schedule. Printed per op class: count, worst and p99 latency of the ops that started while the
drop was under way, and errors.

Then the lock-hold time, without traffic: from the targets' ACCESS EXCLUSIVE granted to COMMIT done,
safedrop's drop transaction (foreign keys and DROP in one round trip, COMMIT) against a bare
``BEGIN; LOCK … IN ACCESS EXCLUSIVE MODE; DROP TABLE … CASCADE; COMMIT`` of the same tables; and how
long safedrop held the targets IN EXCLUSIVE MODE (writers wait, readers do not) for its recheck before
that. The recheck runs under EXCLUSIVE only — reads go on — and ACCESS EXCLUSIVE is held just for the
DROP's round trip and the COMMIT. The recheck scans every target once (``content_changes``): the row
count, the sum of a hash of every row's xmin and the content checksum must equal what the backup took
in the dump's snapshot, so that figure grows with the targets' size. Empty targets and targets of
--rows rows, median of --reps each, the two methods in random order on fresh copies. The "backup" is
what the real one hands the drop, without an archive: the exported snapshot and each target's
contents in it (``target_contents``).

Then the recheck at size (skipped with --recheck-mb 0): targets of ~--recheck-mb MB together
(pg_total_relation_size; credit_allocations and two credit_allocation_transactions per allocation,
normal logged tables loaded with one INSERT … SELECT each, VACUUM ANALYZE), and under the drop's
``LOCK … IN EXCLUSIVE MODE``, one transaction per measurement, the checksum-only recheck
(``table_checksums``: row count and checksum, the drop's before the xmin proof) against the xmin
recheck (``content_changes``: ``target_contents``' row count, checksum and xmins, one scan) — median of
--recheck-reps, alternating order, after one untimed pass of each (warm cache), with the parallel
workers the server's defaults give each plan and its JIT time, from auto_explain. Also timed in the
same rounds: the checksum-only recheck without parallel workers (what a serial scan would cost). Then
--recheck-drops full drops at that size (``drop_targets``' writes-blocked and all-blocked holds) and
as many bare DROPs, on fresh copies. Prints figures; asserts nothing about them (it stops if a
recheck does not pass against the backup: it would be timing the wrong path).
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psycopg2
from psycopg2 import sql

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from safedrop import SQL_DIR  # noqa: E402
from safedrop.backup.dumpplan import exported_snapshot  # noqa: E402
from safedrop.migration import TableName, load_migration, tables_sql  # noqa: E402
from safedrop.parameters import DropParameters  # noqa: E402
from safedrop.pg.catalog import table_status  # noqa: E402
from safedrop.pg.checksums import (  # noqa: E402
    checksum_methods,
    pin_text_settings,
    table_checksums,
    target_contents,
)
from safedrop.pg.database import connect, database_from_url, execute_composed  # noqa: E402
from safedrop.pg.dropping import content_changes  # noqa: E402
from safedrop.pg.lockschedule import LockSchedule  # noqa: E402
from safedrop.pg.pgserver import LocalPostgres  # noqa: E402
from safedrop.pg.rowcounts import count_rows  # noqa: E402
from safedrop.results import BackupResult, TableChecksum  # noqa: E402
from tasks.dependencies import scan_dependencies  # noqa: E402
from tasks.drop import DropRequest, drop_targets  # noqa: E402

MIGRATION = "drop_credit_allocation_tables"
PLAIN_SQL = (SQL_DIR / f"{MIGRATION}.sql").read_text()
SEED = 20240601
OPS = ["credits read", "credits update", "tenants read", "credit_usage insert", "target read"]
N_TENANTS = 1000


# --------------------------------------------------------------------------------------------------
# the database
# --------------------------------------------------------------------------------------------------


def build_templates(pg: LocalPostgres, rows: int) -> None:
    schema = (SQL_DIR / "demo" / "schema.sql").read_text()
    volume = f"""
        INSERT INTO tenants (name) SELECT 'tenant ' || g FROM generate_series(26, {N_TENANTS}) g;
        INSERT INTO credits (tenant_id, balance) SELECT id, 1000 FROM tenants WHERE id > 25;
        INSERT INTO credit_usage (tenant_id, credit_id, feature, amount)
            SELECT 1 + g % {N_TENANTS}, 1 + g % {N_TENANTS}, 'api', 1 FROM generate_series(1, 100000) g;
        """
    targets = f"""
        INSERT INTO credit_allocations (tenant_id, credit_id, amount, period_start, period_end)
            SELECT 1 + g % {N_TENANTS}, 1 + g % {N_TENANTS}, g % 100, '2024-01-01', '2024-02-01'
            FROM generate_series(1, {rows}) g;
        INSERT INTO credit_allocation_transactions (allocation_id, amount)
            SELECT id, 1 FROM credit_allocations;
        """
    for name, extra in (("bench_empty", ""), ("bench_full", targets)):
        pg.psql(f"CREATE DATABASE {name}")
        pg.psql(schema + volume + extra + "\nVACUUM ANALYZE;", database=name)


def fresh_copy(pg: LocalPostgres, template: str, name: str) -> str:
    pg.psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    pg.psql(f"CREATE DATABASE {name} TEMPLATE {template}")
    pg.psql("CHECKPOINT")  # the copy's files written out before anything is timed
    return pg.url(name)


# --------------------------------------------------------------------------------------------------
# traffic
# --------------------------------------------------------------------------------------------------


@dataclass
class Op:
    kind: str
    start: float
    seconds: float
    error: str | None = None


@dataclass
class Traffic:
    url: str
    clients: int
    ops: list[Op] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def start(self) -> None:
        self.threads = [
            threading.Thread(target=self._client, args=(n * 100 + i, kind), daemon=True)
            for n, kind in enumerate(OPS)
            for i in range(self.clients)
        ]
        for t in self.threads:
            t.start()

    def finish(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(30)

    def _client(self, number: int, kind: str) -> None:
        rng = random.Random(SEED + number)
        conn = psycopg2.connect(self.url, application_name=f"bench-client-{number}")
        conn.autocommit = True
        mine: list[Op] = []
        with conn.cursor() as cur:
            while not self.stop.is_set():
                key = rng.randint(1, N_TENANTS)
                began = time.monotonic()
                error = None
                try:
                    if kind == "credits read":
                        cur.execute("SELECT balance FROM credits WHERE id = %s", (key,))
                    elif kind == "credits update":
                        cur.execute("UPDATE credits SET balance = balance + 1 WHERE id = %s", (key,))
                    elif kind == "tenants read":
                        cur.execute("SELECT name FROM tenants WHERE id = %s", (key,))
                    elif kind == "credit_usage insert":
                        cur.execute(
                            "INSERT INTO credit_usage (tenant_id, credit_id, feature, amount) "
                            "VALUES (%s, %s, 'api', 1)",
                            (key, key),
                        )
                    else:
                        cur.execute("SELECT id FROM credit_allocations WHERE id = %s", (key,))
                except psycopg2.Error as exc:
                    error = type(exc).__name__
                mine.append(Op(kind, began, time.monotonic() - began, error))
                time.sleep(0.005)
        conn.close()
        self.ops.extend(mine)


# --------------------------------------------------------------------------------------------------
# the drops
# --------------------------------------------------------------------------------------------------


def plan(url: str):
    db = database_from_url(url, "bench")
    migration = load_migration(MIGRATION)
    with connect(db) as conn:
        rows = table_status(conn, migration.targets)
        oids = {t: r["oid"] for t, r in zip(migration.targets, rows, strict=True) if r["oid"]}
        expected = count_rows(conn, list(oids))
    return db, migration, oids, scan_dependencies(db, migration, oids), expected


def backup_checksums(db, targets) -> BackupResult:
    """What the backup step hands the drop, as the real backup takes it (no archive here): in the
    exported snapshot's REPEATABLE READ, READ ONLY transaction with the text settings pinned
    (``exported_snapshot``), the snapshot as ``txid_current_snapshot()::text``, and in it each target's
    row count, content checksum and xmins (``target_contents``)."""
    with exported_snapshot(db) as (conn, exported):
        snapshot = exported["txid_snapshot"]
        sums = target_contents(conn, targets)
    checksums = [
        TableChecksum(
            name=t.qualified,
            schema_name=t.schema,
            table_name=t.name,
            rows=c.rows,
            checksum=c.checksum,
            xmins=c.xmins,
        )
        for t, c in sums.items()
    ]
    return BackupResult(
        path="-",
        bytes=0,
        sha256="-",
        pg_dump_version="-",
        duration_s=0,
        tables_in_archive=[],
        targets=checksums,
        txid_snapshot=snapshot,
    )


def safedrop_drop(url: str, record_in_ledger: bool = False):
    """The flow's drop step with its default schedule, rechecking the targets' contents against the
    backup's snapshot and checksums as it does after a backup; returns its DropResult."""
    db, migration, oids, approved, expected = plan(url)
    return drop_targets(
        db,
        DropRequest(
            migration,
            oids,
            approved=approved,
            expected_rows=expected,
            allow_cascade=[],
            record_in_ledger=record_in_ledger,
            backup=backup_checksums(db, list(oids)),
        ),
        schedule=LockSchedule.from_parameters(DropParameters(migration=MIGRATION)),
        statement_timeout_s=120,
    )


def plain_drop(url: str) -> None:
    conn = psycopg2.connect(url, application_name="bench-plain-drop")
    try:
        with conn, conn.cursor() as cur:  # one transaction: BEGIN; the migration; COMMIT
            cur.execute(PLAIN_SQL)
    finally:
        conn.close()


# --------------------------------------------------------------------------------------------------
# scenario: traffic, a long transaction, the drop
# --------------------------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))] if ordered else 0.0


def scenario(pg: LocalPostgres, held: str, method: str, hold_s: float, clients: int) -> dict:
    url = fresh_copy(pg, "bench_full", "bench_run")
    if method == "safedrop":
        plan(url)  # warm imports and caches outside the timed window
    traffic = Traffic(url, clients)
    traffic.start()
    time.sleep(1.0)
    holder = psycopg2.connect(url, application_name="bench-long-transaction")
    with holder.cursor() as cur:
        cur.execute(f"SELECT * FROM {held} LIMIT 1")  # BEGIN …; kept open
    release = threading.Timer(hold_s, holder.commit)
    release.start()
    time.sleep(0.5)
    drop = safedrop_drop if method == "safedrop" else plain_drop
    started = time.monotonic()
    try:
        drop(url)
        outcome = "dropped"
    except Exception as exc:  # noqa: BLE001 - a figure to print, e.g. a plain DROP losing a deadlock
        outcome = f"FAILED: {str(exc).splitlines()[0]}"
    ended = time.monotonic()
    release.join()
    holder.close()
    time.sleep(1.0)
    traffic.finish()
    during = [o for o in traffic.ops if started <= o.start <= ended]
    stats = {}
    for kind in OPS:
        mine = [o for o in during if o.kind == kind]
        ok = [o.seconds for o in mine]
        stats[kind] = (
            len(mine),
            max(ok, default=0.0),
            percentile(ok, 0.99),
            sum(1 for o in mine if o.error and o.error != "UndefinedTable"),
        )  # gone ≠ error
    return {"drop_s": ended - started, "outcome": outcome, "stats": stats}


def print_scenarios(results: dict) -> None:
    for held, by_method in results.items():
        print(
            f"\nscenario: a transaction holds {held} (ACCESS SHARE) for the hold time; the drop starts 0.5 s in"
        )
        for method, r in by_method.items():
            print(f"  {method:<9} drop {r['outcome']} after {r['drop_s']:.2f} s")
        print(
            f"  {'op (started during the drop)':<30} {'method':<9} {'ops':>6} {'worst ms':>9} {'p99 ms':>8} {'errors':>6}"
        )
        for kind in OPS:
            for method, r in by_method.items():
                n, worst, p99, errors = r["stats"][kind]
                print(f"  {kind:<30} {method:<9} {n:>6} {worst * 1000:>9.0f} {p99 * 1000:>8.0f} {errors:>6}")


# --------------------------------------------------------------------------------------------------
# lock-hold time
# --------------------------------------------------------------------------------------------------


def safedrop_hold(url: str) -> tuple[float, float]:
    """(every query blocked, writes blocked) in seconds, as the drop itself measured them: from the
    targets' ACCESS EXCLUSIVE, and from their EXCLUSIVE lock, granted to COMMIT done."""
    result = safedrop_drop(url, record_in_ledger=True)
    return result.all_blocked_ms / 1000, result.writes_blocked_ms / 1000


def bare_hold(url: str) -> tuple[float, float]:
    """The same figures for BEGIN; LOCK targets IN ACCESS EXCLUSIVE MODE; the migration's DROP statements;
    COMMIT (the DROP itself locks the parents)."""
    conn = psycopg2.connect(url, application_name="bench-bare-drop")
    try:
        with conn.cursor() as cur:
            cur.execute(
                "LOCK TABLE credit_allocation_transactions, credit_allocations IN ACCESS EXCLUSIVE MODE"
            )
            granted = time.monotonic()
            cur.execute(PLAIN_SQL)
            conn.commit()
            done = time.monotonic()
            return done - granted, done - granted
    finally:
        conn.close()


def hold_times(pg: LocalPostgres, reps: int) -> dict:
    """Each repetition runs both on fresh copies, in random order (the COMMIT's fsync is noisy)."""
    out: dict = {}
    for template in ("bench_empty", "bench_full"):
        for _ in range(reps):
            methods = [("bare DROP", bare_hold), ("safedrop", safedrop_hold)]
            random.shuffle(methods)
            for name, fn in methods:
                out.setdefault((template, name), []).append(fn(fresh_copy(pg, template, "bench_hold")))
    return out


def print_hold_times(holds: dict, rows: int, reps: int) -> None:
    print(f"\nlock hold, median of {reps}, no traffic: from the lock granted to COMMIT done")
    for template, label in (("bench_empty", "empty targets"), ("bench_full", f"targets of {rows:,} rows")):
        bare = statistics.median(h[0] for h in holds[(template, "bare DROP")])
        every = statistics.median(h[0] for h in holds[(template, "safedrop")])
        writes = statistics.median(h[1] for h in holds[(template, "safedrop")])
        print(f"  {label}:")
        print(f"    bare DROP, ACCESS EXCLUSIVE              {bare * 1000:7.2f} ms")
        print(
            f"    safedrop, ACCESS EXCLUSIVE (all queries) {every * 1000:7.2f} ms   "
            f"ratio {every / bare:5.2f}x (goal <= 1.1x)"
        )
        print(
            f"    safedrop, EXCLUSIVE (writes only)        {writes * 1000:7.2f} ms   "
            f"ratio {writes / bare:5.2f}x (the recheck, reads go on)"
        )


# --------------------------------------------------------------------------------------------------
# the recheck at size: the xmin proof against the checksum-only recheck
# --------------------------------------------------------------------------------------------------

RECHECK_TEMPLATE = "bench_recheck"
RECHECK_TARGETS = [
    TableName("public", "credit_allocations"),
    TableName("public", "credit_allocation_transactions"),
]
# Measured (PostgreSQL 15): one allocation row and its two transactions, heap and indexes, take ~315 bytes.
BYTES_PER_ALLOCATION = 315


def build_recheck_template(pg: LocalPostgres, mb: int) -> dict[TableName, tuple[int, int, int]]:
    """``bench_recheck``: the guide's schema, and targets of ~``mb`` MB together (pg_total_relation_size):
    allocations of 1,000 tenants over 4 years, two transactions each (a grant and a spend), loaded with
    one INSERT … SELECT per table into the schema's own (logged, indexed) tables, then VACUUM ANALYZE.
    The load skips the foreign-key triggers (session_replication_role = replica): every row references
    an existing row by construction. Returns (rows, heap bytes, total bytes) per target."""
    allocations = max(1, mb * 1024 * 1024 // BYTES_PER_ALLOCATION)
    schema = (SQL_DIR / "demo" / "schema.sql").read_text()
    pg.psql(f"CREATE DATABASE {RECHECK_TEMPLATE}")
    pg.psql(
        schema
        + f"""
        INSERT INTO tenants (name) SELECT 'tenant ' || g FROM generate_series(26, {N_TENANTS}) g;
        INSERT INTO credits (tenant_id, balance) SELECT id, 1000 FROM tenants WHERE id > 25;
        SET session_replication_role = replica;
        INSERT INTO credit_allocations (tenant_id, credit_id, amount, period_start, period_end, created_at)
            SELECT 1 + g % {N_TENANTS}, 1 + g % {N_TENANTS}, (g * 7919 % 500000) / 100.0,
                   (date '2021-01-01' + interval '1 month' * (g % 48))::date,
                   (date '2021-01-01' + interval '1 month' * (g % 48 + 1))::date - 1,
                   timestamptz '2021-01-01 00:00:00+00' + interval '13 seconds' * g
            FROM generate_series(1::bigint, {allocations}) g;
        INSERT INTO credit_allocation_transactions (allocation_id, amount, created_at)
            SELECT 1 + (g - 1) / 2, (g * 104729 % 100000) / 100.0 * (1 - 2 * (g % 2)),
                   timestamptz '2021-01-01 00:00:00+00' + interval '7 seconds' * g
            FROM generate_series(1::bigint, {2 * allocations}) g;
        RESET session_replication_role;
        VACUUM ANALYZE;
        """,
        database=RECHECK_TEMPLATE,
    )
    sizes = pg.psql(
        "SELECT c::text, (SELECT count(*) FROM credit_allocations), "
        "(SELECT count(*) FROM credit_allocation_transactions), pg_relation_size(c), "
        "pg_total_relation_size(c) "
        "FROM unnest('{credit_allocations,credit_allocation_transactions}'::regclass[]) AS c",
        database=RECHECK_TEMPLATE,
    )
    out = {}
    for line, table in zip(sizes.split(), RECHECK_TARGETS, strict=True):
        _, n_alloc, n_tx, heap, total = line.split("|")
        rows = n_alloc if table.name == "credit_allocations" else n_tx
        out[table] = (int(rows), int(heap), int(total))
    return out


def locked(db, fn, settings: tuple[str, ...] = ()):
    """``fn(conn)`` timed in one transaction that holds the targets IN EXCLUSIVE MODE, as the drop's
    recheck runs (text settings pinned first, then ``settings``); rolled back. Returns (seconds, what
    fn returned)."""
    with connect(db) as conn, conn.begin() as transaction:
        pin_text_settings(conn)
        for statement in settings:
            conn.exec_driver_sql(statement)
        execute_composed(conn, sql.SQL("LOCK TABLE {} IN EXCLUSIVE MODE").format(tables_sql(RECHECK_TARGETS)))
        began = time.perf_counter()
        result = fn(conn)
        seconds = time.perf_counter() - began
        transaction.rollback()
    return seconds, result


EXPLAINED = (
    "LOAD 'auto_explain'",
    "SET LOCAL auto_explain.log_min_duration = 0",
    "SET LOCAL auto_explain.log_nested_statements = on",
    "SET LOCAL auto_explain.log_analyze = on",
    "SET LOCAL auto_explain.log_format = 'json'",
    "SET LOCAL client_min_messages = log",
)


class _Notices(logging.Handler):
    """SQLAlchemy's psycopg2 dialect moves the server's notices to its logger (INFO) after each statement."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def explained(fn):
    """``fn(conn)``, and what auto_explain (EXPLAINED) said about the scans of the targets: parallel
    workers launched, JIT."""

    def run(conn):
        logger = logging.getLogger("sqlalchemy.dialects.postgresql")
        notices, level, propagate = _Notices(), logger.level, logger.propagate
        logger.addHandler(notices)
        logger.setLevel(logging.INFO)
        logger.propagate = False
        try:
            result = fn(conn)
        finally:
            logger.removeHandler(notices)
            logger.setLevel(level)
            logger.propagate = propagate
        described = []
        for notice in notices.lines:
            if "plan:" not in notice:
                continue
            plan = json.loads(notice.split("plan:", 1)[1])
            nodes, todo = [], [plan["Plan"]]
            while todo:
                node = todo.pop()
                nodes.append(node)
                todo.extend(node.get("Plans", []))
            scanned = [
                n["Relation Name"]
                for n in nodes
                if n.get("Relation Name") in {t.name for t in RECHECK_TARGETS}
            ]
            if not scanned:
                continue
            workers = sum(n.get("Workers Launched", 0) for n in nodes)
            text = f"{scanned[0]}: {workers or 'no'} parallel worker{'' if workers == 1 else 's'}"
            jit = plan.get("JIT")
            if jit:
                options = [k.lower() for k in ("Inlining", "Optimization") if jit["Options"].get(k)]
                text += f", JIT {'+'.join(['expressions', *options])} {jit['Timing']['Total']:.0f} ms"
            described.append(text)
        return result, "; ".join(described)

    return run


def recheck_times(pg: LocalPostgres, reps: int) -> tuple[dict[str, list[float]], dict[str, str]]:
    """The checksum-only recheck (``table_checksums``, the drop's before the xmin proof) and the xmin
    recheck (``content_changes``, as the drop runs it: ``target_contents`` of the targets — rows,
    checksum and xmins in one scan — against the backup's) of the same targets, each under the drop's
    EXCLUSIVE lock in its own transaction, in alternating order after one untimed pass of each (warm
    cache; auto_explain notes its plan). Also measured: the checksum-only recheck without parallel
    workers. Each result is checked against the backup: every recheck must pass, as it does on a drop
    that goes ahead."""
    db = database_from_url(pg.url(RECHECK_TEMPLATE), "bench")
    backup = backup_checksums(db, RECHECK_TARGETS)
    methods = checksum_methods(backup.targets)
    by_table = {TableName(t.schema_name, t.table_name): t for t in backup.targets}

    def checksum_only(conn):
        sums = table_checksums(conn, RECHECK_TARGETS, methods=methods)
        return all(sums[t] == (b.rows, b.checksum) for t, b in by_table.items())

    def xmin_recheck(conn):
        return content_changes(conn, backup.targets, backup.txid_snapshot) == []

    rechecks = {
        "checksum only": (checksum_only, ()),
        "xmins + checksum": (xmin_recheck, ()),
        "checksum only, no parallel workers": (
            checksum_only,
            ("SET LOCAL max_parallel_workers_per_gather = 0",),
        ),
    }
    plans = {}
    for name, (fn, settings) in rechecks.items():  # warm: the targets' pages in the OS cache, plans
        _, (passed, plans[name]) = locked(db, explained(fn), settings + EXPLAINED)
        if not passed:
            raise SystemExit(f"the {name} recheck does not match the backup: the bench measures nothing")
    out: dict[str, list[float]] = {name: [] for name in rechecks}
    order = list(rechecks)
    for rep in range(reps):
        for name in order if rep % 2 == 0 else order[::-1]:
            fn, settings = rechecks[name]
            seconds, passed = locked(db, fn, settings)
            if not passed:
                raise SystemExit(f"the {name} recheck does not match the backup: the bench measures nothing")
            out[name].append(seconds)
    return out, plans


def big_drop_holds(pg: LocalPostgres, drops: int) -> list[tuple[str, float, float]]:
    """The full drop at size, on fresh copies: safedrop's (writes blocked, all blocked) and a bare DROP's
    hold, alternating order. Returns (method, all blocked s, writes blocked s)."""
    out = []
    for rep in range(drops):
        methods = [("safedrop", safedrop_hold), ("bare DROP", bare_hold)]
        for name, fn in methods if rep % 2 == 0 else methods[::-1]:
            every, writes = fn(fresh_copy(pg, RECHECK_TEMPLATE, "bench_hold_big"))
            out.append((name, every, writes))
    pg.psql("DROP DATABASE IF EXISTS bench_hold_big WITH (FORCE)")
    return out


def print_recheck(
    sizes: dict, measured: tuple[dict[str, list[float]], dict[str, str]], reps: int, drops: list
) -> None:
    times, plans = measured
    total = sum(s[2] for s in sizes.values())
    heap = sum(s[1] for s in sizes.values())
    gb, heap_gb = total / 1024**3, heap / 1024**3
    print(f"\nrecheck under EXCLUSIVE at size, median of {reps}, alternating order, warm cache, no traffic:")
    for t, (rows, h, tot) in sizes.items():
        print(
            f"  {t.qualified:<40} {rows:>12,} rows  {tot / 1024**2:8.0f} MB total  {h / 1024**2:8.0f} MB heap"
        )
    print(
        f"  targets together: {total / 1024**2:.0f} MB (pg_total_relation_size), {heap / 1024**2:.0f} MB heap scanned"
    )
    old = statistics.median(times["checksum only"])
    for name, runs in times.items():
        median = statistics.median(runs)
        print(
            f"    {name:<36} {median * 1000:7.0f} ms  {median / old:5.2f}x  {median / gb * 1000:6.0f} ms/GB"
            f"   (runs: {', '.join(f'{r * 1000:.0f}' for r in runs)} ms)"
        )
        print(f"      {plans[name]}")
    new = statistics.median(times["xmins + checksum"])
    print(
        f"  the xmin recheck against the checksum-only recheck: {new / old:.2f}x (goal <= 1.2x); it adds "
        f"{(new - old) * 1000:.0f} ms to the writes-blocked hold here, {(new - old) / gb * 1000:.0f} ms per GB "
        f"of target data ({(new - old) / heap_gb * 1000:.0f} ms per GB of heap scanned)"
    )
    if drops:
        print(
            f"  the full drop at that size ({len(drops) // 2} each, fresh copies), lock granted to COMMIT done:"
        )
        for name, every, writes in drops:
            if name == "safedrop":
                print(
                    f"    safedrop   writes blocked (EXCLUSIVE) {writes * 1000:8.0f} ms, "
                    f"all queries blocked (ACCESS EXCLUSIVE) {every * 1000:7.1f} ms"
                )
            else:
                print(f"    bare DROP  all queries blocked (ACCESS EXCLUSIVE) {every * 1000:7.1f} ms")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--hold", type=float, default=5.0, help="seconds the long transaction stays open")
    parser.add_argument("--rows", type=int, default=200_000, help="rows in each target (the full variant)")
    parser.add_argument("--clients", type=int, default=2, help="traffic threads per kind of op")
    parser.add_argument("--reps", type=int, default=21, help="repetitions of each lock-hold measurement")
    parser.add_argument(
        "--recheck-mb", type=int, default=1024, help="MB of target data for the recheck at size (0: skip it)"
    )
    parser.add_argument("--recheck-reps", type=int, default=5, help="repetitions of each recheck at size")
    parser.add_argument("--recheck-drops", type=int, default=2, help="full drops (and bare DROPs) at size")
    args = parser.parse_args(argv)
    began = time.monotonic()
    schedule = LockSchedule.from_parameters(DropParameters(migration=MIGRATION))
    with LocalPostgres() as pg:
        build_templates(pg, args.rows)
        print(
            f"PostgreSQL on port {pg.port}; targets of {args.rows:,} rows each; {args.clients} clients per op; "
            f"hold {args.hold:g} s; safedrop schedule: first lock_timeout {schedule.first_timeout_ms} ms, "
            f"up to {schedule.largest_timeout_ms} ms, budget {schedule.budget_ms / 1000:g} s"
        )
        results: dict = {}
        for held in ("credit_allocations", "credits"):
            results[held] = {m: scenario(pg, held, m, args.hold, args.clients) for m in ("plain", "safedrop")}
        print_scenarios(results)
        holds = hold_times(pg, args.reps)
        print_hold_times(holds, args.rows, args.reps)
        if args.recheck_mb > 0:
            loading = time.monotonic()
            sizes = build_recheck_template(pg, args.recheck_mb)
            print(
                f"\nloaded ~{args.recheck_mb} MB of targets in {time.monotonic() - loading:.0f} s", flush=True
            )
            times = recheck_times(pg, args.recheck_reps)
            drops = big_drop_holds(pg, args.recheck_drops)
            print_recheck(sizes, times, args.recheck_reps, drops)
    print(f"\nfinished in {time.monotonic() - began:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
