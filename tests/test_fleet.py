"""The fleet: its file read strictly, its rollout's rules as plain functions, a database's run held to
the plan approved for it, its URL from an environment variable — and, end to end, a real Prefect
server with two process workers rolling one migration out over 20 databases (the e2e test at the end).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from uuid import uuid4

import pytest
from prefect.client.schemas.objects import FlowRun
from pydantic import ValidationError

from safedrop.errors import UsageError
from safedrop.fleet.fleetfile import FleetFileError, FleetSpec, child_deployment, load_fleet, parse_fleet
from safedrop.fleet.fleetreport import (
    FleetDatabaseReport,
    FleetReport,
    fleet_digest,
    fleet_status,
    render_text,
)
from safedrop.fleet.plandigest import plan_digest
from safedrop.fleet.rollout import Rollout
from safedrop.migration import load_migration
from safedrop.parameters import DropParameters
from safedrop.results import CascadeObject, UntrackedReference
from tests.conftest import SURVIVORS, TARGETS

ROOT = Path(__file__).resolve().parent.parent
SAFEDROP = str(Path(sys.executable).with_name("safedrop"))

GOOD = """\
migration: drop_credit_allocation_tables
keep: [credits, credit_transactions, credit_purchases, credit_usage, credit_configurations]
code_paths: ["https://github.com/acme/wrapper-backend.git#main"]
rollout: {canary: [eu-staging], max_parallel: 4, on_error: stop}
databases:
  - {name: eu-staging, url_env: EU_STAGING_DATABASE_URL}
  - {name: eu-1, secret_block: eu-1-database-url}
