"""Checks that cannot write and cannot pass blind (issue 18, deliverables 3 and 6).

- ``--check-sql`` is one statement, refused up front otherwise; the check's transaction (and session)
  is READ ONLY and always rolled back; any error inside a check is that check's failure, never a crash.
- ``--check-url`` carrying credentials is refused as a parameter; the secure way is an environment
  variable or a Prefect Secret block named by the parameter, its URL shown masked.
- A code scan that read no file stops the run; the report counts the files read. Unquoted SQL
  identifiers match whatever their case, in code and in function bodies; a quoted one keeps its case.
- pg_cron's ``cron.job`` in another database (``cron.database_name``) is read there, or the run says it
  could not be observed — never "none".

Plain functions against the real PostgreSQL; the only CLI calls are refusals, which run nothing.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import psycopg2
import pytest
import sqlalchemy as sa
from pydantic import ValidationError

from safedrop.analysis.codescan import scan_code
from safedrop.analysis.smokechecks import run_smoke_checks, sql_check, url_check
from safedrop.cli.main import main
from safedrop.migration import TableName
from safedrop.parameters import DropParameters
from safedrop.pg.database import database_from_url, reading
from safedrop.pg.pgserver import free_port
from safedrop.report.text import render_text
from safedrop.results import RunReport
from tasks.dependencies import render, scan_dependencies
from tests.helpers import credit_plan

MIGRATION = "drop_credit_allocation_tables"
TARGETS = [TableName("public", "credit_allocation_transactions"), TableName("public", "credit_allocations")]


# --------------------------------------------------------------------------------------------------
# --check-sql: exactly one statement


@pytest.mark.parametrize(
    "query",
    [
        "SELECT true",
        "SELECT true;",
        "SELECT true; -- and a comment after it",
        "SELECT ';' = ';'",
        "SELECT $$a; b$$ <> ''",
        "SELECT $tag$ ; COMMIT; $tag$ <> ''",
        'SELECT 1 AS "a;b" WHERE false',
        "/* ; COMMIT; */ SELECT true",
        "SELECT true -- ; COMMIT\n",
        "SELECT E'it\\'s; fine' <> ''",
    ],
)
def test_one_statement_is_a_check(query):
    assert DropParameters(migration=MIGRATION, check_sql=[query]).check_sql == [query]


@pytest.mark.parametrize(
    ("query", "problem"),
    [
        ("SELECT true; COMMIT; DELETE FROM canary", "holds 3 SQL statements"),
        ("SELECT 1; SELECT 2;", "holds 2 SQL statements"),
        ("SELECT $$;$$; DELETE FROM canary", "holds 2 SQL statements"),
        ("COMMIT", "is a transaction-control statement (COMMIT)"),
        ("rollback", "is a transaction-control statement (ROLLBACK)"),
        ("BEGIN", "is a transaction-control statement (BEGIN)"),
        ("PREPARE TRANSACTION 'x'", "is a transaction-control statement (PREPARE TRANSACTION)"),
        ("", "holds no SQL statement"),
        (" ; -- nothing", "holds no SQL statement"),
        ("SELECT 'unterminated", "cannot be read as SQL (unterminated quoted string"),
    ],
)
def test_anything_but_one_query_is_refused_by_the_parameters(query, problem):
    with pytest.raises(ValidationError) as caught:
        DropParameters(migration=MIGRATION, check_sql=["SELECT true", query])
    [error] = caught.value.errors()
    assert error["loc"] == ("check_sql",), error
    assert problem in error["msg"], error["msg"]
    assert "a check is one query, run read-only and rolled back" in error["msg"], error["msg"]


# --------------------------------------------------------------------------------------------------
# reading(): READ ONLY, and rolled back whatever the block did


def test_reading_rolls_back_even_after_a_statement_ended_its_transaction(guide_db):
    guide_db.execute("CREATE TABLE canary (id int); INSERT INTO canary SELECT generate_series(1, 5)")
    with reading(guide_db.db) as conn:
        conn.exec_driver_sql("COMMIT")  # what "SELECT true; COMMIT; DELETE …" did
        try:
            conn.exec_driver_sql("DELETE FROM canary")
        except sa.exc.DBAPIError as exc:  # the session itself is read-only
            assert "read-only transaction" in str(exc.orig)
    assert guide_db.count("canary") == 5


def test_reading_rolls_back_at_the_end(guide_db):
    """NOTIFY is allowed in a READ ONLY transaction and delivered only if it commits."""
    channel = f"c_{uuid.uuid4().hex[:8]}"
    listener = psycopg2.connect(guide_db.url)
    listener.autocommit = True
    try:
        listener.cursor().execute(f"LISTEN {channel}")
        with reading(guide_db.db) as conn:
            conn.exec_driver_sql(f"NOTIFY {channel}, 'from reading'")
        control = psycopg2.connect(guide_db.url)
        control.autocommit = True
        control.cursor().execute(f"NOTIFY {channel}, 'committed'")  # proves the listener listens
        control.close()
        listener.cursor().execute("SELECT 1")  # collects what was delivered meanwhile
        assert [n.payload for n in listener.notifies] == ["committed"]
    finally:
        listener.close()


# --------------------------------------------------------------------------------------------------
# any error inside a check is that check's failure


def test_a_statement_that_returns_no_result_set_fails_its_check(guide_db):
    assert sql_check(guide_db.db, "SET search_path = public", timeout_s=5) == (
        "it returned no result set (a check is a query that returns true, or no rows)"
    )


def test_a_statement_that_ends_the_transaction_fails_its_check(guide_db):
    problem = sql_check(guide_db.db, "COMMIT", timeout_s=5)  # past the parameters' own refusal
    assert problem == "it ended the check's transaction (COMMIT/ROLLBACK); a check is one query", problem


def test_a_check_that_cannot_connect_fails_with_one_secret_free_line(pg):
    db = database_from_url(
        pg.url("postgres", password="wrong-pass-123").replace(str(pg.port), str(free_port()))
    )
    problem = sql_check(db, "SELECT true", timeout_s=5)
    assert problem.startswith("it could not run: cannot connect to postgres@127.0.0.1:"), problem
    assert "wrong-pass-123" not in problem and "\n" not in problem


def test_a_check_past_its_timeout_fails(guide_db):
    problem = sql_check(guide_db.db, "SELECT pg_sleep(30) IS NULL", timeout_s=0.3)
    assert problem == "it raised: canceling statement due to statement timeout", problem


def test_a_url_that_httpx_cannot_even_parse_fails_its_check():
    assert url_check("http://[::1/health", timeout_s=1) == "no answer (InvalidURL)"


def test_run_smoke_checks_never_raises(guide_db):
    result = run_smoke_checks(
        guide_db.db,
        ["SET search_path = public", "COMMIT", "SELECT true"],
        ["http://[::1/health"],
        timeout_s=5,
    )
    assert [bool(c.problem) for c in result.checks] == [True, True, False, True]


# --------------------------------------------------------------------------------------------------
# --check-url: no secret as a parameter; from an environment variable or a Secret block instead


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("https://ops:s3cr3t@app.internal/health", "carries credentials (user:password@)"),
        ("https://s3cr3t@app.internal/health", "carries credentials (user:password@)"),
        ("https://app.internal/health?token=s3cr3t", "carries a secret in its query string (token=…)"),
        ("https://app.internal/health?x=1&access_token=s3cr3t", "(access_token=…)"),
        ("https://app.internal/health?api_key=s3cr3t", "(api_key=…)"),
        ("https://app.internal/health?key=s3cr3t", "(key=…)"),
        ("https://app.internal/health?password=s3cr3t", "(password=…)"),
        ("https://app.internal/health?secret=s3cr3t", "(secret=…)"),
        ("https://app.internal/health?signature=s3cr3t", "(signature=…)"),
        ("https://app.internal/health?sig=s3cr3t", "(sig=…)"),
        ("https://app.internal/health?X-Amz-Signature=s3cr3t", "(X-Amz-Signature=…)"),
        ("https://app.internal/health?client_secret=s3cr3t", "(client_secret=…)"),
        ("https://app.internal/health?apiKey=s3cr3t", "(apiKey=…)"),
    ],
)
def test_a_check_url_with_a_secret_is_refused_by_the_parameters(url, problem):
    with pytest.raises(ValidationError) as caught:
        DropParameters(migration=MIGRATION, check_urls=[url])
    [error] = caught.value.errors()
    assert problem in error["msg"], error["msg"]
    assert "check_url_envs" in error["msg"] and "check_url_secret_blocks" in error["msg"]
    assert "s3cr3t" not in str(caught.value)


def test_the_server_refuses_a_run_whose_check_url_has_a_secret_before_storing_it():
    """What Prefect's server does when a deployment run is created (enforce_parameter_schema): the
    parameter form's schema refuses the URL, so no flow run (and no log of it) ever holds the secret."""
    from prefect.flows import load_flow_from_entrypoint
    from prefect.utilities.schema_tools import validate

    schema = load_flow_from_entrypoint(
        "flows.drop_deprecated_tables:drop_deprecated_tables", use_placeholder_flow=False
    ).parameters.model_dump()
    secret = ["https://ops:s3cr3t@app.internal/h", "https://app.internal/h?x=1&X-Amz-Signature=s3cr3t"]
    for url in secret + ["https://app.internal/h?apiKey=s3cr3t", "https://app.internal/h?token=s3cr3t"]:
        params = {"params": {"migration": MIGRATION, "check_urls": [url]}}
        assert validate(params, schema), url
    fine = ["https://app.internal/health?verbose=1&monkey=2&tokenId=3", "http://127.0.0.1:8080/users/@me"]
    assert validate({"params": {"migration": MIGRATION, "check_urls": fine}}, schema) == []


