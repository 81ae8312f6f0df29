"""The `safedrop` command: the contract (subcommands, flags, --json, exit codes) and its failure lines.

Most tests call ``main()`` in-process inside the Prefect test harness (the flow runs through Prefect,
as with a server); the tests marked ``cli`` run the installed console script as a user would, without
a Prefect server (its steps in-process, ~2 s each).
"""

from __future__ import annotations

import json
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

import pytest

from safedrop.analysis.codescan import NO_SOURCE_REASON, SKIPPED_BY_POLICY, SKIPPED_WARNING
from safedrop.cli.commands import parse_duration_ms
from safedrop.cli.main import main
from safedrop.pg.pgserver import free_port
from tests.conftest import ROOT, TARGETS
from tests.gitrepos import leftovers, make_app_repo, private_tempdir
from tests.helpers import SAFEDROP, archive_listing, console, console_env

pytestmark = pytest.mark.usefixtures("prefect_harness", "cli_env")

SKIP_CODE = ("run", "--code-policy", "skip")  # a run that drops needs a code source, or says it skips one


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_plan_json_on_a_clean_database_is_ready(guide_db, capsys):
    code, out, err = cli(capsys, "plan", "--database-url", guide_db.url, "--json")
    report = json.loads(out)
    assert code == 0, report
    assert report["status"] == "ready"
    assert {"status", "reasons", "targets", "backup", "cascade", "code_references"} <= set(report)
    assert [t["name"] for t in report["targets"]] == [f"public.{t}" for t in TARGETS]
    assert guide_db.server.password not in out + err


def test_keep_takes_repeated_and_comma_separated_tables(guide_db, capsys):
    code, out, _ = cli(
        capsys,
        "plan",
        "--database-url",
        guide_db.url,
        "--json",
        "--keep",
        "credits, credit_usage",
        "--keep",
        "public.tenants",
    )
    report = json.loads(out)
    assert code == 0, report["reasons"]
    assert [t["name"] for t in report["keep"]] == ["public.credits", "public.credit_usage", "public.tenants"]


def test_keep_defaults_to_the_migrations_own_list(guide_db, capsys):
    code, out, _ = cli(capsys, "plan", "--database-url", guide_db.url, "--json")
    report = json.loads(out)
    assert code == 0, report["reasons"]
    assert [t["name"] for t in report["keep"]] == [
        f"public.{t}"
        for t in [
            "credits",
            "credit_transactions",
            "credit_purchases",
            "credit_usage",
            "credit_configurations",
        ]
    ]  # keep = [...] in sql/drop_credit_allocation_tables.sql

    before = guide_db.snapshot()
    code, out, _ = cli(
        capsys, "plan", "--database-url", guide_db.url, "--migration", "drop_legacy_invoice_exports", "--json"
    )
    report = json.loads(out)
    assert code == 3 and report["status"] == "stopped"
    assert [t["name"] for t in report["keep"]] == ["public.invoices", "public.invoice_exports"]
    for table in ("public.invoices", "public.invoice_exports"):
        assert (
            f"{table} must survive the drop but does not exist; check --keep for a typo" in report["reasons"]
        )
    assert guide_db.snapshot() == before


