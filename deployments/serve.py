"""Serve the deployments declared in prefect.yaml without a work pool or worker.

    .venv/bin/python deployments/serve.py        # needs PREFECT_API_URL pointing at a server

Names, parameters, descriptions, tags, schedules (with their ``active`` flag) and concurrency limits
are read from prefect.yaml, so the served deployments and the worker deployments never drift apart.
Runs execute as subprocesses of this script, importing the flows from the installed package (module
entrypoints, as the worker does), in whatever directory this script was started. Serve or deploy to
the work pool on one Prefect server, not both: the names are the same, and a served deployment that
was first deployed to the pool keeps its work pool, so its runs wait for a worker. Ctrl-C/SIGTERM
pauses the served deployments (``pause_on_shutdown``), which deletes their scheduled runs.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import yaml
from prefect import Flow, serve
from prefect.client.schemas.objects import ConcurrencyLimitConfig
from prefect.deployments.runner import EntrypointType, RunnerDeployment
from prefect.schedules import Schedule

from flows.drop_deprecated_tables import drop_deprecated_tables
from flows.restore_dropped_tables import restore_dropped_tables
from safedrop import ROOT

PREFECT_YAML = ROOT / "prefect.yaml"

# Flows this script can serve, by their prefect.yaml entrypoint. A new migration reuses the one flow:
# it only adds a deployment entry to prefect.yaml.
FLOWS: dict[str, Flow[..., Any]] = {
    "flows.drop_deprecated_tables:drop_deprecated_tables": drop_deprecated_tables,
    "flows.restore_dropped_tables:restore_dropped_tables": restore_dropped_tables,
}


def deployment_specs(path: Path = PREFECT_YAML) -> list[dict[str, Any]]:
    """The ``deployments:`` entries of prefect.yaml (YAML anchors resolved)."""
    config = yaml.safe_load(path.read_text())
    specs = config.get("deployments") or []
    if not specs:
        raise ValueError(f"{path} declares no deployments")
    return specs


def schedule_from_spec(spec: dict[str, Any]) -> Schedule:
    """A prefect.yaml schedule entry (cron, interval or rrule; timezone, active, slug) as a Schedule."""
    known = {"cron", "interval", "rrule", "timezone", "active", "slug", "parameters", "day_or"}
    unknown = set(spec) - known
    if unknown:
        raise ValueError(f"schedule keys {sorted(unknown)} are not supported by serve.py: {spec}")
    interval = spec.get("interval")
    return Schedule(
        cron=spec.get("cron"),
        interval=timedelta(seconds=interval) if isinstance(interval, int | float) else interval,
        rrule=spec.get("rrule"),
        timezone=spec.get("timezone"),
        active=bool(spec.get("active", True)),
        slug=spec.get("slug"),
        parameters=spec.get("parameters") or {},
        day_or=bool(spec.get("day_or", True)),
    )


def build_deployment(spec: dict[str, Any]) -> RunnerDeployment:
    """One prefect.yaml deployment entry as a RunnerDeployment for ``serve`` (no work pool)."""
    entrypoint = spec.get("entrypoint")
    if entrypoint not in FLOWS:
        raise ValueError(
            f"deployment {spec.get('name')!r}: entrypoint {entrypoint!r} is not one serve.py knows "
            f"({', '.join(FLOWS)}); add the flow to FLOWS in deployments/serve.py"
        )
    limit = spec.get("concurrency_limit")
    return FLOWS[entrypoint].to_deployment(
        name=spec["name"],
        description=spec.get("description"),
        tags=list(spec.get("tags") or []),
        parameters=spec.get("parameters") or {},
        schedules=[schedule_from_spec(s) for s in spec.get("schedules") or []],
        paused=spec.get("paused"),
        concurrency_limit=ConcurrencyLimitConfig(**limit) if isinstance(limit, dict) else limit,
        version=spec.get("version"),
        entrypoint_type=EntrypointType.MODULE_PATH,
    )


def build_deployments(path: Path = PREFECT_YAML) -> list[RunnerDeployment]:
    """Every deployment in prefect.yaml, ready to serve. Builds only: contacts no Prefect API."""
    return [build_deployment(spec) for spec in deployment_specs(path)]


def main() -> None:
    serve(*build_deployments())


if __name__ == "__main__":
    main()
