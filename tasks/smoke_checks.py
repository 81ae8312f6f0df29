"""Step: the operator's smoke checks after the drop (``safedrop.analysis.smokechecks``), as an artifact.

One failing ends the run Failed, naming the check and the exact ``safedrop restore`` command that
puts the tables back from this run's backup. Nothing else ends it: a check that cannot run is a failed
check (``run_smoke_checks`` never raises), and an artifact that cannot be published is a log line.
"""

from __future__ import annotations

from safedrop.analysis.smokechecks import failures, restore_command, run_smoke_checks
from safedrop.errors import SmokeCheckFailed
from safedrop.parameters import DropParameters
from safedrop.pg.database import Database
from safedrop.report.artifacts import md_table, publish_markdown
from safedrop.results import SmokeCheckResult
from safedrop.runlog import run_logger
from safedrop.steps import step


def render(result: SmokeCheckResult) -> str:
    rows = [{"check": f"{c.kind}: `{c.check}`", "result": c.problem or "passed"} for c in result.checks]
    return f"# Smoke checks after the drop\n\n{md_table(rows) if rows else 'None given.'}\n"


@step("smoke-checks")
def smoke_checks(
    db: Database, params: DropParameters, backup_path: str | None, artifact_prefix: str
) -> SmokeCheckResult:
    """The operator's checks after the drop (``check_sql``, ``check_urls``, and the URLs named by
    ``check_url_envs`` and ``check_url_secret_blocks``); one failing fails the run with the restore
    command."""
    result = run_smoke_checks(
        db,
        params.check_sql,
        params.check_urls,
        timeout_s=params.check_timeout_s,
        url_envs=params.check_url_envs,
        url_secret_blocks=params.check_url_secret_blocks,
    )
    try:
        publish_markdown(f"{artifact_prefix}-smoke-checks", render(result), "Smoke checks after the drop")
    except Exception as exc:  # the report still says how every check went
        run_logger().warning("could not publish the smoke checks' artifact (%s)", type(exc).__name__)
    failed = failures(result)
    if failed:
        raise SmokeCheckFailed(
            f"the tables were dropped, but a smoke check failed: {'; '.join(failed)} — if the "
            f"application needs them back: {restore_command(backup_path)}",
            report=result,
        )
    if result.checks:
        run_logger().info("smoke checks passed: %d", len(result.checks))
    return result
