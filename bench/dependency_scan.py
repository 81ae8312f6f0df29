"""Benchmark: the dependency scan on a schema of 10,000 tables (goal < 1 s).

Builds, on a throwaway PostgreSQL, the guide's schema plus N filler tables (each with a primary key,
an index and a foreign key to tenants) and a few hundred dependants of the targets (views, views on
views, foreign keys). Times the catalog-only scan (`scan_dependencies`, connection included) against
PostgreSQL's own answer to the same question — the drop rehearsed in a rolled-back transaction —
and prints both and the ratio. No assertions.

    .venv/bin/python bench/dependency_scan.py [--tables 10000]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from safedrop import SQL_DIR  # noqa: E402
from safedrop.migration import load_migration  # noqa: E402
from safedrop.pg.catalog import (
    rehearse,  # noqa: E402
    table_status,  # noqa: E402
)
from safedrop.pg.database import connect, database_from_url  # noqa: E402
from safedrop.pg.pgserver import LocalPostgres  # noqa: E402
from tasks.dependencies import scan_dependencies  # noqa: E402


def build(pg: LocalPostgres, tables: int) -> None:
    pg.psql("CREATE DATABASE bench")
    pg.psql((SQL_DIR / "demo" / "schema.sql").read_text(), database="bench")
    for first in range(1, tables + 1, 500):  # batches: one transaction can't lock 10,000 new tables
        last = min(first + 499, tables)
        pg.psql(
            f"""
            DO $$
            BEGIN
              FOR i IN {first}..{last} LOOP
                EXECUTE format('CREATE TABLE filler_%s (id bigserial PRIMARY KEY,
                                tenant_id bigint REFERENCES tenants (id), note text,
                                created_at timestamptz DEFAULT now())', i);
                EXECUTE format('CREATE INDEX ON filler_%s (tenant_id)', i);
              END LOOP;
            END $$;""",
            database="bench",
        )
    pg.psql(
        """
        DO $$
        BEGIN
          FOR i IN 1..200 LOOP
            EXECUTE format('CREATE VIEW alloc_v_%s AS SELECT id, amount FROM credit_allocations WHERE id > %s', i, i);
          END LOOP;
          FOR i IN 1..100 LOOP
            EXECUTE format('CREATE VIEW alloc_v_%s_top AS SELECT * FROM alloc_v_%s', i, i);
            EXECUTE format('ALTER TABLE filler_%s ADD COLUMN allocation_id bigint REFERENCES credit_allocations (id)', i);
          END LOOP;
        END $$;
        ANALYZE;
        """,
        database="bench",
    )


def best(fn, runs: int = 5) -> tuple[float, float]:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times), statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tables", type=int, default=10_000)
    args = parser.parse_args()
    with LocalPostgres() as pg:
        start = time.perf_counter()
        build(pg, args.tables)
        print(
            f"dependency scan: built {args.tables:,} filler tables + 400 dependants in {time.perf_counter() - start:.1f} s"
        )
        db = database_from_url(pg.url("bench"))
        migration = load_migration("drop_credit_allocation_tables")
        with connect(db) as conn:
            oids = {
                t: r["oid"]
                for t, r in zip(migration.targets, table_status(conn, migration.targets), strict=True)
            }
            conn.rollback()
        result = scan_dependencies(db, migration, oids)
        scan_best, scan_median = best(lambda: scan_dependencies(db, migration, oids))

        def rehearsal():
            with connect(db) as conn:
                rehearse(conn, migration)

        truth_best, truth_median = best(rehearsal)
        print(
            f"dependency scan: {result.removed_total} objects removed, {len(result.cascade)} beyond the targets; "
            f"safedrop {scan_best:.3f} s (median {scan_median:.3f}), server rehearsal {truth_best:.3f} s "
            f"(median {truth_median:.3f}), ratio {scan_best / truth_best:.2f}x; goal < 1 s: "
            f"{'met' if scan_best < 1 else 'NOT met'}"
        )


if __name__ == "__main__":
    main()
