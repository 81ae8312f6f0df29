"""Who holds the locks safedrop waited for: named in every message that gives up on a lock."""

from __future__ import annotations

from safedrop import queries
from safedrop.database import Database, connect

LOCK_NOT_AVAILABLE = "55P03"  # lock_timeout ran out


def is_lock_timeout(exc: BaseException) -> bool:
    return getattr(getattr(exc, "orig", None), "pgcode", None) == LOCK_NOT_AVAILABLE


def describe_blockers(db: Database, oids: list[int], exclude_pids: list[int]) -> list[str]:
    """Who holds the locks we waited for: pid, application, state, transaction age, query."""
    try:
        with connect(db) as conn:
            rows = queries.rows(conn, "lock_blockers", oids=oids, exclude_pids=exclude_pids)
    except Exception:
        return []
    seen, out = set(), []
    for r in rows:
        if r["pid"] in seen or not r["granted"]:
            continue
        seen.add(r["pid"])
        out.append(
            f"pid {r['pid']} ({r['application_name'] or 'no application_name'}, {r['state']}, "
            f"transaction open {r['xact_seconds']} s, holds {r['mode']} on {r['relation']}): {r['query']}"
        )
    return out
