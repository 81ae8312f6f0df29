"""Small helpers shared by the flow and CLI tests."""

from __future__ import annotations

from typing import Any

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

from safedrop.parameters import DropParameters
from safedrop.report import RunReport


def run(params: dict[str, Any] | None = None, **overrides: Any) -> tuple[Any, RunReport]:
    """Run the flow in-process (inside the test harness); returns (state, report)."""
    from flows.drop_deprecated_tables import drop_deprecated_tables

    fields = {
        "migration": "drop_credit_allocation_tables",
        "database_secret_block": None,
        "approval": "skip",
        **(params or {}),
        **overrides,
    }
    state = drop_deprecated_tables(DropParameters(**fields), return_state=True)
    report = state.result(raise_on_failure=False)
    report = getattr(report, "report", report)  # a stopped or failed run carries it in its exception
    assert isinstance(report, RunReport), f"flow returned {report!r}"
    return state, report


def artifacts_of(flow_run_id: str) -> dict[str, Any]:
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
    return {a.key: a for a in found}
