"""The database the operator named, and no other.

A source the operator names — ``--database-url``, ``--secret-block``, a deployment's
``database_secret_block``, ``database_url_env`` — is the only source: a block that does not exist, cannot
be read or holds no PostgreSQL URL stops the run naming the block, with ``$DATABASE_URL`` (another
database here, as on a worker whose environment names one) left untouched. The report's first lines say
which source and which database; a fleet's child connected to another cluster stops before the backup.
"""

from __future__ import annotations

import json

import pytest

from safedrop.cli.main import main
from safedrop.errors import ConfigurationError, PrecheckStop
from safedrop.fleet.plandigest import stop_unless_same_database
from safedrop.pg.database import resolve_database
from safedrop.pg.pgserver import free_port
from safedrop.results import DatabaseIdentity
from tests.conftest import TARGETS
from tests.helpers import console, run

SKIP_CODE = ("--code-policy", "skip")


def _one_line(code: int, out: str, err: str, expected_code: int, line: str) -> None:
    text = out + err
    assert "Traceback" not in text, text
    assert code == expected_code, text
    assert line in text, text
    assert text.count(line) == 1, text


def _system_identifier(tdb) -> str:
    return tdb.scalar("SELECT system_identifier::text FROM pg_control_system()")


@pytest.mark.cli
def test_a_named_secret_block_without_a_prefect_server_does_not_fall_back_to_database_url(guide_db, tmp_path):
    """Reproduction: `DATABASE_URL=<db B> safedrop run --secret-block production-database` dropped B's tables."""
    before = guide_db.snapshot()
    result = console(
        tmp_path, "run", "--secret-block", "production-database", *SKIP_CODE, DATABASE_URL=guide_db.url
    )
    _one_line(
        result.returncode,
        result.stdout,
        result.stderr,
        2,
        "--secret-block production-database names a Prefect Secret block, and no Prefect server is configured "
        "to read it from: set PREFECT_API_URL, or pass --database-url",
    )
    assert guide_db.server.password not in result.stdout + result.stderr
    assert guide_db.snapshot() == before and all(guide_db.exists(t) for t in TARGETS)


@pytest.mark.usefixtures("prefect_harness", "cli_env")
def test_a_named_secret_block_that_does_not_exist_stops_and_database_url_is_not_used(
    guide_db, tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("DATABASE_URL", guide_db.url)  # another database, as a worker's environment may name
    before = guide_db.snapshot()
    code = main(
        ["run", "--secret-block", "production-database", *SKIP_CODE, "--backup-dir", str(tmp_path / "b")]
    )
    out, err = capsys.readouterr()
    _one_line(
        code,
        out,
        err,
        2,
        "no Prefect Secret block named 'production-database' (database_secret_block): create it holding the "
        "database URL",
    )
    assert guide_db.snapshot() == before and all(guide_db.exists(t) for t in TARGETS)
    assert not (tmp_path / "b").exists()  # no backup was even started


@pytest.mark.usefixtures("prefect_harness")
@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        (
            {"url": "postgresql://x@h/db"},
            "the Prefect Secret block 'odd-block' (database_secret_block) holds dict, not a PostgreSQL URL",
        ),
        (
            "mysql://app:pw@db.internal/app",
            "Secret block 'odd-block' does not hold a usable PostgreSQL URL: the database URL is for 'mysql'",
        ),
        (
            "not a url at all",
            "Secret block 'odd-block' does not hold a usable PostgreSQL URL: the database URL is malformed",
        ),
    ],
    ids=["json", "mysql", "garbage"],
)
def test_a_secret_block_that_holds_no_postgresql_url_is_named(guide_db, monkeypatch, value, fragment):
    from prefect.blocks.system import Secret

    Secret(value=value).save("odd-block", overwrite=True)
    monkeypatch.setenv("DATABASE_URL", guide_db.url)
    with pytest.raises(ConfigurationError) as caught:
        resolve_database("odd-block")
    assert str(caught.value).startswith(fragment), caught.value
    assert "pw" not in str(caught.value) and "db.internal" not in str(caught.value)


