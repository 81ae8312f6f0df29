"""The Prefect flow ``drop-deprecated-tables``: the runbook (flows/drop_runbook.py) as a flow run, recorded
by Prefect with its task runs and artifacts, and ended in a Prefect state that says what happened."""

from __future__ import annotations

from prefect import flow
from prefect.runtime import flow_run
from prefect.states import Completed, Failed, State

from flows.drop_runbook import drop_tables
from safedrop.parameters import DropParameters
from safedrop.results import RunEnding


@flow(name="drop-deprecated-tables", log_prints=False, validate_parameters=True)
def drop_deprecated_tables(params: DropParameters) -> State:
    """Drop the tables a migration file names: prechecks, a verified backup, one lock-safe drop, verification.

    Prechecks (connection and privileges, cleanup, dependency scan, code references) run before anything
    changes; any failure stops the run with every reason named and the database untouched. The database
    URL comes only from the source the parameters name — the Secret block, or the environment variable
    database_url_env — and only when neither is named from DATABASE_URL (environment or .env). A fleet's
    child run is held to the plan approved for its database (expected_plan_digest), checked right after
    the prechecks.

    Args:
        params: The migration to apply, the tables that must survive and the code to scan (by default
            the migration's own), the backup directory, lock timeouts and approval. Give the whole
            object when overriding it: a deployment run's parameters replace the deployment's `params`
            as a whole.
    """
    return as_state(drop_tables(params, flow_run_id=flow_run.get_id()))


def as_state(ending: RunEnding) -> State:
    """How the runbook ended, as the flow run's final state (its data: the report, or the failure)."""
    make = Completed if ending.completed else Failed
    return make(name=ending.name, message=ending.message, data=ending.data)
