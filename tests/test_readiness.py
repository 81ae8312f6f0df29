"""Readiness: the dry run reports whether the drop would go ahead, plus evidence the targets are dead."""

from __future__ import annotations

import pytest

from safedrop.pg.pgserver import wait_until
from tests.helpers import artifacts_of, run

pytestmark = pytest.mark.usefixtures("prefect_harness")


def _scans(db, table: str) -> int:
    return db.scalar(
        "SELECT seq_scan + coalesce(idx_scan, 0) FROM pg_stat_user_tables WHERE relid = to_regclass(:t)",
        t=table,
    )


def test_usage_between_readiness_runs_is_reported(guide_db, monkeypatch):
    monkeypatch.setenv("DATABASE_URL", guide_db.url)
    state, first = run(dry_run=True)
    assert first.status == "ready"
    assert all(t.scans_since is None for t in first.activity)  # first reading: nothing to compare

    # a quiet night: safedrop's own counting (the first run's count(*) of each target, flushed to the
    # statistics once its sessions ended; a fresh database starts at 0) is not mistaken for use
    wait_until(lambda: _scans(guide_db, "public.credit_allocations") >= 1, what="the first run's own scans")
    _, quiet = run(dry_run=True)
    assert quiet.status == "ready"
    assert [t.scans_since for t in quiet.activity] == [0, 0], quiet.activity
    assert not any("was used since" in w for w in quiet.warnings)

    # the application still reads one target: the next readiness run says so
    before = _scans(guide_db, "public.credit_allocations")
    for _ in range(3):
        guide_db.execute("SELECT * FROM credit_allocations; SELECT pg_stat_force_next_flush();")
    wait_until(lambda: _scans(guide_db, "public.credit_allocations") >= before + 3, what="stats flushed")
    state, busy = run(dry_run=True)
    assert busy.status == "ready"
    used = {t.table: t.scans_since for t in busy.activity}
    assert used["public.credit_allocations"] >= 3 and used["public.credit_allocation_transactions"] == 0
    assert any("public.credit_allocations was used since the previous run" in w for w in busy.warnings)
    assert "drop-credit-allocation-tables-activity" in artifacts_of(str(state.state_details.flow_run_id))
