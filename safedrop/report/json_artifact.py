"""The run report as an artifact a program reads back: the JSON `--json` prints, in a Markdown code block.

The summary step publishes it beside the summary (key ``<migration>-report``); the fleet flow reads
its children's reports there — a child runs on whichever worker took it, so its return value stays on
that machine, while its artifacts are on the Prefect server.
"""

from __future__ import annotations

from safedrop.results import RunReport

REPORT_ARTIFACT = "report"  # the key's last part: <migration slug>-report
_FENCE = "```json\n"


def report_json_markdown(report: RunReport) -> str:
    return _FENCE + report.model_dump_json(indent=1) + "\n```\n"


def report_from_markdown(markdown: str) -> RunReport:
    """The report an artifact holds (raises ValueError when it holds none)."""
    text = markdown.strip()
    if not text.startswith(_FENCE) or not text.endswith("```"):
        raise ValueError("not a run report artifact")
    return RunReport.model_validate_json(text[len(_FENCE) : -3])
