"""Human approval: the run pauses after the backup, shows the plan, and drops only on a matching approval.

The flow runs in a background thread inside the test harness; the test plays the operator through
Prefect's API: it waits for the run to be Paused, reads the plan and its evidence digest from the
pause's description, and resumes the run with ``resume_flow_run(id, run_input={...})``.
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName
from prefect.flow_runs import resume_flow_run
from prefect.input.run_input import keyset_from_paused_state

from safedrop.parameters import DropParameters
from safedrop.pg.pgserver import wait_until
from tests.conftest import TARGETS
from tests.helpers import Background

pytestmark = pytest.mark.usefixtures("prefect_harness")


@pytest.fixture
def env_url(guide_db, monkeypatch):
    monkeypatch.setenv("DATABASE_URL", guide_db.url)
    return guide_db


def start_run(tmp_path, **fields: Any) -> tuple[Background, str]:
    """The flow with approval required, in a thread, under a unique flow-run name (to find it by)."""
    from flows.drop_deprecated_tables import drop_deprecated_tables

    name = f"approval-test-{uuid.uuid4().hex[:10]}"
    params = DropParameters(
        migration="drop_credit_allocation_tables",
        database_secret_block=None,
        approval="required",
        backup_dir=str(tmp_path / "b"),
        code_policy="skip",
        **fields,
    )

    def go():
        state = drop_deprecated_tables.with_options(flow_run_name=name)(params, return_state=True)
        report = state.result(raise_on_failure=False)
        return state, getattr(report, "report", report)

    return Background(go), name


def paused_run(name: str):
    """The flow run, once it is Paused waiting for input."""

    def paused():
        with get_client(sync_client=True) as client:
            runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[name])))
        return runs[0] if runs and runs[0].state and runs[0].state.is_paused() else None

    return wait_until(paused, deadline_s=60, interval_s=0.1, what="the run to pause for approval")


def shown_plan(flow_run) -> str:
    """The markdown the operator sees on the pause (plan and evidence digest)."""
    keyset = keyset_from_paused_state(flow_run.state)
    with get_client(sync_client=True) as client:
        raw = client.read_flow_run_input(flow_run.id, keyset["description"])
    return json.loads(raw) if raw.startswith('"') else raw


def digest_in(plan: str) -> str:
    found = re.search(r"Evidence digest: `([0-9a-f]{64})`", plan)
    assert found, plan
    return found[1]


def test_an_approved_run_drops_the_tables(env_url, tmp_path):
    job, name = start_run(tmp_path)
    flow_run = paused_run(name)
    assert all(env_url.exists(t) for t in TARGETS)  # paused: nothing dropped yet
    plan = shown_plan(flow_run)
    assert "# Approve the drop?" in plan and "public.credit_allocations" in plan and "sha256" in plan
    # paused in its process (no deployment): a timeout ends the run with safedrop's own reason
    assert plan.endswith("\n\nNo answer within 3,600 s: nothing is dropped.\n"), plan[-200:]
    resume_flow_run(
        flow_run.id, run_input={"approve": True, "evidence_digest": digest_in(plan), "approver": "test"}
    )
    state, report = job.join()
    assert state.is_completed() and report.status == "succeeded", report.reasons
    assert not any(env_url.exists(t) for t in TARGETS)


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        (
            "INSERT INTO credit_allocations (tenant_id, credit_id, amount, period_start, period_end) "
            "VALUES (1, 1, 10, '2024-01-01', '2024-02-01')",
            "1 row of public.credit_allocations was written after the backup; nothing was dropped",
        ),
        (
            "CREATE VIEW late_view AS SELECT * FROM credit_allocation_transactions",
            "the database changed since the prechecks (new: view public.late_view",
        ),
    ],
    ids=["new-row", "new-view"],
)
def test_a_change_after_the_operator_looked_stops_the_drop(env_url, tmp_path, change, fragment):
    job, name = start_run(tmp_path)
    flow_run = paused_run(name)
    digest = digest_in(shown_plan(flow_run))
    env_url.execute(change)  # after the plan was shown, before the approval
    before = env_url.snapshot()
    resume_flow_run(flow_run.id, run_input={"approve": True, "evidence_digest": digest, "approver": "test"})
    state, report = job.join()
    assert state.is_failed() and report.status in ("failed", "stopped"), report.reasons
    assert any(fragment in r for r in report.reasons), report.reasons
    assert report.dropped == [] and all(env_url.exists(t) for t in TARGETS)
    assert env_url.snapshot() == before


def test_no_answer_within_the_timeout_stops_the_run(env_url, tmp_path):
    before = env_url.snapshot()
    job, name = start_run(tmp_path, approval_timeout_s=10)
    paused_run(name)
    state, report = job.join(timeout=60)  # nobody answers
    assert state.is_failed() and report.status == "stopped", report.reasons
    assert any("no approval within 10 s; nothing was dropped" in r for r in report.reasons), report.reasons
    # the run ends in its own state (not the server's generic "paused and never resumed")
    assert state.name == "Stopped" and "no approval within 10 s" in state.message
    assert env_url.snapshot() == before


@pytest.mark.parametrize(
    ("answer", "fragment"),
    [
        (
            {"approve": False, "approver": "test", "comment": "not today"},
            "the drop was not approved by test: not today; nothing was dropped",
        ),
        (
            {"approve": True, "approver": "test", "evidence_digest": "0" * 64},
            "the approval names evidence digest 000000000000…, not this run's ",
        ),
    ],
    ids=["rejected", "another-digest"],
)
def test_a_rejection_or_a_foreign_digest_stops_the_run(env_url, tmp_path, answer, fragment):
    before = env_url.snapshot()
    job, name = start_run(tmp_path)
    flow_run = paused_run(name)
    answer = {"evidence_digest": digest_in(shown_plan(flow_run)), **answer}
    resume_flow_run(flow_run.id, run_input=answer)
    state, report = job.join()
    assert state.is_failed() and report.status == "stopped", report.reasons
    assert any(fragment in r for r in report.reasons), report.reasons
    assert env_url.snapshot() == before