def test_a_check_url_without_a_secret_is_a_parameter():
    urls = ["https://app.internal/health?verbose=1&monkey=2", "http://127.0.0.1:8080/ok"]
    assert DropParameters(migration=MIGRATION, check_urls=urls).check_urls == urls


class Health(BaseHTTPRequestHandler):
    """200 only with the token in the query string."""

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self.send_response(200 if "token=tok-123" in self.path else 403)
        self.end_headers()

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


def test_a_check_url_from_an_environment_variable_is_read_at_check_time_and_shown_masked(
    guide_db, app_health, monkeypatch
):
    monkeypatch.setenv("APP_HEALTH_URL", f"{app_health}/health/deep?token=tok-123")
    monkeypatch.delenv("NO_SUCH_HEALTH_URL", raising=False)
    monkeypatch.setenv("NOT_A_URL", "ftp://tok-123@files")
    params = DropParameters(
        migration=MIGRATION, check_url_envs=["APP_HEALTH_URL", "NO_SUCH_HEALTH_URL", "NOT_A_URL"]
    )
    result = run_smoke_checks(
        guide_db.db, [], [], timeout_s=5, url_envs=params.check_url_envs, url_secret_blocks=[]
    )
    shown = [(c.check, c.problem) for c in result.checks]
    assert shown == [
        (f"$APP_HEALTH_URL ({app_health}/…)", ""),
        ("$NO_SUCH_HEALTH_URL", "the environment variable NO_SUCH_HEALTH_URL is not set on this machine"),
        ("$NOT_A_URL", "its value is not an http(s) URL"),
    ]
    assert "tok-123" not in result.model_dump_json()