"""


GOOD_KEYS = {
    "migration": "drop_credit_allocation_tables",
    "keep": "[credits, credit_transactions, credit_purchases, credit_usage, credit_configurations]",
    "code_paths": '["https://github.com/acme/wrapper-backend.git#main"]',
    "rollout": "{canary: [eu-staging], max_parallel: 4, on_error: stop}",
    "databases": "\n  - {name: eu-staging, url_env: EU_STAGING_DATABASE_URL}\n  - {name: eu-1, secret_block: eu-1-database-url}",
}


def fleet_text(**replace: str) -> str:
    """GOOD with top-level keys replaced (an empty string removes the key)."""
    lines = {**GOOD_KEYS, **replace}
    return "".join(f"{key}: {value}\n" for key, value in lines.items() if value)


def problem(text: str) -> str:
    with pytest.raises(FleetFileError) as error:
        parse_fleet(text, "f.yaml")
    assert error.value.exit_code == 2 and isinstance(error.value, UsageError)
    return str(error.value)


# --- the fleet file -------------------------------------------------------------------------------------


def test_the_issue_s_example_reads_as_written():
    assert parse_fleet(fleet_text(), "f.yaml") == parse_fleet(GOOD, "f.yaml")
    spec = parse_fleet(GOOD, "f.yaml")
    assert spec.migration == "drop_credit_allocation_tables"
    assert spec.rollout.canary == ["eu-staging"] and spec.rollout.max_parallel == 4
    assert spec.rollout.on_error == "stop"
    assert [(d.name, d.source) for d in spec.databases] == [
        ("eu-staging", "$EU_STAGING_DATABASE_URL"),
        ("eu-1", "Secret block eu-1-database-url"),
    ]
    assert spec.order == ["eu-staging", "eu-1"]


def test_the_readme_s_fleet_file_reads(tmp_path):
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Running a fleet", 1)[1].split("\n## ", 1)[0]
    text = re.search(r"```yaml\n(.*?)```", section, re.S)[1]
    path = tmp_path / "fleet.yaml"
    path.write_text(text)
    spec = load_fleet(path)
    # it reads as written: every key the README shows, with the value it shows (and nothing else set)
    assert spec == parse_fleet(GOOD + "  - {name: us-1, secret_block: us-1-database-url}\n", "f.yaml")
    assert spec.migration == "drop_credit_allocation_tables"
    assert spec.keep == SURVIVORS  # credits, credit_transactions, credit_purchases, credit_usage, …
    assert spec.code_paths == ["https://github.com/acme/wrapper-backend.git#main"]
    rollout = spec.rollout
    assert (rollout.canary, rollout.max_parallel, rollout.on_error) == (["eu-staging"], 4, "stop")
    assert [(d.name, d.source) for d in spec.databases] == [
        ("eu-staging", "$EU_STAGING_DATABASE_URL"),
        ("eu-1", "Secret block eu-1-database-url"),
        ("us-1", "Secret block us-1-database-url"),
    ]
    assert spec.order == ["eu-staging", "eu-1", "us-1"]


@pytest.mark.parametrize(
    "text, expected",
    [
        (
            "migration: [\n",
            "fleet file f.yaml does not parse: expected the node content, but found '<stream end>' (line 2)",
        ),
        (
            "- a\n- b\n",
            "fleet file f.yaml holds no mapping; expected migration, rollout and databases (see the README's 'Running a fleet')",
        ),
        (
            "",
            "fleet file f.yaml holds no mapping; expected migration, rollout and databases (see the README's 'Running a fleet')",
        ),
        (GOOD + "migration: other\n", "fleet file f.yaml line 8: key 'migration' is written twice"),
        (fleet_text(kep="[credits]"), "fleet file f.yaml: unknown key kep"),
        (fleet_text(migration=""), "fleet file f.yaml: migration is missing"),
        (fleet_text(rollout=""), "fleet file f.yaml: rollout is missing"),
        (fleet_text(databases=""), "fleet file f.yaml: databases is missing"),
        (
            fleet_text(databases="[]"),
            "fleet file f.yaml: databases: List should have at least 1 item after validation, not 0",
        ),
        (
            fleet_text(rollout="{canary: [eu-staging], on_error: stop}"),
            "fleet file f.yaml: rollout.max_parallel is missing",
        ),
        (
            fleet_text(rollout="{max_parallel: 4}"),
            "fleet file f.yaml: rollout.on_error is missing",
        ),
        (
            fleet_text(rollout="{max_parallel: 0, on_error: stop}"),
            "fleet file f.yaml: rollout.max_parallel: Input should be greater than or equal to 1",
        ),
        (
            fleet_text(rollout='{max_parallel: "4", on_error: stop}'),
            "fleet file f.yaml: rollout.max_parallel: Input should be a valid integer",
        ),
        (
            fleet_text(rollout="{max_parallel: 4, on_error: off}"),
            "fleet file f.yaml: rollout.on_error: Input should be 'stop' or 'continue' (YAML read False here: quote it)",
        ),
        (
            fleet_text(rollout="{max_parallel: 4, on_error: pause}"),
            "fleet file f.yaml: rollout.on_error: Input should be 'stop' or 'continue'",
        ),
        (
            fleet_text(rollout="{canary: [eu-9], max_parallel: 4, on_error: stop}"),
            "fleet file f.yaml: canary eu-9 is not one of the databases (eu-staging, eu-1)",
        ),
        (
            fleet_text(rollout="{canary: [eu-1, eu-1], max_parallel: 4, on_error: stop}"),
            "fleet file f.yaml: canary eu-1 is listed twice",
        ),
        (
            fleet_text(databases="\n  - {name: no, url_env: A}"),
            "fleet file f.yaml: databases[1].name: Input should be a valid string (YAML read False here: quote it)",
        ),
        (
            fleet_text(databases="\n  - {name: 'eu 1', url_env: A}"),
            "fleet file f.yaml: databases[1] (eu 1).name: Value error, 'eu 1' is not a database name: use letters, digits, '.', '_' and '-' (at most 63, starting and ending with a letter or digit)".replace(
                "Value error, ", ""
            ),
        ),
        (
            fleet_text(databases="\n  - {name: eu-1}"),
            "fleet file f.yaml: databases[1] (eu-1): give exactly one of secret_block (a Prefect Secret block's name) or url_env (the name of an environment variable on the workers); found neither",
        ),
        (
            fleet_text(databases="\n  - {name: eu-1, url_env: A, secret_block: b}"),
            "fleet file f.yaml: databases[1] (eu-1): give exactly one of secret_block (a Prefect Secret block's name) or url_env (the name of an environment variable on the workers); found secret_block and url_env",
        ),
        (
            fleet_text(databases="\n  - {name: eu-1, url_env: 1A}"),
            "fleet file f.yaml: databases[1] (eu-1).url_env: not an environment variable name: letters, digits and '_', not starting with a digit (e.g. EU_1_DATABASE_URL)",
        ),
        (
            fleet_text(databases="\n  - {name: eu-1, secret_block: Eu_1}"),
            "fleet file f.yaml: databases[1] (eu-1).secret_block: not a Prefect block name: lowercase letters, digits and single hyphens (e.g. eu-1-database-url)",
        ),
        (
            fleet_text(code_paths="[]"),
            "fleet file f.yaml: code_paths is empty, so every database's run would stop with no code to "
            "scan; name the application's repository (a git URL each worker fetches), or say code_policy: skip",
        ),
        (
            fleet_text(databases="\n  - {name: eu-1, url_env: A, password: x}"),
            "fleet file f.yaml: unknown key databases[1] (eu-1).password",
        ),
        (
            fleet_text(
                rollout="{max_parallel: 1, on_error: stop}",
                databases="\n  - {name: a, url_env: A}\n  - {name: a, url_env: B}",
            ),
            "fleet file f.yaml: database name a is used twice; give each database its own",
        ),
        (
            fleet_text(
                databases="\n  - {name: a, url_env: A}\n  - {name: b, url_env: A}",
                rollout="{max_parallel: 1, on_error: stop}",
            ),
            "fleet file f.yaml: databases a and b both take their URL from url_env A; each database needs its own",
        ),
        (
            fleet_text(keep="[credits.x.y]"),
            "fleet file f.yaml: keep: table name 'credits.x.y' is empty or malformed; use table or schema.table",
        ),
    ],
)
def test_every_problem_is_one_line_naming_where(text, expected):
    assert problem(text) == expected


@pytest.mark.parametrize("key", ["url_env", "secret_block"])
def test_a_url_where_a_name_belongs_is_refused_without_repeating_it(key):
    secret = "postgresql://app:Zq8-hunter2@db.internal:5432/app"
    message = problem(fleet_text(databases=f'\n  - {{name: eu-1, {key}: "{secret}"}}'))
    assert "Zq8-hunter2" not in message and "db.internal" not in message
    assert message.startswith(f"fleet file f.yaml: databases[1] (eu-1).{key}: this looks like a database URL")
    assert "remove the URL from the file (and from its history: it holds a password)" in message


def test_code_paths_with_credentials_are_refused_without_them():
    message = problem(fleet_text(code_paths='["https://bot:tok3n@github.com/acme/app.git"]'))
    assert message.startswith("fleet file f.yaml: code_paths: ") and "tok3n" not in message


def test_a_missing_file_and_a_migration_without_settings(tmp_path):
    with pytest.raises(FleetFileError, match=r"^fleet file .*nope.yaml does not exist$"):
        load_fleet(tmp_path / "nope.yaml")
    bare = tmp_path / "drop_x.sql"
    bare.write_text("DROP TABLE x;\n")
    with pytest.raises(UsageError) as error:
        child_deployment(load_migration(str(bare)))
    assert str(error.value) == (
        f"migration {bare} has no [safedrop] settings, so it has no fleet-child deployment for a fleet to "
        "run; open the file with them (see the README's 'To retire another table')"
    )
    assert child_deployment(load_migration("drop_credit_allocation_tables")) == (
        "drop-deprecated-tables/credit-allocations-fleet-child"
    )


def test_each_child_gets_the_whole_params_object_with_its_url_source_and_no_approval_of_its_own():
    spec = parse_fleet(GOOD, "f.yaml")
    by_env = spec.child_parameters("eu-staging", dry_run=True)["params"]
    assert by_env == {
        "migration": "drop_credit_allocation_tables",
        "database_secret_block": None,  # no Secret block to fall back on: another database
        "database_url_env": "EU_STAGING_DATABASE_URL",
        "approval": "skip",
        "dry_run": True,
        "code_policy": "fail",
        "keep": [
            "credits",
            "credit_transactions",
            "credit_purchases",
            "credit_usage",
            "credit_configurations",
        ],
        "code_paths": ["https://github.com/acme/wrapper-backend.git#main"],
    }
    digest = "ab" * 32
    by_block = spec.child_parameters("eu-1", dry_run=False, expected_plan_digest=digest)["params"]
    assert by_block["database_secret_block"] == "eu-1-database-url" and by_block["database_url_env"] is None
    assert by_block["expected_plan_digest"] == digest and by_block["dry_run"] is False
    DropParameters(**by_block)
    # not given in the file: the migration's own (the flow's for_migration), so no key at all
    bare = FleetSpec.model_validate({**parse_fleet(GOOD, "f").model_dump(), "keep": None, "code_paths": None})
    assert "keep" not in bare.child_parameters("eu-1", dry_run=True)["params"]
    assert "code_paths" not in bare.child_parameters("eu-1", dry_run=True)["params"]
    assert "allow_cascade" not in by_env  # nothing allowed unless the file says so


def test_a_fleet_s_bucket_gives_every_database_a_prefix_of_its_own():
    base = parse_fleet(GOOD, "f").model_dump()
    spec = FleetSpec.model_validate({**base, "backup_dir": "s3://acme-backups/safedrop/fleet/"})
    assert spec.backup_dir == "s3://acme-backups/safedrop/fleet"
    assert spec.child_parameters("eu-1", dry_run=False)["params"]["backup_dir"] == (
        "s3://acme-backups/safedrop/fleet/eu-1"
    )
    local = FleetSpec.model_validate({**base, "backup_dir": "/srv/backups"})
    assert (
        local.child_parameters("eu-staging", dry_run=True)["params"]["backup_dir"]
        == "/srv/backups/eu-staging"
    )
    assert "backup_dir" not in parse_fleet(GOOD, "f").child_parameters("eu-1", dry_run=True)["params"]
    with pytest.raises(ValidationError) as caught:
        FleetSpec.model_validate({**base, "backup_dir": "s3://Acme_Backups/x"})
    assert "backup_dir 's3://Acme_Backups/x' names no valid bucket" in str(caught.value)


@pytest.mark.usefixtures("prefect_harness")
def test_allow_cascade_in_the_fleet_file_reaches_every_database_and_the_reason_says_where_to_write_it(
    guide_db, monkeypatch, tmp_path
):
    """A database's stop names the fleet file's key, not the CLI flag; written there, it goes to each
    database's run, and one with the view loses it with the targets (backed up first)."""
    from safedrop.fleet.childruns import in_fleet_terms, status_of
    from tests.helpers import run

    monkeypatch.setenv("DATABASE_URL", guide_db.url)
    guide_db.execute("CREATE VIEW allocation_ids AS SELECT id FROM credit_allocations")
    state, plan = run(dry_run=True)
    assert plan.status == "stopped"
    (reason,) = status_of(FlowRun(flow_id=uuid4(), name="db-plan", state=state), plan)[1]
    assert reason.endswith("or allow it with allow_cascade: [public.allocation_ids] in the fleet file"), (
        reason
    )
    assert in_fleet_terms("no flag here") == "no flag here"

    spec = FleetSpec.model_validate(
        {**parse_fleet(GOOD, "f").model_dump(), "allow_cascade": ["public.allocation_ids"]}
    )
    child = spec.child_parameters("eu-staging", dry_run=False)["params"]
    assert child["allow_cascade"] == ["public.allocation_ids"]
    state, report = run(allow_cascade=child["allow_cascade"], backup_dir=str(tmp_path / "b"))
    assert state.is_completed() and report.status == "succeeded", report.reasons
    assert not guide_db.exists("public.allocation_ids") and not guide_db.exists("public.credit_allocations")


