"""Smoke checks after the drop, the guide's "test the onboarding flow": plain functions, no Prefect.

Two kinds: a SQL query that must return true (or no rows), run in a READ ONLY session and transaction
with its own statement and lock timeouts, rolled back; and an HTTP(S) URL (the application's health
endpoint) that must answer 2xx — given as a parameter (no secret in it: ``safedrop.checkinput``), or
named: an environment variable or a Prefect Secret block holding it, read here, at check time. URLs are
shown without credentials or query string; one from a secret only by its scheme and host.

A check never raises: whatever goes wrong inside one (an SQL error, a timeout, no connection, a
statement that returns no rows at all, an unreadable secret) is that check's failure, in one line.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Sequence

import sqlalchemy as sa
from psycopg2.extensions import TRANSACTION_STATUS_INERROR, TRANSACTION_STATUS_INTRANS

from safedrop.checkinput import display_url, is_http_url, secret_url_display, url_secret_problem
from safedrop.errors import SafedropError, UsageError
from safedrop.pg.database import Database, error_line, reading
from safedrop.results import SmokeCheck, SmokeCheckResult

MAX_ROWS_SHOWN = 3
SECRET_WAYS = (
    "a URL holding a secret is never a parameter: put it in an environment variable (--check-url-env "
    "NAME) or a Prefect Secret block (--check-url-secret-block NAME)"
)


def check_url_syntax(url: str) -> None:
    """``--check-url``: an http(s) URL, holding no secret (refused without repeating it)."""
    if not is_http_url(url):
        shown = display_url(url) if "@" in url or "?" in url else url
        raise UsageError(f"--check-url {shown!r} is not an http(s) URL")
    secret = url_secret_problem(url)
    if secret:
        raise UsageError(f"--check-url {display_url(url)} {secret}; {SECRET_WAYS}")


def sql_check(db: Database, query: str, *, timeout_s: float) -> str:
    """'' when the query returns no rows or only true; else what it returned, or what went wrong, instead.
    Never raises."""
    try:
        return _sql_check(db, query, timeout_s=timeout_s)
    except sa.exc.DBAPIError as exc:
        return f"it raised: {error_line(exc, db)}"
    except SafedropError as exc:  # no connection: ConnectionFailed, secret-free already
        return f"it could not run: {exc}"
    except Exception as exc:  # a bug or the driver's surprise: still only this check's failure
        return f"it could not run ({type(exc).__name__})"


def _sql_check(db: Database, query: str, *, timeout_s: float) -> str:
    limit_ms = max(1, int(timeout_s * 1000))
    with reading(db, lock_timeout_ms=limit_ms, statement_timeout_ms=limit_ms) as conn:
        result = conn.exec_driver_sql(query, execution_options={"no_parameters": True})
        status = conn.connection.dbapi_connection.info.transaction_status
        if status not in (TRANSACTION_STATUS_INTRANS, TRANSACTION_STATUS_INERROR):
            return "it ended the check's transaction (COMMIT/ROLLBACK); a check is one query"
        if not result.returns_rows:
            return "it returned no result set (a check is a query that returns true, or no rows)"
        rows = result.fetchmany(1000)
    not_true = [r for r in rows if not (len(r) >= 1 and r[0] is True)]
    if not not_true:
        return ""
    shown = ", ".join(str(tuple(r)) for r in not_true[:MAX_ROWS_SHOWN])
    more = f" and {len(not_true) - MAX_ROWS_SHOWN} more" if len(not_true) > MAX_ROWS_SHOWN else ""
    return f"it returned {shown}{more} (expected true, or no rows)"


def url_check(url: str, *, timeout_s: float) -> str:
    """'' when the URL answers 2xx (redirects followed); else what happened instead (only the kind of
    error: its text may repeat the URL). Never raises."""
    import httpx  # here, not at the top: httpx loads click, rich and pygments (~80 ms of every command)

    try:
        response = httpx.get(url, timeout=timeout_s, follow_redirects=True)
    except Exception as exc:  # httpx.HTTPError, and InvalidURL, which is not one
        return f"no answer ({type(exc).__name__})"
    if 200 <= response.status_code < 300:
        return ""
    return f"it answered HTTP {response.status_code}"


def restore_command(backup_path: str | None) -> str:
    if backup_path:
        return f"safedrop restore --backup {shlex.quote(backup_path)}"
    return (
        "safedrop restore --backup <the archive of the run that dropped them: "
        "safedrop.dropped_tables.backup_path>"
    )


def _named_url_check(shown: str, url: str | None, unreadable: str, *, timeout_s: float) -> SmokeCheck:
    """A check of a URL read from a secret (None: it could not be read, ``unreadable`` says why)."""
    if url is None:
        return SmokeCheck(kind="url", check=shown, problem=unreadable)
    if not is_http_url(url):
        return SmokeCheck(kind="url", check=shown, problem="its value is not an http(s) URL")
    return SmokeCheck(
        kind="url", check=f"{shown} ({secret_url_display(url)})", problem=url_check(url, timeout_s=timeout_s)
    )


def read_secret_url(block: str) -> tuple[str | None, str]:
    """The URL a Prefect Secret block holds, or None and why it cannot be read (one line, no value)."""
    try:
        from prefect.blocks.system import Secret

        value = Secret.load(block, _sync=True).get()  # type: ignore[call-arg]
    except ValueError:
        return None, f"cannot read the Prefect Secret block {block!r}: there is no such block"
    except Exception as exc:  # the API is unreachable, or the block is of another type
        return (
            None,
            f"cannot read the Prefect Secret block {block!r} ({type(exc).__name__}); check PREFECT_API_URL",
        )
    if not isinstance(value, str):
        return None, f"the Prefect Secret block {block!r} does not hold a URL (a text value)"
    return value.strip(), ""


def named_url_problems(url_envs: Sequence[str], url_secret_blocks: Sequence[str]) -> list[str]:
    """Why a smoke check's URL, named by an environment variable or a Secret block, cannot be read on
    this machine (one line each, no value): found before anything changes, not after the drop."""
    problems = []
    for name in url_envs:
        value = os.environ.get(name, "").strip()
        if not value:
            problems.append(
                f"the smoke check's URL variable {name} (check_url_envs) is not set on this machine"
            )
        elif not is_http_url(value):
            problems.append(
                f"the smoke check's URL variable {name} (check_url_envs) does not hold an http(s) URL"
            )
    for block in url_secret_blocks:
        url, why = read_secret_url(block)
        if url is None:
            problems.append(f"the smoke check's URL (check_url_secret_blocks): {why}")
        elif not is_http_url(url):
            problems.append(f"the smoke check's URL in the Secret block {block!r} is not an http(s) URL")
    return problems


def run_smoke_checks(
    db: Database,
    sql_checks: Sequence[str],
    url_checks: Sequence[str],
    *,
    timeout_s: float,
    url_envs: Sequence[str] = (),
    url_secret_blocks: Sequence[str] = (),
) -> SmokeCheckResult:
    """Every check, in order: SQL, URLs, URLs from environment variables, URLs from Secret blocks. Never
    raises: a check that cannot run is failed."""
    checks = [
        SmokeCheck(kind="sql", check=q, problem=sql_check(db, q, timeout_s=timeout_s)) for q in sql_checks
    ]
    checks += [
        SmokeCheck(kind="url", check=display_url(u), problem=url_check(u, timeout_s=timeout_s))
        for u in url_checks
    ]
    for name in url_envs:
        value = os.environ.get(name, "").strip() or None
        unset = f"the environment variable {name} is not set on this machine"
        checks.append(_named_url_check(f"${name}", value, unset, timeout_s=timeout_s))
    for block in url_secret_blocks:
        url, why = read_secret_url(block)
        checks.append(_named_url_check(f"Secret block {block!r}", url, why, timeout_s=timeout_s))
    return SmokeCheckResult(checks=checks)


def failures(result: SmokeCheckResult) -> list[str]:
    """One line per failed check (a check's failure is the run's, raised by the task: not a reason)."""
    return [f"{c.kind} check {c.check!r}: {c.problem}" for c in result.checks if c.problem]