@pytest.mark.usefixtures("prefect_harness")
def test_a_check_url_from_a_secret_block_is_read_at_check_time_and_shown_masked(guide_db, app_health):
    from prefect.blocks.system import Secret

    name = f"health-{uuid.uuid4().hex[:8]}"
    Secret(value=f"{app_health}/ok?token=tok-123").save(name)
    result = run_smoke_checks(
        guide_db.db, [], [], timeout_s=5, url_envs=[], url_secret_blocks=[name, "no-such-block-x"]
    )
    shown = [(c.check, c.problem) for c in result.checks]
    assert shown[0] == (f"Secret block {name!r} ({app_health}/…)", "")
    assert shown[1][0] == "Secret block 'no-such-block-x'"
    assert shown[1][1].startswith("cannot read the Prefect Secret block 'no-such-block-x'"), shown[1]
    assert "tok-123" not in result.model_dump_json()


# --------------------------------------------------------------------------------------------------
# the CLI: refused up front, exit 2, one line, nothing touched


@pytest.mark.usefixtures("prefect_harness", "cli_env")
@pytest.mark.parametrize(
    ("flags", "line"),
    [
        (
            ["--check-sql", "SELECT true; COMMIT; DELETE FROM canary"],
            "safedrop: --check-sql 'SELECT true; COMMIT; DELETE FROM canary' holds 3 SQL statements; a "
            "check is one query, run read-only and rolled back: give each its own --check-sql",
        ),
        (
            ["--check-url", "https://ops:s3cr3t@app.internal/health?x=1"],
            "safedrop: --check-url https://app.internal/health carries credentials (user:password@); a URL "
            "holding a secret is never a parameter: put it in an environment variable (--check-url-env "
            "NAME) or a Prefect Secret block (--check-url-secret-block NAME)",
        ),
        (
            ["--check-url-env", "NO_SUCH_HEALTH_URL"],
            "safedrop: the smoke check's URL variable NO_SUCH_HEALTH_URL (check_url_envs) is not set on this "
            "machine",
        ),
        (
            ["--check-url-secret-block", "no-such-health-block"],
            "safedrop: the smoke check's URL (check_url_secret_blocks): cannot read the Prefect Secret block "
            "'no-such-health-block': there is no such block",
        ),
    ],
    ids=["two-statements", "url-credentials", "env-unset", "no-such-block"],
)
def test_the_cli_refuses_an_unsafe_check_before_anything_runs(guide_db, capsys, monkeypatch, flags, line):
    monkeypatch.delenv("NO_SUCH_HEALTH_URL", raising=False)
    guide_db.execute("CREATE TABLE canary (id int); INSERT INTO canary SELECT generate_series(1, 5)")
    before = guide_db.snapshot()
    code = main(["run", "--database-url", guide_db.url, "--code-policy", "skip", *flags])
    out, err = capsys.readouterr()
    assert code == 2
    assert err.strip() == line
    assert "s3cr3t" not in out + err
    assert guide_db.snapshot() == before  # the targets and canary's rows are all still there


