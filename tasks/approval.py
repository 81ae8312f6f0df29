"""Human approval: manual runs pause after the prechecks and the backup until an operator approves.

The pause shows the plan — what will be dropped, what CASCADE removes, row counts, the backup's
checksum — and a digest of that evidence. The approval carries the digest back; the drop then
rechecks the evidence under its lock, so anything that changed after the operator looked (new rows,
a new dependent) stops the run.
"""

from __future__ import annotations

import hashlib
import json

from prefect import get_run_logger
from prefect.client.orchestration import get_client
from prefect.context import FlowRunContext
from prefect.exceptions import FlowPauseTimeout
from prefect.flow_runs import pause_flow_run
from prefect.input import RunInput
from prefect.states import Running
from pydantic import Field

from safedrop.artifacts import md_list, md_table
from safedrop.errors import PrecheckStop
from safedrop.report import BackupResult, CleanupResult, DependencyResult


class Approval(RunInput):
    """The operator's answer, typed in the Prefect UI (or sent through the API)."""

    approve: bool = Field(False, description="Approve the drop described above.")
    evidence_digest: str = Field(
        description="The evidence digest shown above. The approval is bound to it: if the database "
        "no longer matches, the run stops."
    )
    approver: str = Field("", description="Who approves (recorded in the run's log).")
    comment: str = Field("", description="Anything worth recording.")


def evidence(targets: dict[str, int], dependencies: DependencyResult, backup: BackupResult | None) -> dict:
    """What the operator approves: the targets' rows (as the backup holds them, content checksums
    included), what CASCADE removes, what breaks. Not the archive's own bytes: a run resumed on another
    worker may take the backup again, and the same data is the same evidence."""
    if backup and backup.targets:
        targets = {t.name: t.rows for t in backup.targets}
    return {
        "targets": dict(sorted(targets.items())),
        "checksums": sorted(f"{t.name} {t.checksum}" for t in (backup.targets if backup else [])),
        "cascade": sorted(f"{o.kind} {o.identity}" for o in dependencies.cascade),
        "untracked": sorted(f"{u.kind} {u.name}" for u in dependencies.untracked),
    }


def evidence_digest(evidence_doc: dict) -> str:
    return hashlib.sha256(json.dumps(evidence_doc, sort_keys=True).encode()).hexdigest()


def plan_markdown(evidence_doc: dict, digest: str, backup: BackupResult | None) -> str:
    rows = [{"table": t, "rows": f"{n:,}"} for t, n in evidence_doc["targets"].items()]
    text = "# Approve the drop?\n\n## Will be dropped\n\n" + md_table(rows)
    if evidence_doc["cascade"]:
        text += "\n## Also removed (allowed CASCADE)\n\n" + md_list(evidence_doc["cascade"])
    if evidence_doc["untracked"]:
        text += "\n## Will break (allowed untracked references)\n\n" + md_list(evidence_doc["untracked"])
    if backup:
        text += f"\n## Backup\n\n`{backup.path}` — {backup.bytes:,} bytes, sha256 `{backup.sha256}`\n"
    text += f"\nEvidence digest: `{digest}`\n"
    return text


def _leave_expired_pause() -> None:
    """Put the run back in Running after the pause timed out, so it can end with its own report.

    Otherwise the server rejects every later state of a run whose pause expired and ends it Failed
    with a generic "The flow was … and never resumed." — losing the report and the reason.
    """
    context = FlowRunContext.get()
    if context is None or context.flow_run is None:
        return
    with get_client(sync_client=True) as client:
        client.set_flow_run_state(
            context.flow_run.id, Running(message="no approval in time; stopping"), force=True
        )


def await_approval(
    cleanup: CleanupResult,
    dependencies: DependencyResult,
    backup: BackupResult | None,
    *,
    timeout_s: int,
    poll_interval_s: int = 2,
) -> str:
    """Pause the flow run until an operator approves; returns the approved evidence digest."""
    doc = evidence(cleanup.target_rows, dependencies, backup)
    digest = evidence_digest(doc)
    logger = get_run_logger()
    logger.info("waiting up to %d s for approval (evidence digest %s)", timeout_s, digest)
    try:
        answer = pause_flow_run(
            wait_for_input=Approval.with_initial_data(
                description=plan_markdown(doc, digest, backup), evidence_digest=digest, approve=False
            ),
            timeout=timeout_s,
            poll_interval=poll_interval_s,
        )
    except FlowPauseTimeout:
        _leave_expired_pause()
        raise PrecheckStop([f"no approval within {timeout_s} s; nothing was dropped"]) from None
    if not answer.approve:
        who = f" by {answer.approver}" if answer.approver else ""
        raise PrecheckStop(
            [
                f"the drop was not approved{who}{': ' + answer.comment if answer.comment else ''}; "
                "nothing was dropped"
            ]
        )
    if answer.evidence_digest != digest:
        raise PrecheckStop(
            [
                "the approval names evidence digest "
                f"{answer.evidence_digest[:12]}…, not this run's {digest[:12]}…; nothing was dropped"
            ]
        )
    logger.info(
        "approved by %s%s", answer.approver or "an operator", f": {answer.comment}" if answer.comment else ""
    )
    return digest
