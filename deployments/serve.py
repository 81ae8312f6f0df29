"""Serve the deployments of every migration in sql/ without a work pool or worker.

    .venv/bin/python -m deployments.serve        # needs PREFECT_API_URL pointing at a server

The deployments are built by deployments/deploy.py from the migrations' settings — names,
parameters, descriptions, tags, schedules (with their ``active`` flag) and concurrency limits — so
the served deployments and the worker deployments never drift apart. Runs execute as subprocesses of
this script, importing the flows from the installed package (module entrypoints, as the worker
does), in whatever directory this script was started. Serve or deploy to the work pool on one Prefect
server, not both: the names are the same, and a served deployment that was first deployed to the
pool keeps its work pool, so its runs wait for a worker. Ctrl-C/SIGTERM pauses the served deployments
(``pause_on_shutdown``), which deletes their scheduled runs.
"""

from __future__ import annotations

from prefect import serve
from prefect.deployments.runner import RunnerDeployment

from deployments import deploy


def build_deployments() -> list[RunnerDeployment]:
    """Every deployment, without a work pool, ready to serve. Builds only: contacts no Prefect API."""
    return deploy.build_deployments(work_pool=None)


def main() -> None:
    serve(*build_deployments())


if __name__ == "__main__":
    main()