# --------------------------------------------------------------------------------------------------
# the code scan: zero files read is a stop; the report counts files read


def _write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_a_code_scan_of_an_empty_directory_stops_the_run(tmp_path):
    (tmp_path / "app").mkdir()
    for dry_run in (True, False):
        result = scan_code([str(tmp_path / "app")], TARGETS, dry_run=dry_run)
        assert result.reasons == [f"the code scan read no files under {tmp_path / 'app'}; check --code-path"]
        assert result.files_read == 0 and [s.files_read for s in result.sources] == [0]


def test_a_code_scan_whose_files_are_all_excluded_stops_the_run(tmp_path):
    app = _write(tmp_path / "app", {"src/a.py": "x = 1\n", "README.md": "credit_allocations\n"})
    for globs in ({"include": ["*.ts"]}, {"exclude": ["src/"]}):
        result = scan_code([str(app)], TARGETS, policy="warn", **globs)
        assert result.reasons == [
            f"the code scan read no files under {app}; check --code-path and the --code-include/"
            "--code-exclude globs"
        ], globs


def test_the_report_counts_the_files_read(tmp_path):
    app = _write(
        tmp_path / "app",
        {
            "src/a.js": "const a = 1;\n",
            "src/b.ts": "let b = 2;\n",
            "lib/c.sql": "SELECT 1;\n",
            "docs/x.md": "x\n",
        },
    )
    result = scan_code([str(app)], TARGETS)
    assert result.reasons == [] and result.files_read == 3
    assert [s.files_read for s in result.sources] == [3]
    report = RunReport(
        status="ready", migration=MIGRATION, dry_run=True, code_scan="done", code_sources=result.sources
    )
    assert "  code references: 0 in 0 file(s); read 3 files" in render_text(report)
    assert json.loads(report.model_dump_json())["code_sources"][0]["files_read"] == 3


def test_unquoted_sql_identifiers_in_code_match_whatever_their_case(tmp_path):
    app = _write(
        tmp_path / "app",
        {
            "src/report.js": "db.query('SELECT * FROM Credit_Allocations WHERE id = $1', [id]);\n",
            "src/report.ts": "const q = `select count(*) from PUBLIC.CREDIT_ALLOCATIONS`;\n",
            "sql/report.sql": "SELECT * FROM credit_Allocation_Transactions;\n",
            "src/other.js": "db.query('SELECT * FROM \"Credit_Allocations\"');  // another table\n",
            "src/lookalike.js": "const CREDIT_ALLOCATIONS_TOTAL = row.Credit_Allocations_id;\n",
        },
    )
    result = scan_code([str(app)], TARGETS)
    found = {(r.path, r.identifier) for r in result.references}
    assert found == {
        ("src/report.js", "Credit_Allocations"),
        ("src/report.ts", "CREDIT_ALLOCATIONS"),
        ("sql/report.sql", "credit_Allocation_Transactions"),
    }