def test_a_prefect_api_that_cannot_be_reached_stops_naming_the_block(guide_db, monkeypatch):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    monkeypatch.setenv("DATABASE_URL", guide_db.url)
    with temporary_settings({PREFECT_API_URL: f"http://127.0.0.1:{free_port()}/api"}):
        with pytest.raises(ConfigurationError) as caught:
            resolve_database("production-database")
    assert str(caught.value).startswith(
        "cannot read the Prefect Secret block 'production-database' (database_secret_block): ConnectError: "
    ), caught.value
    assert str(caught.value).endswith("nothing was touched — check PREFECT_API_URL and that the server is up")


def test_a_named_environment_variable_is_the_only_source(guide_db, monkeypatch):
    monkeypatch.setenv("DATABASE_URL", guide_db.url)
    monkeypatch.delenv("EU_1_DATABASE_URL", raising=False)
    with pytest.raises(ConfigurationError, match="the environment variable EU_1_DATABASE_URL"):
        resolve_database(None, url_env="EU_1_DATABASE_URL")
    monkeypatch.setenv("EU_1_DATABASE_URL", "mysql://a:b@c/d")
    with pytest.raises(ConfigurationError) as caught:
        resolve_database(None, url_env="EU_1_DATABASE_URL")
    assert str(caught.value).startswith("$EU_1_DATABASE_URL does not hold a usable PostgreSQL URL"), (
        caught.value
    )


@pytest.mark.usefixtures("prefect_harness", "cli_env")
def test_the_report_says_which_source_and_which_database(guide_db, capsys):
    code = main(["plan", "--database-url", guide_db.url, *SKIP_CODE, "--json"])
    out, _err = capsys.readouterr()
    assert code == 0, out
    identity = json.loads(out)["database_identity"]
    port = guide_db.server.port
    assert identity == {
        "source": "--database-url",
        "host": "127.0.0.1",
        "port": port,
        "database": guide_db.name,
        "system_identifier": _system_identifier(guide_db),
    }
    main(["plan", "--database-url", guide_db.url, *SKIP_CODE])
    lines = capsys.readouterr().out.splitlines()
    assert lines[2] == (
        f"  database: {guide_db.name} on 127.0.0.1:{port} (system {_system_identifier(guide_db)}), "
        "from --database-url"
    ), lines[:4]


def test_a_fleet_child_connected_to_another_cluster_stops_before_the_backup(guide_db, tmp_path, monkeypatch):
    """The fleet's plan saw cluster X; the worker's URL now leads to this one: nothing is backed up or dropped."""
    monkeypatch.setenv("DATABASE_URL", guide_db.url)
    before = guide_db.snapshot()
    state, report = run(expected_system_identifier="1234567890", backup_dir=str(tmp_path / "b"))
    assert report.status == "stopped" and state.is_failed(), report.reasons
    assert report.reasons == [
        f"this run is connected to {guide_db.name} on 127.0.0.1:{guide_db.server.port} (system "
        f"{_system_identifier(guide_db)}), from $DATABASE_URL, not to the cluster the fleet's plan approved "
        "(system 1234567890); nothing was changed — check where this worker's $DATABASE_URL points"
    ]
    assert report.backup is None and not (tmp_path / "b").exists()
    assert guide_db.snapshot() == before


def test_the_same_cluster_passes_and_an_unreadable_identity_stops():
    here = DatabaseIdentity(source="$X", host="h", port=1, database="app", system_identifier="42")
    stop_unless_same_database("42", here)
    with pytest.raises(PrecheckStop, match="a database whose identity could not be read"):
        stop_unless_same_database("42", None)
    with pytest.raises(PrecheckStop, match=r"system identifier unreadable\), from \$X, not to the cluster"):
        stop_unless_same_database("42", here.model_copy(update={"system_identifier": None}))