# --- the rollout's rules ----------------------------------------------------------------------------------


def simulate(rollout: Rollout, outcome: dict[str, str] | None = None) -> list[tuple[str, ...]]:
    """Run the rollout to the end, finishing the oldest running database first; returns what ran together
    at each step (the running set after each start)."""
    outcome = outcome or {}
    running: list[str] = sorted(rollout.running)  # started before the simulation
    together: list[tuple[str, ...]] = []
    for _ in range(1000):  # a rollout that never ends is a bug, not a hang
        if rollout.done:
            return together
        started = rollout.next_to_start()
        running += started
        if started:
            together.append(tuple(sorted(running)))
        assert len(running) <= rollout.max_parallel and set(running) == rollout.running
        if running:
            name = running.pop(0)
            rollout.finish(name, outcome.get(name, "succeeded"))
    raise AssertionError("the rollout never ended")


NAMES = [f"db{i}" for i in range(1, 11)]


def test_canaries_go_first_one_at_a_time_and_alone():
    rollout = Rollout.of(NAMES, canary=["db5", "db2"], max_parallel=4, on_error="stop")
    together = simulate(rollout)
    assert together[:2] == [("db5",), ("db2",)]  # in the order listed, each alone
    assert all("db5" not in t and "db2" not in t for t in together[2:])
    assert max(len(t) for t in together) == 4
    assert set(rollout.outcomes) == set(NAMES)