# --------------------------------------------------------------------------------------------------
# function bodies: unquoted identifiers whatever their case; a quoted one is another table


def test_function_bodies_match_unquoted_identifiers_whatever_their_case(guide_db):
    guide_db.execute(
        """
        CREATE FUNCTION upper_case_use() RETURNS bigint LANGUAGE plpgsql AS
          $$ BEGIN RETURN (SELECT count(*) FROM Public.Credit_Allocations); END $$;
        CREATE TABLE "Credit_Allocations" (id int);
        CREATE FUNCTION quoted_other_table() RETURNS bigint LANGUAGE plpgsql AS
          $$ BEGIN RETURN (SELECT count(*) FROM "Credit_Allocations"); END $$;
        CREATE FUNCTION quoted_same_table() RETURNS bigint LANGUAGE plpgsql AS
          $$ BEGIN RETURN (SELECT count(*) FROM public."credit_allocations"); END $$;
        """
    )
    _, _, result = credit_plan(guide_db)
    names = {u.name for u in result.untracked}
    assert names == {"public.upper_case_use()", "public.quoted_same_table()"}, names


# --------------------------------------------------------------------------------------------------
# pg_cron: cron.job in another database


CRON_JOB_TABLE = """
    CREATE SCHEMA cron;
    CREATE TABLE cron.job (
        jobid bigserial PRIMARY KEY, schedule text NOT NULL, command text NOT NULL,
        nodename text NOT NULL DEFAULT 'localhost', nodeport int NOT NULL DEFAULT 5432,
        database text NOT NULL DEFAULT current_database(), username text NOT NULL DEFAULT current_user,
        active boolean NOT NULL DEFAULT true, jobname text
    );
"""


def _cron_jobs(database: str) -> str:
    return CRON_JOB_TABLE + (
        "INSERT INTO cron.job (schedule, command, database, jobname) VALUES "
        f"('0 * * * *', 'DELETE FROM Credit_Allocations WHERE amount = 0', '{database}', 'purge'), "
        "('0 * * * *', 'DELETE FROM credit_allocations', 'some_other_database', 'elsewhere');"
    )


@pytest.fixture
def cron_home(pg) -> Iterator[str]:
    name = f"cron_{uuid.uuid4().hex[:12]}"
    pg.psql(f"CREATE DATABASE {name}")
    try:
        yield name
    finally:
        pg.psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def _cron_refs(tdb):
    migration, oids, _ = credit_plan(tdb)
    result = scan_dependencies(tdb.db, migration, oids)
    return [u for u in result.untracked if u.kind == "cron job"], result


def test_cron_jobs_in_this_database_are_read_here(guide_db):
    guide_db.execute(_cron_jobs(guide_db.name))
    refs, result = _cron_refs(guide_db)
    assert [(u.name, u.mentions) for u in refs] == [("purge", "public.credit_allocations")]
    assert f"database {guide_db.name}" in refs[0].breaks
    assert any("cron job purge" in r for r in result.reasons)


def test_cron_jobs_in_another_database_are_read_there(guide_db, cron_home, pg):
    pg.psql(_cron_jobs(guide_db.name), database=cron_home)
    guide_db.execute(f"ALTER DATABASE {guide_db.name} SET cron.database_name = '{cron_home}'")
    refs, result = _cron_refs(guide_db)
    assert [(u.name, u.mentions) for u in refs] == [("purge", "public.credit_allocations")]
    assert not any("pg_cron" in w for w in result.warnings), result.warnings


def test_cron_jobs_that_cannot_be_read_are_a_warning_never_none(guide_db):
    guide_db.execute(f"ALTER DATABASE {guide_db.name} SET cron.database_name = 'no_such_cron_db'")
    refs, result = _cron_refs(guide_db)
    assert refs == []
    [warning] = [w for w in result.warnings if "pg_cron" in w]
    assert warning.startswith(
        "pg_cron jobs: not observable from this database (cron.job lives in database no_such_cron_db: "
        "cannot connect to postgres@127.0.0.1:"
    ), warning
    assert guide_db.server.password not in warning
    shown = render(result)
    assert warning in shown and "No function, trigger or cron job body" not in shown, shown


