"""The Prefect flow ``restore-dropped-tables``: the restore runbook (flows/restore_runbook.py) as a flow
run, recorded by Prefect with its task runs and artifacts, ended in a state that says what happened."""

from __future__ import annotations

from prefect import flow
from prefect.runtime import flow_run
from prefect.states import State

from flows.drop_deprecated_tables import as_state
from flows.restore_runbook import restore_tables
from safedrop.parameters import RestoreParameters


@flow(name="restore-dropped-tables", log_prints=False, validate_parameters=True)
def restore_dropped_tables(params: RestoreParameters) -> State:
    """Restore the tables a drop-deprecated-tables run removed, from the backup it took before the drop.

    The archive must match its manifest (size and sha256); the manifest says exactly what the drop
    removed: the tables with their rows, sequences and values, indexes, constraints, triggers, policies,
    grants and comments, and what CASCADE took from surviving objects (foreign keys, views). Nothing
    to restore may exist yet, and the database must be the one the backup was taken of (its name and
    its cluster's system identifier) unless into_other_database is set. Everything but the foreign
    keys goes back in ONE pg_restore transaction, lock-safe: a lock wait longer than lock_timeout
    rolls it back, and it is retried with a longer one (backoff, jitter) within lock_wait_budget_s,
    else nothing is restored and the blocking sessions are
    named. Then the foreign keys are added NOT VALID (no scan, so writers of the tables they reference
    wait milliseconds, not a whole scan) and validated one by one while writes go on. Last, every
    table's row count and checksum, every sequence's value and every foreign key's validation are
    compared with the manifest. The database URL comes only from the source the parameters name — the
    Secret block, or the environment variable database_url_env — and only when neither is named from
    DATABASE_URL (environment or .env).
    """
    return as_state(restore_tables(params, flow_run_id=flow_run.get_id()))


if __name__ == "__main__":
    import sys

    restore_dropped_tables(RestoreParameters(backup_path=sys.argv[1]))