SETTINGS = (
    "-- [safedrop]\n"
    '-- deployment = "allocations"\n'
    '-- keep = ["credits"]\n'
    '-- code_paths = ["https://git.example.com/app.git#main"]\n'
    '-- schedule = { cron = "0 3 * * SUN", timezone = "UTC", active = false }\n'
    '-- readiness = { cron = "0 2 * * *", timezone = "UTC", active = true }\n'
    "DROP TABLE credit_allocations;\n"
)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            ("keep =", "kep ="),
            "settings: keep is missing; unknown setting kep",
        ),
        (
            ("active = false", 'active = "false"'),
            "settings: schedule.active: Input should be a valid boolean",
        ),
        (
            ("0 3 * * SUN", "0 3 * *"),
            'settings: schedule: Invalid cron string: "0 3 * *"',
        ),
        (
            ('-- keep = ["credits"]', '-- keep = ["credits"'),
            "settings do not parse: Unclosed array (line 4)",
        ),
        (
            ('"allocations"', '"Allocations Q3"'),
            "settings: deployment: 'Allocations Q3' is not a deployment name: use lowercase letters, "
            'digits and single hyphens (at most 60), e.g. "legacy-invoice-exports"',
        ),
        (
            ("https://git.example.com", "https://deploy:s3cret@git.example.com"),
            "settings: code_paths: code path https://git.example.com/app.git carries credentials in its "
            "URL, and Prefect stores parameters in plain text; put the token or key in a Prefect Secret "
            "block and pass --code-secret-block NAME (code_secret_block) with the URL alone",
        ),
        (
            ("DROP TABLE credit_allocations;\n", "DROP TABLE credit_allocations;\n-- [safedrop]\n"),
            "line 8: one [safedrop] settings block may open the file, before the first statement",
        ),
    ],
    ids=["unknown", "type", "cron", "toml", "name", "credentials", "late"],
)
def test_a_migration_with_bad_settings_is_refused_in_one_line(guide_db, capsys, tmp_path, change, message):
    bad = tmp_path / "drop_allocations.sql"
    bad.write_text(SETTINGS.replace(*change))
    before = guide_db.snapshot()
    code, out, err = cli(capsys, "plan", "--database-url", guide_db.url, "--migration", str(bad))
    assert code == 2 and out == ""
    assert err.strip() == f"safedrop: migration {bad} {message}"
    assert "s3cret" not in err
    assert guide_db.snapshot() == before


def test_plan_json_names_every_reason_and_exits_3(guide_db, capsys, tmp_path):
    guide_db.execute(
        "INSERT INTO credit_allocations (tenant_id, credit_id, amount, period_start, period_end) "
        "VALUES (1, 1, 10, '2024-01-01', '2024-02-01');"
        "CREATE VIEW org_credit_overview AS SELECT * FROM credit_allocations;"
    )
    app = tmp_path / "app"
    app.mkdir()
    (app / "model.ts").write_text("export interface CreditAllocation { id: number }\n")
    before = guide_db.snapshot()
    code, out, _ = cli(capsys, "plan", "--database-url", guide_db.url, "--code-path", str(app), "--json")
    report = json.loads(out)
    assert code == 3 and report["status"] == "stopped"
    text = " ".join(report["reasons"])
    assert "public.credit_allocations still has 1 rows" in text
    assert "view public.org_credit_overview" in text
    assert "code still references the targets" in text
    assert report["cascade"] == [
        {**report["cascade"][0], "kind": "view", "name": "public.org_credit_overview"}
    ]
    assert report["code_references"][0] == {
        **report["code_references"][0],
        "path": "model.ts",
        "line": 1,
        "identifier": "CreditAllocation",
    }
    assert guide_db.snapshot() == before


def test_run_drops_and_prints_a_readable_summary(guide_db, capsys, tmp_path):
    code, out, _ = cli(
        capsys, *SKIP_CODE, "--database-url", guide_db.url, "--backup-dir", str(tmp_path / "bk")
    )
    assert code == 0, out
    assert "SUCCEEDED" in out and "backup:" in out and "verification: passed" in out
    assert not any(guide_db.exists(t) for t in TARGETS)
    dump = next((tmp_path / "bk").glob("*.dump"))
    assert stat.S_IMODE(dump.stat().st_mode) == 0o600
    toc = archive_listing(dump)
    assert all(f"TABLE public {t} " in toc for t in TARGETS)
    # and again: already applied, exit 0
    code, out, _ = cli(
        capsys, *SKIP_CODE, "--database-url", guide_db.url, "--backup-dir", str(tmp_path / "bk")
    )
    assert code == 0 and "ALREADY APPLIED" in out