@pytest.mark.parametrize(
    ("grants", "warning"),
    [
        (
            "GRANT USAGE ON SCHEMA cron TO {role}; GRANT SELECT ON cron.job TO {role};",
            "pg_cron jobs: only this role's own jobs are visible (row security on cron.job hides the other "
            "roles')",
        ),
        (
            "",
            "pg_cron jobs: not observable from this database (cron.job could not be read: permission denied",
        ),
    ],
    ids=["row-security", "no-usage-on-schema-cron"],
)
def test_cron_jobs_this_role_cannot_see_are_a_warning(guide_db, pg, grants, warning):
    """pg_cron's own policy shows each role only its jobs; a role without rights on schema cron cannot
    even ask to_regclass about it. Neither ends the scan, neither reports "none"."""
    role = f"r_{uuid.uuid4().hex[:8]}"
    guide_db.execute(
        _cron_jobs(guide_db.name)
        + f"""
        ALTER TABLE cron.job ENABLE ROW LEVEL SECURITY;
        CREATE POLICY cron_job_policy ON cron.job USING (username = CURRENT_USER);
        CREATE ROLE {role} LOGIN PASSWORD 'pw-{role}';
        """
        + grants.format(role=role)
    )
    try:
        db = database_from_url(pg.url(guide_db.name, user=role, password=f"pw-{role}"))
        migration, oids, _ = credit_plan(guide_db)
        result = scan_dependencies(db, migration, oids)
        assert not [u for u in result.untracked if u.kind == "cron job"]  # its jobs are not this role's
        [found] = [w for w in result.warnings if "pg_cron" in w]
        assert found.startswith(warning), found
    finally:
        guide_db.execute(f"DROP OWNED BY {role}")
        pg.psql(f"DROP ROLE IF EXISTS {role}")


# --------------------------------------------------------------------------------------------------
# the whole run: nothing is dropped on a scan that saw nothing, or a check this machine cannot read


@pytest.mark.usefixtures("prefect_harness")
def test_a_run_whose_code_path_is_an_empty_directory_drops_nothing(guide_db, tmp_path, monkeypatch):
    """Reproduction: `--code-path` of an empty directory (a wrong mount, an empty clone) passed and dropped."""
    from tests.helpers import run

    monkeypatch.setenv("DATABASE_URL", guide_db.url)
    (tmp_path / "app").mkdir()
    before = guide_db.snapshot()
    state, report = run(
        code_paths=[str(tmp_path / "app")], code_policy="fail", backup_dir=str(tmp_path / "b")
    )
    assert report.status == "stopped" and state.is_failed(), report.reasons
    assert report.reasons == [f"the code scan read no files under {tmp_path / 'app'}; check --code-path"]
    assert report.backup is None and report.dropped == [] and guide_db.snapshot() == before


@pytest.mark.usefixtures("prefect_harness")
def test_a_named_check_url_this_worker_cannot_read_stops_before_the_backup(guide_db, tmp_path, monkeypatch):
    """A deployment's check_url_envs / check_url_secret_blocks are read on the worker: one it lacks stops
    the run in the prechecks, not after the drop."""
    from tests.helpers import run

    monkeypatch.setenv("DATABASE_URL", guide_db.url)
    monkeypatch.delenv("APP_HEALTH_URL", raising=False)
    before = guide_db.snapshot()
    state, report = run(
        check_url_envs=["APP_HEALTH_URL"],
        check_url_secret_blocks=["no-such-health-block"],
        backup_dir=str(tmp_path / "b"),
    )
    assert report.status == "stopped", report.reasons
    assert report.reasons == [
        "the smoke check's URL variable APP_HEALTH_URL (check_url_envs) is not set on this machine",
        "the smoke check's URL (check_url_secret_blocks): cannot read the Prefect Secret block "
        "'no-such-health-block': there is no such block",
    ]
    assert report.backup is None and not (tmp_path / "b").exists() and guide_db.snapshot() == before
