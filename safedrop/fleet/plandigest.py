"""The plan digest: what an operator approves for one database of a fleet, in 64 hex digits.

A fleet is approved once, on its plan: every database's dry run. Each database's destructive run is
then started with the digest of the plan approved for it (``expected_plan_digest``), computes its own
right after its prechecks — under its run lock, before the backup — and stops with nothing changed
when they differ. The drop still rechecks rows and the CASCADE set under its own lock, as every run
does; this binds the run to what the person saw.

The digest covers:

- the database itself (``user@host:port/dbname``, no password, and the name and system identifier
  the server reports): a worker whose Secret block or environment variable now points elsewhere
  cannot drop a database nobody approved, even one with the very same schema;
- every target's row count;
- what ``DROP … CASCADE`` removes besides the targets (kind and PostgreSQL's own description);
- the references PostgreSQL does not track (function bodies, triggers, cron jobs) that were allowed.

Not the backup: the plan takes none, and the same rows are the same evidence whichever archive holds
them. Not the code references either: with ``code_policy: fail`` (the default) any reference stops the
run anyway, and the plan shows them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping

from safedrop.errors import PrecheckStop
from safedrop.results import CascadeObject, DatabaseIdentity, UntrackedReference


def plan_evidence(
    database: str | None,
    target_rows: Mapping[str, int],
    cascade: Iterable[CascadeObject],
    untracked: Iterable[UntrackedReference],
    identity: DatabaseIdentity | None = None,
) -> dict:
    return {
        "database": database or "",
        "identity": f"{identity.database} {identity.system_identifier or ''}" if identity else "",
        "targets": dict(sorted(target_rows.items())),
        "cascade": sorted(f"{o.kind} {o.identity}" for o in cascade),
        "untracked": sorted(f"{u.kind} {u.name}" for u in untracked),
    }


def plan_digest(
    database: str | None,
    target_rows: Mapping[str, int],
    cascade: Iterable[CascadeObject],
    untracked: Iterable[UntrackedReference],
    *,
    identity: DatabaseIdentity | None = None,
) -> str:
    evidence = plan_evidence(database, target_rows, cascade, untracked, identity)
    return hashlib.sha256(json.dumps(evidence, sort_keys=True).encode()).hexdigest()


def stop_unless_approved(expected: str, actual: str, database: str | None) -> None:
    """Stop (nothing changed yet) when this database's plan is not the one approved for it."""
    if expected != actual:
        raise PrecheckStop(
            [
                f"the plan of {database or 'this database'} is not the one approved for it (plan digest "
                f"{expected[:12]}… approved, {actual[:12]}… now): its rows, what CASCADE removes, its "
                "untracked references or the database itself changed since the fleet's plan; nothing was "
                "changed — run the fleet again to see the new plan"
            ]
        )


def stop_unless_same_database(expected_system_identifier: str, identity: DatabaseIdentity | None) -> None:
    """Stop (nothing changed yet) when this run is connected to another cluster than the plan approved."""
    found = identity.system_identifier if identity else None
    if found != expected_system_identifier:
        where = identity.line if identity else "a database whose identity could not be read"
        raise PrecheckStop(
            [
                f"this run is connected to {where}, not to the cluster the fleet's plan approved (system "
                f"{expected_system_identifier}); nothing was changed — check where this worker's "
                f"{identity.source if identity else 'database URL'} points"
            ]
        )