def test_run_stops_with_3_and_changes_nothing_when_something_depends(guide_db, capsys, tmp_path):
    guide_db.execute(
        "ALTER TABLE credit_usage ADD COLUMN allocation_id bigint REFERENCES credit_allocations (id)"
    )
    before = guide_db.snapshot()
    code, out, _ = cli(
        capsys, *SKIP_CODE, "--database-url", guide_db.url, "--backup-dir", str(tmp_path / "bk")
    )
    assert code == 3
    assert "STOPPED" in out
    assert (
        "foreign key (1): ✗ credit_usage_allocation_id_fkey on public.credit_usage" in out
    )  # grouped by kind
    assert (
        "would be removed or broken by the drop" in out and out.count("credit_usage_allocation_id_fkey") == 1
    )
    assert guide_db.snapshot() == before
    assert not (tmp_path / "bk").exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--database-url", "not a url"], "the database URL is malformed"),
        (["--database-url", "mysql://u:p@localhost/db"], "the database URL is for 'mysql', not PostgreSQL"),
        (["--database-url", "postgresql://u:p@localhost/"], "the database URL names no database"),
        (["--migration", "no_such_migration"], "no migration named 'no_such_migration'"),
        (["--code-path", "/no/such/dir"], "code path /no/such/dir does not exist"),
        (["--keep", "a.b.c"], "table name 'a.b.c' is empty or malformed"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_touches_nothing(guide_db, capsys, argv, message):
    before = guide_db.snapshot()
    args = ["run", *argv] if "--database-url" in argv else ["run", "--database-url", guide_db.url, *argv]
    code, out, err = cli(capsys, *args)
    assert code == 2
    assert err.strip().count("\n") == 0 and message in err and "Traceback" not in err
    assert guide_db.snapshot() == before


def test_a_migration_that_does_not_parse_is_refused(guide_db, capsys, tmp_path):
    bad = tmp_path / "broken.sql"
    bad.write_text("DROP TABL credit_allocations;")
    before = guide_db.snapshot()
    code, _, err = cli(capsys, "run", "--database-url", guide_db.url, "--migration", str(bad))
    assert code == 2
    assert f'migration {bad} does not parse: syntax error at or near "TABL"' in err
    assert guide_db.snapshot() == before


def test_a_wrong_password_fails_in_one_line_without_the_password(guide_db, capsys):
    url = guide_db.server.url(guide_db.name, password="Wr0ng-Pa55word-xyz")
    code, out, err = cli(capsys, "plan", "--database-url", url)
    assert code == 1
    assert "password authentication failed" in out
    assert "Wr0ng-Pa55word-xyz" not in out + err


def test_an_unreachable_server_is_retried_then_named(capsys):
    url = f"postgresql://postgres:secret-xyz@127.0.0.1:{free_port()}/app"
    code, out, err = cli(capsys, "plan", "--database-url", url, "--json")
    report = json.loads(out)
    assert code == 1 and report["status"] == "failed"
    assert report["reasons"][0].startswith("cannot connect to postgres@127.0.0.1:")
    assert "secret-xyz" not in out + err


# --------------------------------------------------------------------------------------------------
# code sources: git URLs, and a run with none


@pytest.fixture
def app_repo(tmp_path):
    (tmp_path / "remote").mkdir()
    return make_app_repo(tmp_path / "remote")


@pytest.fixture
def temp_root(tmp_path, monkeypatch):
    return private_tempdir(monkeypatch, tmp_path)


def test_plan_with_a_git_url_finds_the_live_references(guide_db, capsys, app_repo, temp_root):
    before = guide_db.snapshot()
    code, out, err = cli(
        capsys, "plan", "--database-url", guide_db.url, "--code-path", app_repo.url, "--json"
    )
    report = json.loads(out)
    assert code == 3 and report["status"] == "stopped", report["reasons"]
    assert report["reasons"] == [
        "code still references the targets: 1 reference in 1 file (first: src/services/billing.js:1 "
        "credit_allocations); remove them, or pass --code-policy warn"
    ]
    assert [(r["root"], r["path"], r["line"]) for r in report["code_references"]] == [
        (app_repo.url, "src/services/billing.js", 1)
    ]
    [source] = report["code_sources"]
    assert {k: source[k] for k in ("root", "kind", "url", "ref", "commit")} == {
        "root": app_repo.url,
        "kind": "git",
        "url": app_repo.url,
        "ref": None,
        "commit": app_repo.main,
    }
    assert "Traceback" not in err
    assert guide_db.snapshot() == before
    assert leftovers(temp_root) == []


@pytest.mark.parametrize(("ref", "commit", "exit_code"), [("cleanup", "cleanup", 0), ("v1.0", "tag", 3)])
def test_plan_scans_the_ref_it_is_given(guide_db, capsys, app_repo, temp_root, ref, commit, exit_code):
    sha = getattr(app_repo, commit)
    code, out, _ = cli(capsys, "plan", "--database-url", guide_db.url, "--code-path", f"{app_repo.url}#{ref}")
    assert code == exit_code, out
    assert f"scanned {app_repo.url}#{ref} at commit {sha}" in out
    if ref == "v1.0":
        assert "    src/models/CreditAllocation.ts  1  (first: line 1, CreditAllocation)" in out  # by file


@pytest.mark.parametrize("command", ["plan", "run"])
@pytest.mark.parametrize("source", ["unknown-ref", "missing-repository"])
def test_a_git_source_that_cannot_be_fetched_stops_with_one_line(
    guide_db, capsys, app_repo, tmp_path, temp_root, command, source
):
    if source == "unknown-ref":
        spec, url = f"{app_repo.url}#no-such-branch", app_repo.url
        why = "no branch, tag or commit 'no-such-branch' in the repository; fix the #REF of --code-path (code_paths)"
    else:
        spec = url = (tmp_path / "gone.git").as_uri()
        why = "no such repository; check the URL in --code-path (code_paths)"
    before = guide_db.snapshot()
    extra = ["--backup-dir", str(tmp_path / "bk")] if command == "run" else []
    code, out, err = cli(
        capsys, command, "--database-url", guide_db.url, "--code-path", spec, *extra, "--json"
    )
    report = json.loads(out)
    assert code == 3 and report["status"] == "stopped"
    assert report["reasons"] == [f"cannot fetch the code at {url}: {why}"]
    assert "Traceback" not in err
    assert guide_db.snapshot() == before
    assert not (tmp_path / "bk").exists()
    assert leftovers(temp_root) == []


def test_a_run_without_a_code_source_stops_unless_told_to_skip(guide_db, capsys, tmp_path):
    before = guide_db.snapshot()
    code, out, _ = cli(
        capsys, "run", "--database-url", guide_db.url, "--backup-dir", str(tmp_path / "bk"), "--json"
    )
    report = json.loads(out)
    assert code == 3 and report["status"] == "stopped"
    assert report["reasons"] == [NO_SOURCE_REASON]
    assert guide_db.snapshot() == before
    assert not (tmp_path / "bk").exists()

    code, out, _ = cli(capsys, "plan", "--database-url", guide_db.url, "--json")  # a plan only warns
    report = json.loads(out)
    assert code == 0 and report["status"] == "ready" and SKIPPED_WARNING in report["warnings"]

    code, out, _ = cli(
        capsys, *SKIP_CODE, "--database-url", guide_db.url, "--backup-dir", str(tmp_path / "bk")
    )
    assert code == 0, out
    assert "SUCCEEDED" in out and f"! {SKIPPED_BY_POLICY}" in out
    assert not any(guide_db.exists(t) for t in TARGETS)


def test_a_git_url_with_credentials_is_refused_in_one_line(guide_db, capsys):
    token = "ghp_Recognisable0Token0Qx7"
    before = guide_db.snapshot()
    for extra in ([], ["--json"]):
        code, out, err = cli(
            capsys,
            "run",
            "--database-url",
            guide_db.url,
            "--code-path",
            f"https://ci:{token}@github.com/acme/billing.git#main",
            *extra,
        )
        assert code == 2
        assert err.strip().count("\n") == 0 and "Traceback" not in err
        assert "code path https://github.com/acme/billing.git carries credentials in its URL" in err
        assert "--code-secret-block NAME" in err
        assert token not in out + err
    assert guide_db.snapshot() == before


def test_durations():
    assert parse_duration_ms("500ms") == 500
    assert parse_duration_ms("2s") == 2000
    assert parse_duration_ms("1.5s") == 1500
    assert parse_duration_ms("5m") == 300_000


@pytest.mark.cli
def test_console_script_plan_json(guide_db, tmp_path):
    """The installed `safedrop` as a user runs it: no Prefect server, DATABASE_URL from the environment."""
    result = console(tmp_path, "plan", "--json", DATABASE_URL=guide_db.url)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout)["status"] == "ready"
    assert guide_db.server.password not in result.stdout + result.stderr


