"""Verification on a live database: structure is judged, row counts are reported.

Real PostgreSQL throughout: the survivors' structure is read before the drop, something happens to
them, and verification says exactly what — or, for row counts that move because the application
writes, says nothing but the figures.
"""

from __future__ import annotations

import psycopg2
import pytest

from safedrop.errors import VerificationFailed
from safedrop.migration import TableName
from safedrop.pg.database import connect
from safedrop.pg.rowcounts import Limits, count_bounded
from tasks.verification import survivor_structure, verify_drop
from tests.conftest import SURVIVORS, TARGETS
from tests.helpers import holding, run

KEEP = [TableName("public", t) for t in SURVIVORS]
GONE = [TableName("public", t) for t in TARGETS]


def drop_by_hand(tdb) -> None:
    tdb.execute("DROP TABLE credit_allocation_transactions, credit_allocations")


def test_survivors_whose_rows_changed_pass(guide_db):
    before = survivor_structure(guide_db.db, KEEP)
    drop_by_hand(guide_db)
    guide_db.execute(
        "INSERT INTO credit_usage (tenant_id, credit_id, feature, amount) VALUES (1, 1, 'api', 1)"
    )
    result = verify_drop(
        guide_db.db, GONE, KEEP, structure_before=before, rows_before={"public.credit_usage": 400}
    )
    usage = next(s for s in result.survivors if s.table == "public.credit_usage")
    assert (usage.rows_before, usage.rows_after, usage.problems) == (400, 401, [])
    assert usage.parts > 5 and usage.rows_after_estimated == ""


def test_a_survivor_that_lost_a_part_fails_naming_it(guide_db):
    before = survivor_structure(guide_db.db, KEEP)
    drop_by_hand(guide_db)
    guide_db.execute(
        "DROP INDEX credit_transactions_credit_id_idx; ALTER TABLE credit_usage ALTER COLUMN feature DROP NOT NULL"
    )
    with pytest.raises(VerificationFailed) as caught:
        verify_drop(guide_db.db, GONE, KEEP, structure_before=before)
    message = str(caught.value)
    assert message.startswith("verification failed: ")
    assert "public.credit_transactions lost its index credit_transactions_credit_id_idx" in message, message
    assert "public.credit_usage column feature changed: text NOT NULL → text" in message, message
    assert message.endswith(" — check the backup and the drop's artifact before anything else")


def test_what_an_allowed_cascade_removes_is_expected(guide_db):
    guide_db.execute(
        "ALTER TABLE credit_usage ADD COLUMN allocation_id bigint "
        "CONSTRAINT credit_usage_allocation_id_fkey REFERENCES credit_allocations (id)"
    )
    before = survivor_structure(guide_db.db, KEEP)
    guide_db.execute("DROP TABLE credit_allocation_transactions, credit_allocations CASCADE")
    with pytest.raises(
        VerificationFailed, match="public.credit_usage lost its constraint credit_usage_allocation_id_fkey"
    ):
        verify_drop(guide_db.db, GONE, KEEP, structure_before=before)
    result = verify_drop(
        guide_db.db,
        GONE,
        KEEP,
        structure_before=before,
        removable={"public.credit_usage": {"credit_usage_allocation_id_fkey"}},
    )
    assert not result.reasons


def test_an_index_left_invalid_fails_unless_it_was_invalid_before(guide_db):
    def invalid_index(name: str) -> None:
        conn = psycopg2.connect(guide_db.url)
        conn.autocommit = True
        try:
            with conn.cursor() as cur, pytest.raises(psycopg2.errors.UniqueViolation):
                cur.execute(f"CREATE UNIQUE INDEX CONCURRENTLY {name} ON credit_usage (tenant_id)")
        finally:
            conn.close()

    invalid_index("usage_tenant_before")  # a failed build: the index stays, invalid
    before = survivor_structure(guide_db.db, KEEP)
    drop_by_hand(guide_db)
    result = verify_drop(guide_db.db, GONE, KEEP, structure_before=before)
    assert (
        "public.credit_usage: index usage_tenant_before is not valid or not ready, as it was before the drop"
        in (result.warnings)
    )
    invalid_index("usage_tenant_after")
    with pytest.raises(VerificationFailed) as caught:
        verify_drop(guide_db.db, GONE, KEEP, structure_before=before)
    assert "public.credit_usage index usage_tenant_after is not valid or not ready" in str(caught.value)


def test_huge_or_locked_survivors_are_estimated_and_say_so(guide_db):
    guide_db.execute("ANALYZE")
    credits = TableName("public", "credits")
    with connect(guide_db.db) as conn, conn.begin():
        counts, estimated = count_bounded(conn, [credits], Limits(max_pages=0))
    assert counts == {"public.credits": 25}
    assert estimated["public.credits"].startswith("planner estimate (1 pages: too large to count)")
    with holding(guide_db, "LOCK TABLE credits IN ACCESS EXCLUSIVE MODE"):
        with connect(guide_db.db) as conn, conn.begin():
            counts, estimated = count_bounded(conn, [credits], Limits(lock_timeout_ms=100))
            assert conn.exec_driver_sql("SHOW lock_timeout").scalar() == "0"  # its own settings undone
    assert counts == {"public.credits": 25}
    assert estimated == {"public.credits": "planner estimate (the count waited 0.1 s for a lock and gave up)"}


@pytest.mark.usefixtures("prefect_harness")
def test_the_flow_reports_survivor_counts_as_figures_with_structure_checked(guide_db, tmp_path, monkeypatch):
    monkeypatch.setenv("DATABASE_URL", guide_db.url)
    state, report = run(backup_dir=str(tmp_path / "b"))
    assert state.is_completed(), report.reasons
    survivors = {s.table: s for s in report.verification.survivors}
    assert set(survivors) == {f"public.{t}" for t in SURVIVORS}
    assert all(s.rows_before == s.rows_after and not s.problems and s.parts for s in survivors.values())