def test_never_more_than_max_parallel_and_in_file_order():
    rollout = Rollout.of(NAMES, max_parallel=3, on_error="continue")
    assert rollout.next_to_start() == ["db1", "db2", "db3"]
    assert rollout.next_to_start() == []  # full
    rollout.finish("db2", "succeeded")
    assert rollout.next_to_start() == ["db4"]
    with pytest.raises(ValueError, match="db9 is not running"):
        rollout.finish("db9", "succeeded")


def test_on_error_stop_starts_nothing_after_a_failure_but_lets_running_ones_finish():
    rollout = Rollout.of(NAMES, max_parallel=3, on_error="stop")
    assert rollout.next_to_start() == ["db1", "db2", "db3"]
    rollout.finish("db2", "failed", ["boom"])
    assert rollout.next_to_start() == [] and not rollout.done  # db1 and db3 still run
    rollout.finish("db1", "succeeded")
    rollout.finish("db3", "stopped")
    assert rollout.done and rollout.halted_by == "db2"
    assert rollout.not_started() == [f"db{i}" for i in range(4, 11)]
    assert rollout.halt_reason() == "not started: the rollout stopped after db2 failed (on_error: stop)"
    assert {n: o.status for n, o in rollout.outcomes.items()} == {
        "db1": "succeeded",
        "db2": "failed",
        "db3": "stopped",
    }