LAGO_FILES = 320  # the Lago Rails app: wallet_transactions and credit_notes referenced from ~300 files


def lago_sized_app(root: Path) -> Path:
    """An application with hundreds of files using the targets, a few of them many times."""
    for i in range(LAGO_FILES):
        uses = 40 if i < 3 else 1 + i % 4
        body = "".join(f"CreditAllocation.where(id: {n})  # credit_allocations\n" for n in range(uses))
        path = root / "app" / ("models" if i % 2 else "services") / f"file_{i:03}.rb"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(body)
    return root


@pytest.mark.cli
def test_a_lago_sized_plan_reads_in_under_60_lines(guide_db, tmp_path):
    """Hundreds of referencing files, views and a foreign key: each reason once, the code grouped by file
    (relative paths, counts, the busiest first, '… and N more files'), the CASCADE list by kind; stderr
    has progress lines only. --json keeps every reference."""
    guide_db.execute(
        "CREATE VIEW org_credit_overview AS SELECT tenant_id FROM credit_allocations;"
        "CREATE VIEW allocation_totals AS SELECT sum(amount) FROM credit_allocations;"
        "ALTER TABLE credit_usage ADD COLUMN allocation_id bigint REFERENCES credit_allocations (id);"
    )
    app = lago_sized_app(tmp_path / "lago")
    before = guide_db.snapshot()
    result = console(tmp_path, "plan", "--database-url", guide_db.url, "--code-path", str(app))
    out = result.stdout
    assert result.returncode == 3 and "Traceback" not in out + result.stderr, out + result.stderr
    assert len(out.splitlines()) < 60, out
    assert (
        out.count("public.org_credit_overview") == 1 and out.count("credit_usage_allocation_id_fkey") == 1
    ), out
    assert "app/services/file_000.rb" in out and str(app) not in out, out  # relative to the scanned root
    assert "… and " in out and " more files" in out, out
    assert all(line.startswith("· ") for line in result.stderr.splitlines() if line.strip()), result.stderr
    complete = console(tmp_path, "plan", "--database-url", guide_db.url, "--code-path", str(app), "--json")
    references = json.loads(complete.stdout)["code_references"]
    assert len({r["path"] for r in references}) == LAGO_FILES
    assert guide_db.snapshot() == before


