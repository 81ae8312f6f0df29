"""Smoke checks after the drop, the guide's "test the onboarding flow": plain functions, no Prefect.

Two kinds: a SQL query that must return true (or no rows), run in a READ ONLY transaction with its
own statement and lock timeouts; and an HTTP(S) URL (the application's health endpoint) that must
answer 2xx. URLs are shown without credentials or query string (either may carry a token).
"""

from __future__ import annotations

import shlex
from urllib.parse import urlsplit, urlunsplit

import httpx
import sqlalchemy as sa

from safedrop.database import Database, reading
from safedrop.errors import UsageError
from safedrop.report import SmokeCheck, SmokeCheckResult

MAX_ROWS_SHOWN = 3


def display_url(url: str) -> str:
    """The URL without credentials or query string (either may hold a token): for logs and reports."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def check_url_syntax(url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"--check-url {display_url(url) or url!r} is not an http(s) URL")


def sql_check(db: Database, query: str, *, timeout_s: float) -> str:
    """'' when the query returns no rows or only true; else what it returned instead."""
    try:
        limit_ms = int(timeout_s * 1000)
        with reading(db, lock_timeout_ms=limit_ms, statement_timeout_ms=limit_ms) as conn:
            rows = conn.exec_driver_sql(query, execution_options={"no_parameters": True}).fetchmany(1000)
    except sa.exc.DBAPIError as exc:
        first = (str(exc.orig).strip().splitlines() or [type(exc).__name__])[0]
        return f"it raised: {first}"
    not_true = [r for r in rows if not (len(r) >= 1 and r[0] is True)]
    if not not_true:
        return ""
    shown = ", ".join(str(tuple(r)) for r in not_true[:MAX_ROWS_SHOWN])
    more = f" and {len(not_true) - MAX_ROWS_SHOWN} more" if len(not_true) > MAX_ROWS_SHOWN else ""
    return f"it returned {shown}{more} (expected true, or no rows)"


def url_check(url: str, *, timeout_s: float) -> str:
    """'' when the URL answers 2xx (redirects followed); else what happened instead."""
    try:
        response = httpx.get(url, timeout=timeout_s, follow_redirects=True)
    except httpx.HTTPError as exc:
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


def run_smoke_checks(
    db: Database, sql_checks: list[str], url_checks: list[str], *, timeout_s: float
) -> SmokeCheckResult:
    checks = [
        SmokeCheck(kind="sql", check=q, problem=sql_check(db, q, timeout_s=timeout_s)) for q in sql_checks
    ]
    checks += [
        SmokeCheck(kind="url", check=display_url(u), problem=url_check(u, timeout_s=timeout_s))
        for u in url_checks
    ]
    return SmokeCheckResult(checks=checks)


def failures(result: SmokeCheckResult) -> list[str]:
    """One line per failed check (a check's failure is the run's, raised by the task: not a reason)."""
    return [f"{c.kind} check {c.check!r}: {c.problem}" for c in result.checks if c.problem]