def test_on_error_continue_attempts_every_database():
    rollout = Rollout.of(NAMES, max_parallel=2, on_error="continue")
    simulate(rollout, {"db3": "failed", "db4": "stopped"})
    assert rollout.halted_by is None and rollout.not_started() == []
    assert [n for n, o in rollout.outcomes.items() if o.status != "succeeded"] == ["db3", "db4"]


def test_a_canary_that_does_not_succeed_ends_the_rollout_even_with_continue():
    rollout = Rollout.of(NAMES, canary=["db1"], max_parallel=4, on_error="continue")
    assert rollout.next_to_start() == ["db1"]
    rollout.finish("db1", "stopped")
    assert rollout.done and rollout.not_started() == NAMES[1:]
    assert rollout.halt_reason() == "not started: the rollout stopped after db1 stopped (a canary)"


def test_resume_skips_what_is_done_and_takes_what_stopped_at_its_turn():
    plan = {
        "db1": ("already-applied", []),  # a canary done by the first run: no slot, not alone
        "db2": ("already-applied", []),
        "db4": ("stopped", ["view v still uses the target"]),
    }
    rollout = Rollout.of(NAMES, canary=["db1"], max_parallel=2, on_error="continue", plan=plan)
    assert rollout.next_to_start() == ["db3", "db5"]
    assert rollout.outcomes["db1"].status == "already-applied" and not rollout.outcomes["db1"].started
    assert rollout.outcomes["db4"].reasons == ["view v still uses the target"]
    simulate(rollout)
    assert {n for n, o in rollout.outcomes.items() if o.started} == set(NAMES) - {"db1", "db2", "db4"}

    stop = Rollout.of(NAMES, max_parallel=2, on_error="stop", plan={"db4": ("stopped", ["v"])})
    assert stop.next_to_start() == ["db1", "db2"]
    stop.finish("db1", "succeeded")
    assert stop.next_to_start() == ["db3"]
    stop.finish("db2", "succeeded")
    assert stop.next_to_start() == []  # db4's turn: the plan's stop counts, nothing after it starts
    assert stop.halted_by == "db4" and stop.not_started() == [f"db{i}" for i in range(5, 11)]
    stop.finish("db3", "succeeded")
    assert stop.done


# --- the plan digest, and the fleet's report ---------------------------------------------------------------


