"""The fleet's one approval: the whole plan shown once; each database's run is then held to its part.

Like a single database's approval (tasks/approval.py), a run of the fleet deployment is **suspended**:
its process exits, holding no worker slot, so the operator may take an hour or a week, and Resume on
the fleet run's page schedules it again on any worker. It then starts from the top: its plan's dry runs
are found again by their idempotency keys (nothing is planned twice, and the plan is the one shown),
so it reaches this step with the same fleet digest, and the answer is waiting. A run outside a
deployment (a test) pauses in its process instead.

The answer names the fleet digest it approves (pre-filled in the form); a different plan is not
approved. What the operator approved for each database — its plan digest — goes with its
destructive run, which stops with nothing changed when its database no longer matches.
"""

from __future__ import annotations

from prefect.input import RunInput
from pydantic import Field

from safedrop.errors import PrecheckStop
from safedrop.operatorwait import ask
from safedrop.runlog import run_logger

FLEET_APPROVAL_KEY = "fleet-approval"


class FleetApproval(RunInput):
    """The operator's answer to the fleet plan (the Prefect UI's Resume form)."""

    approve: bool = Field(False, description="Approve the fleet plan above: every ready database, in turn.")
    fleet_digest: str = Field(
        description="The fleet digest shown above. The approval is bound to it, and each database's run "
        "to its own part of it."
    )
    approver: str = Field("", description="Who approves (recorded in the run's log).")
    comment: str = Field("", description="Anything worth recording.")


def await_fleet_approval(plan: str, digest: str, *, timeout_s: int, poll_interval_s: int = 2) -> None:
    """Wait for the operator's approval of the fleet plan with this digest; raise PrecheckStop if none."""
    logger = run_logger()
    logger.info("waiting up to %d s for the fleet's approval (fleet digest %s)", timeout_s, digest)
    answer = ask(
        FleetApproval,
        key=FLEET_APPROVAL_KEY,
        plan=plan,
        unanswered_outcome="no database is started",
        timeout_reason=f"no approval of the fleet within {timeout_s} s; no database was started",
        timeout_s=timeout_s,
        poll_interval_s=poll_interval_s,
        fleet_digest=digest,
        approve=False,
    )
    if not answer.approve:
        who = f" by {answer.approver}" if answer.approver else ""
        why = f": {answer.comment}" if answer.comment else ""
        raise PrecheckStop([f"the fleet was not approved{who}{why}; no database was started"])
    if answer.fleet_digest != digest:
        raise PrecheckStop(
            [
                f"the approval names fleet digest {answer.fleet_digest[:12]}…, not this plan's "
                f"{digest[:12]}… (a database's plan changed since it was shown); no database was started "
                "— run the fleet again to see the new plan"
            ]
        )
    logger.info(
        "fleet approved by %s%s",
        answer.approver or "an operator",
        f": {answer.comment}" if answer.comment else "",
    )
