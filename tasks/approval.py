"""Human approval: manual runs wait after the prechecks and the backup until an operator approves.

The plan — what will be dropped, what CASCADE removes, row counts and content checksums as the backup
holds them — is shown with a digest of that evidence. The approval carries the digest back; the drop
then rechecks the evidence under its lock, so anything that changed after the operator looked (new
rows, a new dependent) stops the run.

A run of a deployment is **suspended**, not paused: its process exits and gives back its worker slot,
its database sessions and the deployment's concurrency slot, so nothing expires while a person takes
an hour, and a worker restart cannot kill it. Resume (the pre-filled form on the flow run page)
schedules the run again on any worker of the pool; it starts from the top — the prechecks run again,
the backup it took is reused — and reaches this step again, where the answer is waiting. Measured on
Prefect 3.9.1: a *paused* run of a deployment with a concurrency limit Crashed after ~4 min (the
lease of its slot expires while it is paused), and a restarted worker kills a paused run's process,
leaving it Running forever after the approval. A run without a deployment (tests, the local API)
pauses in-process instead: there is nothing to resume it with.
"""

from __future__ import annotations

import hashlib
import json

from prefect.input import RunInput
from pydantic import Field

from safedrop.errors import PrecheckStop
from safedrop.operatorwait import ask
from safedrop.report.artifacts import md_list, md_table, publish_markdown
from safedrop.results import BackupResult, CleanupResult, DependencyResult
from safedrop.runlog import run_logger


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


APPROVAL_KEY = "approval"  # the suspension's key: on the resumed run, the same step finds the answer


def await_approval(
    cleanup: CleanupResult,
    dependencies: DependencyResult,
    backup: BackupResult | None,
    *,
    timeout_s: int,
    poll_interval_s: int = 2,
    artifact_prefix: str | None = None,
) -> str:
    """Wait for an operator's approval of this evidence; returns the approved evidence digest.

    For a deployment's run the first call suspends the run (the process exits); when it is resumed the
    run starts again and the second call returns the answer at once.
    """
    doc = evidence(cleanup.target_rows, dependencies, backup)
    digest = evidence_digest(doc)
    logger = run_logger()
    plan = plan_markdown(doc, digest, backup)
    if artifact_prefix:
        publish_markdown(f"{artifact_prefix}-approval", plan, "The plan waiting for approval")
    logger.info("waiting up to %d s for approval (evidence digest %s)", timeout_s, digest)
    answer = ask(
        Approval,
        key=APPROVAL_KEY,
        plan=plan,
        unanswered_outcome="nothing is dropped",
        timeout_reason=f"no approval within {timeout_s} s; nothing was dropped",
        timeout_s=timeout_s,
        poll_interval_s=poll_interval_s,
        evidence_digest=digest,
        approve=False,
    )
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
                f"{answer.evidence_digest[:12]}…, not this run's {digest[:12]}… (the database changed "
                "since the plan was shown); nothing was dropped — re-run to see the new plan"
            ]
        )
    logger.info(
        "approved by %s%s", answer.approver or "an operator", f": {answer.comment}" if answer.comment else ""
    )
    return digest