def test_the_plan_digest_covers_the_database_rows_cascade_and_untracked_references():
    view = CascadeObject(kind="view", name="public.v", identity="view v")
    trigger = UntrackedReference(kind="trigger", name="t", mentions="x", breaks="y")
    base = plan_digest("u@h:5432/a", {"public.x": 0}, [view], [trigger])
    assert base == plan_digest("u@h:5432/a", {"public.x": 0}, [view], [trigger])
    assert (
        len(
            {
                base,
                plan_digest("u@h:5432/b", {"public.x": 0}, [view], [trigger]),
                plan_digest("u@h:5432/a", {"public.x": 1}, [view], [trigger]),
                plan_digest("u@h:5432/a", {"public.x": 0}, [], [trigger]),
                plan_digest("u@h:5432/a", {"public.x": 0}, [view], []),
            }
        )
        == 5
    )


def test_fleet_status_and_digest():
    assert fleet_status(["ready", "already-applied"], dry_run=True) == "ready"
    assert fleet_status(["ready", "stopped"], dry_run=True) == "stopped"
    assert fleet_status(["succeeded", "already-applied"], dry_run=False) == "succeeded"
    assert fleet_status(["already-applied"] * 3, dry_run=False) == "already-applied"
    assert fleet_status(["succeeded", "ready"], dry_run=False) == "stopped"  # one not started
    assert fleet_status(["stopped", "failed"], dry_run=False) == "failed"
    a = FleetDatabaseReport(name="a", status="ready", plan_digest="1")
    b = FleetDatabaseReport(name="b", status="ready", plan_digest="2")
    assert fleet_digest([a, b]) == fleet_digest([b, a])
    assert fleet_digest([a, b]) != fleet_digest([a, b.model_copy(update={"plan_digest": "3"})])
    report = FleetReport(
        status="stopped", migration="m", dry_run=False, databases=[a, b], max_parallel=2, on_error="stop"
    )
    assert FleetReport.model_validate_json(report.model_dump_json()) == report
    assert report.exit_code == 3
    assert "a" in render_text(report) and "ready (not started)" in render_text(report)


# --- the single-database flow: its URL from an environment variable, held to an approved plan --------------


@pytest.mark.usefixtures("prefect_harness")
def test_the_url_comes_only_from_the_variable_database_url_env_names(
    guide_db, empty_db, monkeypatch, tmp_path
):
    from tests.helpers import artifacts_of, run

    monkeypatch.setenv("DATABASE_URL", empty_db.url)  # another database: never the fallback
    monkeypatch.setenv("FLEET_TEST_DATABASE_URL", guide_db.url)
    state, report = run(database_url_env="FLEET_TEST_DATABASE_URL", dry_run=True)
    assert state.is_completed() and report.status == "ready", report.reasons
    assert report.database.endswith(f"/{guide_db.name}") and report.plan_digest
    # the report, as the fleet reads it back from the run's artifact
    from safedrop.report.json_artifact import report_from_markdown

    artifact = artifacts_of(report.flow_run_id)["drop-credit-allocation-tables-report"]
    assert report_from_markdown(artifact.data).plan_digest == report.plan_digest

    monkeypatch.delenv("FLEET_TEST_DATABASE_URL")
    state, report = run(database_url_env="FLEET_TEST_DATABASE_URL", backup_dir=str(tmp_path / "b"))
    assert state.is_failed() and report.status == "failed"
    assert report.reasons == [
        "no database URL: the environment variable FLEET_TEST_DATABASE_URL (database_url_env) is not set on "
        "this machine; set it in the environment of every worker of the pool "
        "(postgresql://USER:PASSWORD@HOST:PORT/DBNAME)"
    ]
    assert all(guide_db.exists(f"public.{t}") for t in TARGETS) and not (tmp_path / "b").exists()


@pytest.mark.usefixtures("prefect_harness")
def test_a_run_is_held_to_the_plan_approved_for_its_database(guide_db, monkeypatch, tmp_path):
    from tests.helpers import run

    monkeypatch.setenv("DATABASE_URL", guide_db.url)
    _, plan = run(dry_run=True)
    approved = plan.plan_digest
    guide_db.execute("CREATE VIEW allocation_ids AS SELECT id FROM credit_allocations")
    before = guide_db.snapshot()
    state, report = run(
        expected_plan_digest=approved, allow_cascade=["public.allocation_ids"], backup_dir=str(tmp_path / "b")
    )
    assert state.is_failed() and report.status == "stopped"
    assert report.reasons == [
        f"the plan of {report.database} is not the one approved for it (plan digest {approved[:12]}… "
        f"approved, {report.plan_digest[:12]}… now): its rows, what CASCADE removes, its untracked "
        "references or the database itself changed since the fleet's plan; nothing was changed — run the "
        "fleet again to see the new plan"
    ]
    assert guide_db.snapshot() == before and not (tmp_path / "b").exists()

    guide_db.execute("DROP VIEW allocation_ids")
    state, report = run(expected_plan_digest=approved, backup_dir=str(tmp_path / "b"))
    assert state.is_completed() and report.status == "succeeded", report.reasons
    assert not any(guide_db.exists(f"public.{t}") for t in TARGETS)


