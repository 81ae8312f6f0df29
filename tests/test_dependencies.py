"""The dependency scan's prediction, object for object, against what PostgreSQL itself removes.

Ground truth: the same migration rehearsed with CASCADE inside a rolled-back transaction, every
dropped object recorded by a sql_drop event trigger (complete past the NOTICE list's 100 cap).
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from safedrop.analysis.cascade import analyse
from safedrop.migration import load_migration, parse_migration
from safedrop.pg.catalog import (
    ORIGINAL,
    SILENT,
    describe,
    predict_removal,
    rehearse,
    statement_oids,
    table_status,
)
from safedrop.pg.database import connect

FIXTURES = Path(__file__).parent / "fixtures"
CREDIT = "drop_credit_allocation_tables"


def _oids(conn, migration):
    rows = table_status(conn, migration.targets)
    return {t: r["oid"] for t, r in zip(migration.targets, rows, strict=True) if r["oid"]}


def predicted_and_truth(db, migration):
    with connect(db) as conn:
        oids = _oids(conn, migration)
        removed, refused = predict_removal(conn, statement_oids(migration, oids))
        conn.rollback()
        truth = rehearse(conn, migration)
        info = describe(conn, list(removed | {a: 0 for a in truth}))
    return removed, truth, info, refused


def assert_exact(removed, truth, info):
    predicted = set(removed)
    missing = sorted(info.get(a, {}).get("description", str(a)) for a in truth - predicted)
    extra = sorted(info.get(a, {}).get("description", str(a)) for a in predicted - truth)
    assert not missing and not extra, f"missing {missing}; extra {extra}"


@pytest.fixture
def rich_db(guide_db):
    guide_db.execute((FIXTURES / "every_dependency_kind.sql").read_text())
    return guide_db


def test_prediction_equals_what_postgres_removes_for_every_kind(rich_db):
    migration = load_migration(str(FIXTURES / "drop_with_partitioned.sql"))
    removed, truth, info, refused = predicted_and_truth(rich_db.db, migration)
    assert not refused
    assert_exact(removed, truth, info)
    assert len(truth) > 150  # the extension alone brings dozens


def test_announced_objects_equal_the_servers_notice_list(rich_db):
    """Objects reached by a normal dependency are exactly those the server names in its NOTICE."""
    migration = load_migration(str(FIXTURES / "drop_with_partitioned.sql"))
    removed, _, info, _ = predicted_and_truth(rich_db.db, migration)
    announced = sorted(info[a]["description"] for a, f in removed.items() if not f & (ORIGINAL | SILENT))
    server = rich_db.server
    cmd = [
        str(server.bindir / "psql"),
        "-X",
        "-h",
        str(server.sockdir),
        "-p",
        str(server.port),
        "-U",
        "postgres",
        "-d",
        rich_db.name,
        "-c",
        "BEGIN; SET client_min_messages = notice;" + migration.path.read_text() + "ROLLBACK;",
    ]
    import os

    if os.geteuid() == 0:
        cmd = ["runuser", "-u", "postgres", "--", *cmd]
    notices = subprocess.run(cmd, capture_output=True, text=True).stderr
    said = sorted(re.findall(r"drop cascades to (.+)", notices))
    said = [s for s in said if not re.fullmatch(r"\d+ other objects", s)]
    assert announced == said


def test_each_dependency_kind_is_reported_with_its_owner_and_consequence(rich_db):
    migration = load_migration(str(FIXTURES / "drop_with_partitioned.sql"))
    with connect(rich_db.db) as conn:
        result = analyse(conn, migration, _oids(conn, migration))
    by_name = {o.name: o for o in result.cascade}
    expect = {
        "credit_usage_allocation_id_fkey": ("foreign key", "public.credit_usage", False, True),
        "public.org_credit_overview": ("view", None, False, True),
        "public.org_credit_overview_top": ("view", None, False, True),
        "public.allocation_totals": ("materialized view", None, False, True),
        "credit_usage_mirror": ("rule", "public.credit_usage", False, True),
        "purchases_with_allocation": ("policy", "public.credit_purchases", False, True),
        "public.allocated_for(bigint)": ("function", None, False, True),
        "public.allocation_span(public.credit_allocations)": ("function", None, False, True),
        "credits_allocation_guard": ("trigger", "public.credits", False, True),
        "public.credit_allocations_archive": ("inheritance child table", None, True, True),
        "public.allocation_events_2024": ("partition", None, True, True),
        "public.allocation_events_2025": ("partition", None, True, True),
        "public.credit_grants.id": ("column default", "public.credit_grants", False, False),
        "public.credit_configurations.last_allocation": (
            "column",
            "public.credit_configurations",
            True,
            False,
        ),
        "public.credit_configurations_last_allocation_idx": (
            "index",
            "public.credit_configurations",
            False,
            True,
        ),
        "public.credit_allocations in publication allocation_feed": (
            "publication membership",
            None,
            False,
            True,
        ),
        "citext": ("extension", None, False, True),
    }
    for name, (kind, owner, loses, restorable) in expect.items():
        assert name in by_name, f"{name} not reported; got {sorted(by_name)}"
        obj = by_name[name]
        assert (obj.kind, obj.owner_table, obj.loses_data, obj.restorable) == (
            kind,
            owner,
            loses,
            restorable,
        ), name
    # extension members fold into the extension; a view's rule folds into the view
    assert not any("citext" in o.name and o.kind != "extension" for o in result.cascade)
    assert not any(o.kind == "rule" and o.name == "_RETURN" for o in result.cascade)
    # every unallowed object is a named reason
    for obj in result.cascade:
        assert any(obj.name in r for r in result.reasons), obj.name


def test_untracked_references_name_the_trigger_and_function(rich_db):
    migration = load_migration(CREDIT)
    with connect(rich_db.db) as conn:
        result = analyse(conn, migration, _oids(conn, migration))
    untracked = {(u.kind, u.name) for u in result.untracked}
    assert ("trigger", "credit_usage_mirror_trg") in untracked
    assert ("function", "public.allocation_count()") in untracked
    assert not any("uses_lookalike" in name for _, name in untracked)
    assert any("credit_usage_mirror_trg" in r and "mirror_usage()" in r for r in result.reasons)


def test_allowing_objects_by_name(rich_db):
    migration = load_migration(CREDIT)
    with connect(rich_db.db) as conn:
        oids = _oids(conn, migration)
        blocked = analyse(conn, migration, oids)
        allow = [o.name for o in blocked.cascade] + ["credit_usage_mirror_trg", "public.allocation_count"]
        allowed = analyse(conn, migration, oids, allow)
    assert all(o.allowed and "will be removed" in o.why for o in allowed.cascade)
    assert allowed.reasons == []
    assert allowed.digest == blocked.digest  # what is removed does not depend on what is allowed


def test_hundreds_of_dependants_past_the_notice_cap(guide_db):
    views = "\n".join(
        f"CREATE VIEW alloc_view_{i} AS SELECT id, amount FROM credit_allocations WHERE id > {i};"
        for i in range(250)
    )
    chained = "\n".join(
        f"CREATE VIEW alloc_view_{i}_top AS SELECT * FROM alloc_view_{i};" for i in range(0, 250, 5)
    )
    fks = "\n".join(
        f"CREATE TABLE ref_{i} (id serial PRIMARY KEY, allocation_id bigint REFERENCES credit_allocations (id));"
        for i in range(60)
    )
    guide_db.execute(views + chained + fks)
    migration = load_migration(CREDIT)
    removed, truth, info, _ = predicted_and_truth(guide_db.db, migration)
    assert_exact(removed, truth, info)
    with connect(guide_db.db) as conn:
        result = analyse(conn, migration, _oids(conn, migration))
    assert len(result.cascade) == 250 + 50 + 60


def test_a_clean_guide_database_has_nothing_beyond_the_targets(guide_db):
    migration = load_migration(CREDIT)
    removed, truth, info, _ = predicted_and_truth(guide_db.db, migration)
    assert_exact(removed, truth, info)
    with connect(guide_db.db) as conn:
        result = analyse(conn, migration, _oids(conn, migration))
    assert result.cascade == [] and result.untracked == [] and result.reasons == []


def test_a_restrict_migration_rehearses_like_the_server(guide_db):
    guide_db.execute("CREATE VIEW v AS SELECT * FROM credit_allocations")
    migration = parse_migration(
        "DROP TABLE credit_allocations;", name="m", path=Path("m.sql"), default_schema="public"
    )
    with connect(guide_db.db) as conn:
        with pytest.raises(Exception, match="other objects depend on it"):
            rehearse(conn, migration)


@pytest.mark.usefixtures("prefect_harness")
def test_rehearse_proves_the_prediction_on_a_scratch_copy(rich_db, monkeypatch):
    from tests.helpers import run

    monkeypatch.setenv("DATABASE_URL", rich_db.url)
    before = rich_db.snapshot()
    databases = rich_db.server.psql("SELECT count(*) FROM pg_database")
    state, report = run(dry_run=True, rehearse=True, allow_cascade=[])
    assert report.status == "stopped"  # the rich schema has dependants; the rehearsal itself agrees
    assert not any("differs from PostgreSQL's own rehearsal" in r for r in report.reasons)
    from tests.helpers import artifacts_of

    art = artifacts_of(str(state.state_details.flow_run_id))["drop-credit-allocation-tables-rehearsal"]
    assert "matches" in art.data
    assert rich_db.snapshot() == before
    assert rich_db.server.psql("SELECT count(*) FROM pg_database") == databases  # scratch copy gone
