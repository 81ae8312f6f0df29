"""Publishing step summaries as Prefect artifacts (markdown, tables, progress), keyed so runs compare in
the UI.

Keys allow only lowercase letters, digits and '-'. Outside a flow or task run nothing is published (and
Prefect is not even imported: ``in_run()`` is False while it is not loaded).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from safedrop.report.progress import Progress
from safedrop.runlog import in_run, run_logger


def artifact_key(*parts: str) -> str:
    key = "-".join(parts).lower()
    key = re.sub(r"[^a-z0-9-]+", "-", key)
    return re.sub(r"-{2,}", "-", key).strip("-")[:100]


def publish_markdown(key: str, markdown: str, description: str) -> None:
    if in_run():
        from prefect.artifacts import create_markdown_artifact

        create_markdown_artifact(key=artifact_key(key), markdown=markdown, description=description)


def publish_table(key: str, rows: Sequence[Mapping[str, Any]], description: str) -> None:
    if in_run() and rows:
        from prefect.artifacts import create_table_artifact

        table = [{k: ("" if v is None else v) for k, v in row.items()} for row in rows]
        create_table_artifact(key=artifact_key(key), table=table, description=description)


class ProgressArtifact:
    """A Prefect progress artifact: the ``ProgressSink`` of a ``Progress`` inside a run."""

    def __init__(self, artifact_id) -> None:
        self.artifact_id = artifact_id

    def update(self, percent: float) -> None:
        from prefect.artifacts import update_progress_artifact

        update_progress_artifact(self.artifact_id, progress=percent)


def run_progress(what: str, key: str | None) -> Progress:
    """A ``Progress`` that logs into the run's log and, inside a run with a ``key``, updates a progress
    artifact (never failing the step when it cannot be created)."""
    sink = None
    if key and in_run():
        from prefect.artifacts import create_progress_artifact

        try:
            sink = ProgressArtifact(
                create_progress_artifact(progress=0.0, key=artifact_key(key), description=what)
            )
        except Exception:  # progress is a nicety: never let it fail the step
            sink = None
    return Progress(what, sink=sink, logger=run_logger())


def _cell(value: Any) -> str:
    text = "" if value is None else str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def md_table(rows: Iterable[Mapping[str, Any]], columns: Sequence[str] | None = None) -> str:
    """A GitHub-flavoured markdown table (empty string for no rows)."""
    rows = list(rows)
    if not rows:
        return ""
    columns = list(columns or rows[0].keys())
    out = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    out += ["| " + " | ".join(_cell(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(out) + "\n"


def md_list(items: Iterable[str]) -> str:
    return "".join(f"- {item}\n" for item in items)
