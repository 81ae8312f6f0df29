"""Smoke checks after the drop (--check-sql, --check-url): the guide's "test the onboarding flow".

A real HTTP server on localhost plays the application's health endpoint; the SQL checks run against
the real database after the drop. A failing check ends the run Failed after the drop, naming the
check and the exact `safedrop restore --backup …` command.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from safedrop.cli.main import main
from tests.conftest import TARGETS
from tests.helpers import artifacts_of, run

pytestmark = pytest.mark.usefixtures("prefect_harness")


class Health(BaseHTTPRequestHandler):
    """/ok answers 200, /broken 500, /moved redirects to /ok."""

    seen: list[str] = []

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        Health.seen.append(self.path)
        if self.path.startswith("/moved"):
            self.send_response(302)
            self.send_header("Location", "/ok")
            self.end_headers()
            return
        self.send_response(200 if self.path.startswith("/ok") else 500)
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def app_health() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def env_url(guide_db, monkeypatch):
    monkeypatch.setenv("DATABASE_URL", guide_db.url)
    return guide_db


def test_passing_checks_are_recorded_and_the_run_succeeds(env_url, tmp_path, app_health):
    state, report = run(
        backup_dir=str(tmp_path / "b"),
        check_sql=["SELECT count(*) > 0 FROM credits", "SELECT id FROM credits WHERE balance < 0"],
        check_urls=[f"{app_health}/ok", f"{app_health}/moved"],
    )
    assert state.is_completed() and report.status == "succeeded", report.reasons
    assert [c.problem for c in report.smoke_checks.checks] == ["", "", "", ""]
    assert (
        "Smoke checks after the drop"
        in artifacts_of(report.flow_run_id)["drop-credit-allocation-tables-smoke-checks"].data
    )


@pytest.mark.parametrize(
    ("check", "problem"),
    [
        (
            {"check_sql": ["SELECT count(*) = 0 FROM credits"]},
            "sql check 'SELECT count(*) = 0 FROM credits': it returned (False,) (expected true, or no rows)",
        ),
        (
            {"check_sql": ["SELECT id, balance FROM credits WHERE id <= 5 ORDER BY id"]},
            "it returned (1, Decimal('1010.00')), (2, Decimal('1020.00')), (3, Decimal('1030.00')) and 2 more",
        ),
        (
            {"check_sql": ["SELECT * FROM credit_allocations"]},
            'it raised: relation "credit_allocations" does not exist',
        ),
        ({"check_urls": ["{app}/broken"]}, "url check '{app}/broken': it answered HTTP 500"),
    ],
    ids=["false", "rows", "error", "http-500"],
)
def test_a_failing_check_fails_the_run_after_the_drop_with_the_restore_command(
    env_url, tmp_path, app_health, check, problem
):
    check = {k: [v.format(app=app_health) for v in vs] for k, vs in check.items()}
    state, report = run(backup_dir=str(tmp_path / "b"), **check)
    assert state.is_failed() and report.status == "failed", report.reasons
    [reason] = report.reasons
    assert reason.startswith("the tables were dropped, but a smoke check failed: "), reason
    assert problem.format(app=app_health) in reason, reason
    assert reason.endswith(
        f"if the application needs them back: safedrop restore --backup {report.backup.path}"
    )
    assert not any(env_url.exists(t) for t in TARGETS)  # the drop happened; the check came after it
    assert report.verification is not None and not report.verification.reasons


def test_a_check_cannot_change_the_database(env_url, tmp_path):
    state, report = run(backup_dir=str(tmp_path / "b"), check_sql=["DELETE FROM credits RETURNING true"])
    assert report.status == "failed"
    assert "cannot execute DELETE in a read-only transaction" in report.reasons[0], report.reasons
    assert env_url.count("credits") == 25


def test_the_cli_check_url_fails_with_exit_1_and_hides_credentials(
    guide_db, tmp_path, app_health, capsys, monkeypatch
):
    """A URL with credentials is never a parameter (tests/test_check_safety.py): it comes from an
    environment variable the flag names, read at check time, and is shown by scheme and host only."""
    monkeypatch.chdir(tmp_path)
    url = app_health.replace("http://", "http://ops:s3cr3t-token@") + "/broken?api_key=also-secret"
    monkeypatch.setenv("APP_HEALTH_URL", url)
    code = main(
        [
            "run",
            "--database-url",
            guide_db.url,
            "--code-policy",
            "skip",
            "--backup-dir",
            str(tmp_path / "b"),
            "--check-url-env",
            "APP_HEALTH_URL",
            "--json",
        ]
    )
    out, err = capsys.readouterr()
    report = json.loads(out)
    assert code == 1 and report["status"] == "failed"
    [reason] = report["reasons"]
    assert f"url check '$APP_HEALTH_URL ({app_health}/…)': it answered HTTP 500" in reason, reason
    assert "safedrop restore --backup " in reason
    assert "s3cr3t-token" not in out + err and "also-secret" not in out + err
    assert not any(guide_db.exists(t) for t in TARGETS)


def test_a_check_url_that_is_not_http_is_refused_before_anything_runs(
    guide_db, tmp_path, capsys, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    before = guide_db.snapshot()
    code = main(
        ["run", "--database-url", guide_db.url, "--code-policy", "skip", "--check-url", "ftp://app/health"]
    )
    _, err = capsys.readouterr()
    assert code == 2
    assert err.strip() == "safedrop: --check-url 'ftp://app/health' is not an http(s) URL"
    assert guide_db.snapshot() == before