@pytest.mark.cli
def test_plan_markdown_is_a_pull_request_comment(guide_db, tmp_path):
    """`safedrop plan --markdown`: what a migration would remove, as the application's CI would post it."""
    guide_db.execute("CREATE VIEW org_credit_overview AS SELECT tenant_id FROM credit_allocations")
    app = lago_sized_app(tmp_path / "lago")
    result = console(tmp_path, "plan", "--database-url", guide_db.url, "--code-path", str(app), "--markdown")
    md = result.stdout
    assert result.returncode == 3 and "Traceback" not in md + result.stderr, md + result.stderr
    assert md.startswith("# Stopped before any change\n"), md[:300]
    assert "| ✗ | view | public.org_credit_overview |" in md, md
    assert "| `app/services/file_000.rb` | 80 | line 1: `CreditAllocation` |" in md, md
    assert f"… and {LAGO_FILES - 20} more files." in md, md
    assert len(md.splitlines()) < 80, md


@pytest.mark.cli
def test_console_script_plan_with_a_git_url(guide_db, app_repo, tmp_path):
    """`safedrop plan --code-path file:///…/app.git` as a user runs it: git found on PATH, clone gone."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    result = console(
        tmp_path,
        "plan",
        "--code-path",
        f"{app_repo.url}#v1.0",
        "--json",
        DATABASE_URL=guide_db.url,
        TMPDIR=str(tmp),
    )
    assert result.returncode == 3, result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert [(r["path"], r["identifier"]) for r in report["code_references"]] == [
        ("src/models/CreditAllocation.ts", "CreditAllocation")
    ]
    assert report["code_sources"][0]["commit"] == app_repo.tag
    assert leftovers(tmp) == []


@pytest.mark.cli
def test_make_demo_runs_the_whole_job(tmp_path):
    """`safedrop demo` (what `make demo` runs, from the checkout): zero configuration, exit 0, a summary,
    and its backup in the machine's backup directory — outside the checkout — with no temporary files
    (the demo's work directory, the throwaway server's) left behind."""
    tmp = Path(tempfile.mkdtemp(prefix="safedrop-test-demo-"))  # the demo's TMPDIR: what is left leaked
    tmp.chmod(0o755)  # the throwaway server (the postgres user, when run as root) lives in it
    data = tmp_path / "data"
    try:
        result = subprocess.run(
            [str(SAFEDROP), "demo"],
            cwd=ROOT,
            # no SAFEDROP_BACKUP_DIR (blank is unset): the default, under XDG_DATA_HOME
            env=console_env(tmp_path, XDG_DATA_HOME=str(data), SAFEDROP_BACKUP_DIR="", TMPDIR=str(tmp)),
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        assert "READY" in result.stdout and "SUCCEEDED" in result.stdout
        backups = data / "safedrop" / "backups" / "demo"
        (dump,) = backups.glob("credit_demo-*.dump")
        assert f"  backup: {dump} (" in result.stdout, result.stdout
        assert f"The backup is in {backups}/ ;" in result.stderr, result.stderr
        assert not dump.resolve().is_relative_to(ROOT)
        assert not (ROOT / "backups" / "demo" / dump.name).exists()
        assert [p.name for p in tmp.iterdir() if p.name.startswith("safedrop-")] == []
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


PLAIN_RUN = r"""
import sys
from safedrop.cli.main import main

