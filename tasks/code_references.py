"""Code-reference scan: does the application code still name the tables we are about to drop?

The scan is ``safedrop.analysis.codescan.scan_code`` (ripgrep over local paths and shallow clones of git URLs,
every spelling of each table from ``safedrop.analysis.identifiers``). A destructive run with no code source
stops, unless the policy is ``skip``; a dry run only warns. This step reads the credential for a
private repository from a Prefect Secret block and publishes what was found as artifacts.
"""

from __future__ import annotations

import os
import re

from safedrop.analysis.codescan import ARTIFACT_ROWS, CodePolicy, scan_code
from safedrop.analysis.gitauth import GitCredential, credential_from_secret
from safedrop.errors import CodeSourceError
from safedrop.migration import TableName
from safedrop.parameters import DropParameters
from safedrop.report.artifacts import artifact_key, md_table, publish_markdown, publish_table
from safedrop.results import CodeScanResult, CodeSource
from safedrop.runlog import run_logger
from safedrop.steps import step

# --------------------------------------------------------------------------------------------------
# the Prefect task


def _rows(result: CodeScanResult) -> list[dict[str, object]]:
    """One row per reference; with several roots the path says which root."""
    several = len(result.roots) > 1
    return [
        {
            "path": os.path.join(r.root, r.path) if several else r.path,
            "line": r.line,
            "column": r.column,
            "identifier": r.identifier,
            "text": r.text,
        }
        for r in result.references
    ]


def _code_span(text: str) -> str:
    """Code as a markdown code span, so `*`, `_` and `<` in it show as typed."""
    if not text:
        return ""
    fence = "`" * (max((len(run) for run in re.findall(r"`+", text)), default=0) + 1)
    return f"{fence} {text} {fence}"


def _scanned(source: CodeSource) -> str:
    scanned = f"`{source.root}` (commit `{source.commit}`)" if source.commit else f"`{source.root}`"
    return scanned + (f": {source.files_read:,} files read" if source.files_read is not None else "")


def _markdown(result: CodeScanResult, policy: CodePolicy, table_key: str) -> str:
    out = ["## Code references to the targets", ""]
    if result.status == "skipped":
        for reason in result.reasons:
            out += [f"**Stopped**: {reason}.", ""]
        for warning in result.warnings:
            out += ["**Skipped**: " + warning.split(": ", 1)[1] + ".", ""]
        return "\n".join(out)
    scanned = ", ".join(_scanned(source) for source in result.sources)
    out += [f"Scanned {scanned}; policy `{policy}`.", ""]
    for line in (*result.reasons, *result.warnings):
        out.append(f"- {line}")
    if not result.references:
        out += ["No references found.", ""]
        return "\n".join(out)
    out.append("")
    rows = _rows(result)
    columns = ["path", "line", "column", "identifier", "text"]
    shown = [{**row, "text": _code_span(str(row["text"]))} for row in rows[:ARTIFACT_ROWS]]
    out.append(md_table(shown, columns))
    if len(rows) > ARTIFACT_ROWS:
        out.append(
            f"First {ARTIFACT_ROWS} of {len(rows):,}; all of them are in the table artifact "
            f"`{artifact_key(table_key)}`."
        )
    return "\n".join(out)


def read_code_credential(block: str) -> GitCredential:
    """The HTTPS token or SSH private key held by the Prefect Secret block ``block``."""
    from prefect.blocks.system import Secret

    try:
        secret = Secret.load(block, _sync=True)  # type: ignore[call-arg]
    except ValueError:
        raise CodeSourceError(
            f"no Prefect Secret block named {block!r} (code_secret_block); create one holding an HTTPS "
            "token (or USER:TOKEN) or an SSH private key, or pass no --code-secret-block"
        ) from None
    except Exception as exc:  # the API is unreachable, or the block is of another type
        raise CodeSourceError(
            f"cannot read Prefect Secret block {block!r} (code_secret_block): {type(exc).__name__}; "
            "check PREFECT_API_URL and that the block is a Secret"
        ) from None
    return credential_from_secret(secret.get(), block)


@step("code-reference-scan")
def code_reference_scan(
    roots: list[str],
    targets: list[TableName],
    policy: CodePolicy,
    include: list[str],
    exclude: list[str],
    artifact_prefix: str,
    *,
    secret_block: str | None = None,
    dry_run: bool = False,
) -> CodeScanResult:
    """Scan the application code (local paths, git repositories) for the targets' names and publish
    what was found. A private repository's credential is read from the Secret block ``secret_block``."""
    result = scan_code(
        roots,
        targets,
        policy=policy,
        include=include,
        exclude=exclude,
        dry_run=dry_run,
        credential=(lambda: read_code_credential(secret_block)) if secret_block else None,
    )
    for source in result.sources:
        if source.kind == "git":
            run_logger().info(
                "fetched %s at commit %s in %.2f s and scanned it", source.root, source.commit, source.fetch_s
            )
    key = f"{artifact_prefix}-code-references"
    table_key = f"{key}-table"
    publish_markdown(key, _markdown(result, policy, table_key), "References to the targets in the code")
    publish_table(table_key, _rows(result), "Every reference to the targets in the code")
    return result


def code_scan(params: DropParameters, targets: list[TableName], artifact_prefix: str) -> CodeScanResult:
    """The code-reference scan as a run's parameters ask for it."""
    return code_reference_scan(
        params.code_paths or [],
        targets,
        params.code_policy,
        params.code_include,
        params.code_exclude,
        artifact_prefix,
        secret_block=params.code_secret_block,
        dry_run=params.dry_run,
    )
