"""Dependency scan: everything `DROP TABLE … CASCADE` of the targets would remove, and what it would break.

The step around ``safedrop.analysis.cascade.analyse`` (itself on ``safedrop.pg.catalog``'s exact walk of
``pg_depend``): one read-only transaction, the findings as artifacts.
"""

from __future__ import annotations

from collections.abc import Sequence

from safedrop.analysis.cascade import CRON_WARNING, analyse
from safedrop.migration import Migration, TableName
from safedrop.pg.database import Database, reading
from safedrop.report.artifacts import md_table, publish_markdown, publish_table
from safedrop.results import DependencyResult
from safedrop.runlog import run_logger
from safedrop.steps import step


def scan_dependencies(
    db: Database, migration: Migration, oids: dict[TableName, int], allow: Sequence[str] = ()
) -> DependencyResult:
    with reading(db) as conn:
        return analyse(conn, migration, oids, allow)


def render(result: DependencyResult) -> str:
    lines = ["# Dependency scan", ""]
    lines.append(
        f"`DROP … CASCADE` removes {result.removed_total} objects in all; "
        f"{len(result.cascade)} of them lie outside the targets' own parts."
    )
    lines.append("")
    if result.cascade:
        lines.append("## Removed by CASCADE beyond the targets")
        lines.append(
            md_table(
                [o.model_dump() for o in result.cascade],
                ["kind", "name", "owner_table", "loses_data", "restorable", "why"],
            )
        )
    else:
        lines.append("Nothing outside the targets would be removed.")
    if result.untracked:
        lines.append("## References PostgreSQL does not track")
        rows = [r.model_dump() for r in result.untracked]
        lines.append(md_table(rows, ["kind", "name", "mentions", "breaks"]))
    unobserved = [w for w in result.warnings if w.startswith(CRON_WARNING)]
    if not result.untracked:
        bodies = "function or trigger body" if unobserved else "function, trigger or cron job body"
        lines.append(f"\nNo {bodies} mentions the targets.")
    lines += [f"\n**{w}**" for w in unobserved]  # pg_cron's jobs not seen: never "none"
    return "\n".join(lines)


@step("dependency-scan", retry_delays=(1, 5))
def dependency_scan(
    db: Database,
    migration: Migration,
    oids: dict[TableName, int],
    allow: list[str],
    artifact_prefix: str,
) -> DependencyResult:
    """Everything DROP … CASCADE would remove, and the untracked references that would break."""
    result = scan_dependencies(db, migration, oids, allow)
    run_logger().info(
        "dependency scan: %d objects removed in all, %d beyond the targets, %d untracked references",
        result.removed_total,
        len(result.cascade),
        len(result.untracked),
    )
    publish_markdown(f"{artifact_prefix}-dependencies", render(result), "What DROP … CASCADE would remove")
    publish_table(
        f"{artifact_prefix}-cascade",
        [o.model_dump(exclude={"identity"}) for o in result.cascade],
        "Objects outside the targets that CASCADE would remove",
    )
    return result