@pytest.mark.usefixtures("prefect_harness")
def test_a_running_child_without_a_heartbeat_is_silent_and_one_beat_on_any_page_is_enough():
    """What the fleet asks Prefect's events to find a child whose worker went away (childruns.silent):
    one query for every running child, read to its last page (the API gives 50 events a page)."""
    import time

    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.events import emit_event
    from prefect.states import Running

    from safedrop.fleet.childruns import silent

    @flow
    def child(): ...

    with get_client(sync_client=True) as client:
        quiet, early, busy = (client.create_flow_run(child) for _ in range(3))
        for run in (quiet, early, busy):
            client.set_flow_run_state(run.id, Running(), force=True)
    ids = [quiet.id, early.id, busy.id]
    assert silent(ids, 60) == set(ids)

    def beat(run) -> None:
        emit_event(
            event="prefect.flow-run.heartbeat", resource={"prefect.resource.id": f"prefect.flow-run.{run.id}"}
        )

    beat(early)  # the oldest event: on the second page, behind the 55 below
    for _ in range(55):
        beat(busy)
    deadline = time.monotonic() + 60
    while (left := silent(ids, 60)) != {quiet.id}:
        assert time.monotonic() < deadline, f"still silent after 60 s: {left}"
        time.sleep(0.5)


# --- the command line -------------------------------------------------------------------------------------


def test_fleet_without_a_prefect_server_says_so_in_one_line(tmp_path):
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text(GOOD)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env["PREFECT_HOME"] = str(tmp_path / "prefect")
    done = subprocess.run(
        [SAFEDROP, "fleet", "run", "--fleet", str(fleet)], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr == (
        "safedrop: safedrop fleet needs a Prefect server and workers on its work pool: PREFECT_API_URL is not "
        "set (e.g. export PREFECT_API_URL=http://127.0.0.1:4200/api; see the README's 'Running a fleet')\n"
    )
    bad = tmp_path / "bad.yaml"
    bad.write_text(fleet_text(rollout="{max_parallel: 4}"))
    done = subprocess.run(
        [SAFEDROP, "fleet", "plan", "--fleet", str(bad), "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert done.stderr == f"safedrop: fleet file {bad}: rollout.on_error is missing\n"
    assert json.loads(done.stdout)["status"] == "failed"
    done = subprocess.run(
        [SAFEDROP, "fleet", "run", "--fleet", str(fleet), "--child-silence", "30s"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == "safedrop: --child-silence must be between 1m and 1h, not 30s\n"


@pytest.mark.usefixtures("prefect_harness", "cli_env")
def test_a_fleet_whose_child_deployment_is_not_on_the_server_starts_nothing(tmp_path, capsys):
    """A server, but the migration's deployments were never deployed there: one reason, exit 1, no run."""
    from prefect.client.orchestration import get_client

    from safedrop.cli.main import main

    fleet = tmp_path / "fleet.yaml"
    fleet.write_text(GOOD)
    with get_client(sync_client=True) as client:
        before = len(client.read_flow_runs())
    code = main(["fleet", "run", "--fleet", str(fleet), "--json"])
    out = capsys.readouterr().out
    report = json.loads(out)
    assert code == 1 and report["status"] == "failed", out
    assert report["reasons"] == [
        "no deployment drop-deprecated-tables/credit-allocations-fleet-child on the Prefect server: deploy "
        "the migration's deployments first (python -m deployments.deploy); no database was started"
    ]
    assert [d["status"] for d in report["databases"]] == ["ready", "ready"]  # untouched, never started
    assert not any(d["started"] for d in report["databases"])
    with get_client(sync_client=True) as client:
        assert len(client.read_flow_runs()) == before + 1  # the fleet run itself, no child