code = main(sys.argv[1:])
loaded = sorted(m for m in sys.modules if m == "prefect" or m.startswith("prefect."))
print(f"exit {code}; prefect modules loaded: {len(loaded)} {loaded[:3]}", file=sys.stderr)
"""


@pytest.mark.cli
@pytest.mark.parametrize("command", ["plan", "run", "restore"])
def test_without_a_prefect_server_the_command_line_never_imports_prefect(guide_db, tmp_path, command):
    """`import prefect` alone is ~1.1 s: a plain-mode plan, run and restore load no module of it."""
    import sys

    backups = tmp_path / "b"
    argv = {
        "plan": ["plan", "--code-policy", "skip"],
        "run": ["run", "--code-policy", "skip", "--backup-dir", str(backups)],
        "restore": ["restore", "--backup", str(backups), "--dry-run"],
    }
    if command == "restore":  # a backup to restore from, taken by a plain run first
        first = subprocess.run(
            [sys.executable, "-c", PLAIN_RUN, *argv["run"]],
            env=console_env(tmp_path, DATABASE_URL=guide_db.url),
            cwd=tmp_path,
            capture_output=True,
            text=True,
        )
        assert "exit 0;" in first.stderr, first.stderr[-2000:]
        (archive,) = backups.glob("*.dump")
        argv["restore"][2] = str(archive)
    result = subprocess.run(
        [sys.executable, "-c", PLAIN_RUN, *argv[command]],
        env=console_env(tmp_path, DATABASE_URL=guide_db.url),
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert "exit 0; prefect modules loaded: 0 []" in result.stderr, result.stdout + result.stderr[-2000:]
