"""The whole flow on real PostgreSQL, real pg_dump and real Prefect (the test harness).

Every stop is triggered by a real fixture, and after each the database is checked untouched.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client

from safedrop.analysis.codescan import NO_SOURCE_REASON, SKIPPED_WARNING
from safedrop.pg.pgserver import find_server_bin
from tests.conftest import SURVIVORS, TARGETS
from tests.gitrepos import leftovers, make_app_repo, private_tempdir
from tests.helpers import archive_listing, artifacts_of, run

pytestmark = pytest.mark.usefixtures("prefect_harness")


@pytest.fixture
def env_url(guide_db, monkeypatch):
    monkeypatch.setenv("DATABASE_URL", guide_db.url)
    return guide_db


def assert_stopped(state, report, *fragments):
    assert state.is_failed(), state
    assert report.status == "stopped", report.reasons
    joined = " | ".join(report.reasons)
    for fragment in fragments:
        assert fragment in joined, f"{fragment!r} not in {joined!r}"


def test_happy_path_drops_backs_up_and_verifies(env_url, tmp_path):
    db = env_url
    before = {t: db.count(t) for t in SURVIVORS}
    state, report = run(backup_dir=str(tmp_path / "backups"))
    assert state.is_completed(), report.reasons
    assert report.status == "succeeded"
    assert not any(db.exists(t) for t in TARGETS)
    assert {t: db.count(t) for t in SURVIVORS} == before
    backup = Path(report.backup.path)
    assert backup.exists() and stat.S_IMODE(backup.stat().st_mode) == 0o600
    assert stat.S_IMODE(backup.parent.stat().st_mode) == 0o700
    toc = archive_listing(backup)
    for t in TARGETS:
        assert f"TABLE public {t} " in toc and f"TABLE DATA public {t} " in toc
    assert report.dropped == [f"public.{t}" for t in TARGETS]
    assert report.code_scan == "skipped"
    assert any("code-reference scan skipped" in w for w in report.warnings)
    keys = set(artifacts_of(str(state.state_details.flow_run_id)))
    prefix = "drop-credit-allocation-tables"
    for step in (
        "connection",
        "cleanup",
        "dependencies",
        "code-references",
        "backup",
        "drop",
        "verification",
        "summary",
        "table-status",
    ):
        assert f"{prefix}-{step}" in keys, keys
    # the ledger lives in safedrop's own schema, not the application's
    assert db.scalar("SELECT count(*) FROM safedrop.dropped_tables") == 2

    # a re-run converges: already applied, nothing else done
    state2, report2 = run(backup_dir=str(tmp_path / "backups2"))
    assert state2.is_completed() and state2.name == "Already applied"
    assert report2.status == "already-applied"
    assert report2.backup is None and not (tmp_path / "backups2").exists()


def test_dry_run_reports_ready_and_changes_nothing(env_url, tmp_path):
    before = env_url.snapshot()
    state, report = run(dry_run=True, backup_dir=str(tmp_path / "b"))
    assert state.is_completed() and report.status == "ready"
    assert env_url.snapshot() == before
    assert not (tmp_path / "b").exists()


def test_rows_in_a_target_stop_the_run(env_url, tmp_path):
    env_url.execute(
        "INSERT INTO credit_allocations (tenant_id, credit_id, amount, period_start, period_end) "
        "VALUES (1, 1, 10, '2024-01-01', '2024-02-01'), (2, 2, 5, '2024-01-01', '2024-02-01')"
    )
    before = env_url.snapshot()
    state, report = run(backup_dir=str(tmp_path / "b"))
    assert_stopped(state, report, "public.credit_allocations still has 2 rows", "--allow-nonempty")
    assert env_url.snapshot() == before
    assert not (tmp_path / "b").exists()


def test_allow_nonempty_drops_after_a_backup_that_holds_the_rows(env_url, tmp_path):
    env_url.execute(
        "INSERT INTO credit_allocations (tenant_id, credit_id, amount, period_start, period_end) "
        "VALUES (1, 1, 10, '2024-01-01', '2024-02-01')"
    )
    state, report = run(allow_nonempty=True, backup_dir=str(tmp_path / "b"))
    assert report.status == "succeeded", report.reasons
    assert not env_url.exists("public.credit_allocations")
    data = subprocess.run(
        [str(find_server_bin() / "pg_restore"), "-t", "credit_allocations", "-f", "-", report.backup.path],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert "2024-01-01" in data


def test_a_view_over_a_target_stops_the_run(env_url, tmp_path):
    env_url.execute(
        "CREATE VIEW org_credit_overview AS SELECT tenant_id, sum(amount) FROM credit_allocations GROUP BY 1"
    )
    before = env_url.snapshot()
    state, report = run(backup_dir=str(tmp_path / "b"))
    assert_stopped(
        state, report, "view public.org_credit_overview", "--allow-cascade public.org_credit_overview"
    )
    assert [o.name for o in report.cascade] == ["public.org_credit_overview"]
    assert env_url.snapshot() == before


def test_an_allowed_view_is_removed_and_reported(env_url, tmp_path):
    env_url.execute(
        "CREATE VIEW org_credit_overview AS SELECT tenant_id, sum(amount) FROM credit_allocations GROUP BY 1"
    )
    state, report = run(allow_cascade=["public.org_credit_overview"], backup_dir=str(tmp_path / "b"))
    assert report.status == "succeeded", report.reasons
    assert report.cascade[0].allowed and "will be removed" in report.cascade[0].why
    assert not env_url.exists("public.org_credit_overview")


def test_a_foreign_key_from_a_surviving_table_stops_the_run(env_url, tmp_path):
    env_url.execute(
        "ALTER TABLE credit_usage ADD COLUMN allocation_id bigint "
        "CONSTRAINT credit_usage_allocation_id_fkey REFERENCES credit_allocations (id)"
    )
    before = env_url.snapshot()
    state, report = run(backup_dir=str(tmp_path / "b"))
    assert_stopped(state, report, "foreign key credit_usage_allocation_id_fkey on public.credit_usage")
    assert [(fk.constraint, fk.table) for fk in report.inbound_foreign_keys] == [
        ("credit_usage_allocation_id_fkey", "public.credit_usage")
    ]
    assert env_url.snapshot() == before


def test_an_untracked_plpgsql_trigger_stops_the_run(env_url, tmp_path):
    env_url.execute("""
        CREATE FUNCTION mirror_usage() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN INSERT INTO credit_allocation_transactions (allocation_id, amount) VALUES (1, NEW.amount);
              RETURN NEW; END $$;
        CREATE TRIGGER credit_usage_mirror AFTER INSERT ON credit_usage
            FOR EACH ROW EXECUTE FUNCTION mirror_usage();""")
    before = env_url.snapshot()
    state, report = run(backup_dir=str(tmp_path / "b"))
    assert_stopped(state, report, "trigger credit_usage_mirror on public.credit_usage", "mirror_usage()")
    assert env_url.snapshot() == before


def test_code_references_stop_the_run(env_url, tmp_path):
    app = tmp_path / "app"
    (app / "src").mkdir(parents=True)
    (app / "src" / "allocations.js").write_text(
        "const rows = await db.query('SELECT * FROM credit_allocations');\n"
    )
    before = env_url.snapshot()
    state, report = run(code_paths=[str(app)], backup_dir=str(tmp_path / "b"))
    assert_stopped(state, report, "code still references")
    assert [(r.path, r.line, r.identifier) for r in report.code_references] == [
        ("src/allocations.js", 1, "credit_allocations")
    ]
    assert env_url.snapshot() == before


@pytest.fixture
def app_repo(tmp_path):
    (tmp_path / "remote").mkdir()
    return make_app_repo(tmp_path / "remote")


def test_a_git_url_is_fetched_and_scanned_by_the_run(env_url, tmp_path, monkeypatch, app_repo):
    temp_root = private_tempdir(monkeypatch, tmp_path)
    source = f"{app_repo.url}#cleanup"  # the branch where the application no longer uses the tables
    state, report = run(code_paths=[source], backup_dir=str(tmp_path / "b"))
    assert report.status == "succeeded", report.reasons
    assert report.code_scan == "done" and report.code_references == []
    assert [(s.root, s.kind, s.commit) for s in report.code_sources] == [(source, "git", app_repo.cleanup)]
    assert not any("code" in w for w in report.warnings)
    artifacts = artifacts_of(str(state.state_details.flow_run_id))
    prefix = "drop-credit-allocation-tables"
    assert f"Scanned `{source}` (commit `{app_repo.cleanup}`)" in artifacts[f"{prefix}-code-references"].data
    assert f"`{source}` at commit `{app_repo.cleanup}`" in artifacts[f"{prefix}-summary"].data
    assert leftovers(temp_root) == []


def test_references_in_a_git_source_stop_the_run(env_url, tmp_path, monkeypatch, app_repo):
    temp_root = private_tempdir(monkeypatch, tmp_path)
    before = env_url.snapshot()
    state, report = run(code_paths=[f"{app_repo.url}#main"], backup_dir=str(tmp_path / "b"))
    assert_stopped(state, report, "code still references the targets: 1 reference in 1 file")
    assert [(r.root, r.path, r.line) for r in report.code_references] == [
        (f"{app_repo.url}#main", "src/services/billing.js", 1)
    ]
    assert report.code_sources[0].commit == app_repo.main
    assert env_url.snapshot() == before
    assert not (tmp_path / "b").exists()
    assert leftovers(temp_root) == []


def test_a_git_source_that_cannot_be_fetched_stops_the_run(env_url, tmp_path, monkeypatch, app_repo):
    temp_root = private_tempdir(monkeypatch, tmp_path)
    before = env_url.snapshot()
    state, report = run(code_paths=[f"{app_repo.url}#v9.9"], backup_dir=str(tmp_path / "b"))
    assert_stopped(state, report)
    assert report.reasons == [
        f"cannot fetch the code at {app_repo.url}: no branch, tag or commit 'v9.9' in the repository; "
        "fix the #REF of --code-path (code_paths)"
    ]
    assert env_url.snapshot() == before
    assert not (tmp_path / "b").exists()
    assert leftovers(temp_root) == []


def test_keep_and_the_code_source_come_from_the_migration_unless_the_run_gives_them(
    env_url, tmp_path, monkeypatch, app_repo
):
    temp_root = private_tempdir(monkeypatch, tmp_path)
    migration = tmp_path / "drop_allocations.sql"
    migration.write_text(
        "-- [safedrop]\n"
        '-- deployment = "allocations"\n'
        '-- keep = ["credits", "tenants"]\n'
        f'-- code_paths = ["{app_repo.url}#main"]\n'
        '-- schedule = { cron = "0 3 * * SUN", active = false }\n'
        '-- readiness = { cron = "0 2 * * *", active = true }\n'
        "DROP TABLE credit_allocation_transactions, credit_allocations;\n"
    )
    before = env_url.snapshot()
    # Neither keep nor code_paths given: the migration's own (main still reads credit_allocations).
    state, report = run(migration=str(migration), code_paths=None, code_policy="fail", dry_run=True)
    assert state.is_completed() and report.status == "stopped", report.reasons
    assert [k.name for k in report.keep] == ["public.credits", "public.tenants"]
    assert [(s.root, s.commit) for s in report.code_sources] == [(f"{app_repo.url}#main", app_repo.main)]
    assert [(r.path, r.identifier) for r in report.code_references] == [
        ("src/services/billing.js", "credit_allocations")
    ]

    # Given, they win.
    cleanup = f"{app_repo.url}#cleanup"
    state, report = run(
        migration=str(migration),
        keep=["credit_usage"],
        code_paths=[cleanup],
        code_policy="fail",
        dry_run=True,
    )
    assert state.is_completed() and report.status == "ready", report.reasons
    assert [k.name for k in report.keep] == ["public.credit_usage"]
    assert [s.root for s in report.code_sources] == [cleanup]
    assert env_url.snapshot() == before
    assert leftovers(temp_root) == []


def test_a_run_without_a_code_source_stops_and_a_dry_run_warns(env_url, tmp_path):
    before = env_url.snapshot()
    state, report = run(code_policy="fail", backup_dir=str(tmp_path / "b"))
    assert_stopped(state, report)
    assert report.reasons == [NO_SOURCE_REASON]
    assert env_url.snapshot() == before
    assert not (tmp_path / "b").exists()

    state, report = run(code_policy="fail", dry_run=True)
    assert state.is_completed() and report.status == "ready"
    assert SKIPPED_WARNING in report.warnings


def test_a_role_that_may_not_drop_stops_the_run(env_url, tmp_path, monkeypatch):
    env_url.execute(
        "CREATE ROLE app_reader LOGIN PASSWORD 'reader-pass-123'; "
        "GRANT SELECT ON ALL TABLES IN SCHEMA public TO app_reader"
    )
    monkeypatch.setenv(
        "DATABASE_URL", env_url.server.url(env_url.name, user="app_reader", password="reader-pass-123")
    )
    before = env_url.snapshot()
    state, report = run(backup_dir=str(tmp_path / "b"))
    assert_stopped(state, report, "role app_reader may not drop public.credit_allocations (owner postgres)")
    assert env_url.snapshot() == before


def test_a_misspelt_table_to_keep_stops_the_run(env_url, tmp_path):
    before = env_url.snapshot()
    state, report = run(keep=["credits", "credit_transaction"], backup_dir=str(tmp_path / "b"))
    assert_stopped(state, report, "public.credit_transaction must survive the drop but does not exist")
    assert env_url.snapshot() == before


def test_a_failed_backup_stops_before_the_drop(env_url, tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the backup directory should be")
    before = env_url.snapshot()
    state, report = run(backup_dir=str(blocker / "backups"))
    assert state.is_failed() and report.status == "stopped", report.reasons
    # the backup step is what stopped the run, and the drop never started
    assert report.reasons == [
        f"backup directory {blocker / 'backups'} is not writable: it cannot be created (Not a directory); "
        "pass a backup_dir this process can create and write to; the drop did not run"
    ]
    assert report.backup is None and report.drop is None and report.dropped == []
    assert env_url.snapshot() == before
    assert blocker.read_text() == "a file where the backup directory should be"


def test_targets_that_never_existed_stop_the_run(env_url, tmp_path):
    env_url.execute("DROP TABLE credit_allocation_transactions, credit_allocations")
    before = env_url.snapshot()
    state, report = run(backup_dir=str(tmp_path / "b"))
    assert_stopped(
        state, report, "public.credit_allocations does not exist and safedrop's ledger has no record"
    )
    assert env_url.snapshot() == before


def test_an_unknown_schema_stops_the_run(env_url, tmp_path):
    before = env_url.snapshot()
    state, report = run(target_schema="billing", keep=[], backup_dir=str(tmp_path / "b"))
    assert_stopped(state, report, "schema billing does not exist")
    assert env_url.snapshot() == before


def test_a_migration_with_other_statements_is_refused(env_url, tmp_path):
    bad = tmp_path / "bad.sql"
    bad.write_text("DROP TABLE credit_allocations CASCADE;\nDELETE FROM credits;\n")
    before = env_url.snapshot()
    state, report = run(migration=str(bad))
    assert state.is_failed() and report.status == "failed"
    assert report.reasons == [
        f"migration {bad} statement 2 is DELETE; a safedrop migration may hold only DROP TABLE statements"
    ]
    assert env_url.snapshot() == before


def test_every_reason_is_named_at_once(env_url, tmp_path):
    env_url.execute(
        "INSERT INTO credit_allocations (tenant_id, credit_id, amount, period_start, period_end) "
        "VALUES (1, 1, 10, '2024-01-01', '2024-02-01');"
        "CREATE VIEW v_alloc AS SELECT * FROM credit_allocation_transactions"
    )
    state, report = run(keep=["credits", "nope"], backup_dir=str(tmp_path / "b"))
    assert_stopped(state, report, "still has 1 rows", "view public.v_alloc", "public.nope must survive")


def test_the_url_comes_from_a_prefect_secret_block(guide_db, tmp_path, monkeypatch):
    from prefect.blocks.system import Secret

    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.chdir(tmp_path)  # no .env here
    Secret(value=guide_db.url).save("safedrop-test-url", overwrite=True)
    state, report = run(database_secret_block="safedrop-test-url", dry_run=True)
    assert report.status == "ready", report.reasons
    # everything the run left behind: the report, its state, its artifacts, its stored parameters
    with get_client(sync_client=True) as client:
        stored = client.read_flow_run(report.flow_run_id)
    texts = [report.model_dump_json(), state.message or "", json.dumps(stored.parameters)]
    texts += [str(a.data) for a in artifacts_of(report.flow_run_id).values()]
    assert len(texts) > 5  # the artifacts are there to be read
    leaks = [i for i, text in enumerate(texts) if guide_db.server.password in text]
    assert not leaks, f"the password is in {len(leaks)} of the run's texts"  # not the text itself


def test_no_url_anywhere_fails_with_instructions(tmp_path, monkeypatch):
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.chdir(tmp_path)
    state, report = run(database_secret_block="no-such-block", dry_run=True)
    assert report.status == "failed"
    assert report.reasons == [
        "no Prefect Secret block named 'no-such-block' (database_secret_block): create it holding the database "
        "URL (postgresql://USER:PASSWORD@HOST:PORT/DBNAME), or name the block that does; nothing was touched"
    ]
    state, report = run(database_secret_block=None, dry_run=True)
    assert report.reasons == [
        "no database URL: name a Prefect Secret block (database_secret_block) or an environment variable "
        "(database_url_env), or set DATABASE_URL in the environment or a .env file "
        "(postgresql://USER:PASSWORD@HOST:PORT/DBNAME)"
    ]


def test_dotenv_file_is_a_fallback(guide_db, tmp_path, monkeypatch):
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text(f"DATABASE_URL={guide_db.url}\n")
    state, report = run(dry_run=True)
    assert report.status == "ready", report.reasons
    assert os.environ.get("DATABASE_URL") is None
