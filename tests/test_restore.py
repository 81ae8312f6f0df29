"""The way back: drop with the real flow, restore with the real flow and CLI, compare everything.

Real PostgreSQL, pg_dump, pg_restore and Prefect (the test harness). Every refusal asserts its
message and that nothing changed (``guide_db.snapshot()``). Slow moments are made deterministic
with a lock on ``tenants`` (which no precheck reads, but pg_dump dumps, the restored view reads and the
restored foreign keys reference), never with sleeps.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

from safedrop.backup.manifest import manifest_path
from safedrop.cli.main import main
from safedrop.migration import TableName
from safedrop.parameters import RestoreParameters
from safedrop.pg.pgserver import wait_until
from tests.helpers import BLOCKER_APP, artifacts_of, holding, run, session
from tests.test_backup import Background, cmdlines

pytestmark = pytest.mark.usefixtures("prefect_harness")

TARGETS = ["public.credit_allocation_transactions", "public.credit_allocations"]
VIEW, FK = "public.org_credit_overview", "credit_usage_allocation_id_fkey"
SEQUENCES = ["public.credit_allocations_id_seq", "public.credit_allocation_transactions_id_seq"]


@pytest.fixture
def env_url(guide_db, monkeypatch):
    monkeypatch.setenv("DATABASE_URL", guide_db.url)
    return guide_db


def seed(db) -> None:
    """Rows in both targets, a foreign key into one from a surviving table, a view over it and tenants."""
    db.execute(
        "INSERT INTO credit_allocations (tenant_id, credit_id, amount, period_start, period_end) "
        "SELECT 1 + g % 25, 1 + g % 25, g * 1.25, date '2024-01-01' + g, date '2024-02-01' + g "
        "FROM generate_series(1, 40) g;"
        "INSERT INTO credit_allocation_transactions (allocation_id, amount) "
        "SELECT id, id / 3.0 FROM credit_allocations;"
        "DELETE FROM credit_allocation_transactions WHERE allocation_id = 40;"
        "DELETE FROM credit_allocations WHERE id = 40;"  # the sequences are ahead of max(id)
        f"ALTER TABLE credit_usage ADD COLUMN allocation_id bigint "
        f"CONSTRAINT {FK} REFERENCES credit_allocations (id);"
        "UPDATE credit_usage SET allocation_id = 1 + id % 30;"
        f"CREATE VIEW {VIEW} AS SELECT a.tenant_id, t.name, sum(a.amount) AS total "
        "FROM credit_allocations a JOIN tenants t ON t.id = a.tenant_id GROUP BY 1, 2;"
        "COMMENT ON TABLE credit_allocations IS 'retired';"
    )


def contents(db) -> dict:
    """What must come back, read independently of safedrop: every row (an ordered md5), sequence
    states, the view's definition, the foreign key's definition, every foreign key's validation,
    indexes and the comment."""
    out = {}
    for table in TARGETS:
        out[table] = db.scalar(f"SELECT md5(string_agg(t::text, E'\\n' ORDER BY t::text)) FROM {table} t")
        out[f"{table} rows"] = db.scalar(f"SELECT count(*) FROM {table}")
    for seq in SEQUENCES:
        out[seq] = db.scalar(f"SELECT last_value::text || ' ' || is_called::text FROM {seq}")
    out["view"] = db.scalar(f"SELECT pg_get_viewdef('{VIEW}'::regclass)")
    out["fk"] = db.scalar(f"SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conname = '{FK}'")
    out["foreign keys"] = foreign_keys(db)
    out["indexes"] = db.scalar(
        "SELECT string_agg(indexdef, '; ' ORDER BY indexname) FROM pg_indexes "
        "WHERE tablename IN ('credit_allocations', 'credit_allocation_transactions')"
    )
    out["comment"] = db.scalar("SELECT obj_description('public.credit_allocations'::regclass)")
    return out


def restore(backup_path: str, **fields):
    from flows.restore_dropped_tables import restore_dropped_tables

    params = RestoreParameters(backup_path=backup_path, database_secret_block=None, **fields)
    state = restore_dropped_tables(params, return_state=True)
    return state, state.result(raise_on_failure=False)


def drop(tmp_path, **fields) -> str:
    return drop_run(tmp_path, **fields)[1]


def drop_run(tmp_path, **fields):
    state, report = run(
        allow_nonempty=True, allow_cascade=[VIEW, FK], backup_dir=str(tmp_path / "b"), **fields
    )
    assert report.status == "succeeded", report.reasons
    return state, report.backup.path


def test_round_trip_through_the_flows_puts_everything_back(env_url, tmp_path):
    db = env_url
    seed(db)
    before = contents(db)
    next_id = db.scalar("SELECT last_value + 1 FROM credit_allocations_id_seq")

    path = drop(tmp_path)
    assert not db.exists("public.credit_allocations") and not db.exists(VIEW)
    manifest = json.loads(manifest_path(Path(path)).read_text())
    assert manifest["scope"] == "database" and manifest["migration"] == "drop_credit_allocation_tables"
    assert {t["name"]: t["rows"] for t in manifest["targets"]} == {
        "public.credit_allocation_transactions": 39,
        "public.credit_allocations": 39,
    }
    assert {c["name"] for c in manifest["cascade"]} == {VIEW, FK}

    state, report = restore(path)
    assert state.is_completed() and state.name == "Restored", report.reasons
    assert report.status == "restored" and report.exit_code == 0
    assert contents(db) == before  # rows, sequences, view, foreign key, indexes, comment
    assert db.scalar("SELECT nextval('credit_allocations_id_seq')") == next_id
    assert {t.name: (t.rows_found, t.checksum_matches) for t in report.verification.tables} == {
        "public.credit_allocation_transactions": (39, True),
        "public.credit_allocations": (39, True),
    }
    # the foreign key is enforced again, and the view reads the restored rows
    with pytest.raises(RuntimeError, match="violates foreign key constraint"):
        db.execute("UPDATE credit_usage SET allocation_id = 999 WHERE id = 1")
    assert db.scalar(f"SELECT count(*) FROM {VIEW}") == 25
    keys = set(artifacts_of(str(state.state_details.flow_run_id)))
    assert {
        "restore-precheck",
        "restore-restore",
        "restore-verification",
        "restore-summary",
        "restore-progress",
    } <= keys, keys

    # a re-run is a success with a name, and changes nothing
    snapshot = db.snapshot()
    state, report = restore(path)
    assert state.is_completed() and state.name == "Already restored" and report.status == "already-restored"
    assert db.snapshot() == snapshot


def test_round_trip_with_a_targets_scope_backup_through_the_cli(env_url, tmp_path, capsys):
    db = env_url
    seed(db)
    before = contents(db)
    next_id = db.scalar("SELECT last_value + 1 FROM credit_allocation_transactions_id_seq")
    path = drop(tmp_path, backup_scope="targets")
    manifest = json.loads(manifest_path(Path(path)).read_text())
    assert manifest["scope"] == "targets"

    code = main(["restore", "--backup", path, "--dry-run", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0 and report["status"] == "ready"
    assert "FK CONSTRAINT public credit_usage credit_usage_allocation_id_fkey" in report["check"]["entries"]
    assert "VIEW public org_credit_overview" in report["check"]["entries"]
    assert not db.exists("public.credit_allocations")

    code = main(["restore", "--backup", path, "--database-url", db.url])
    out = capsys.readouterr().out
    assert code == 0, out
    assert out.startswith("safedrop: RESTORED") and "verified public.credit_allocations: 39 rows" in out
    assert contents(db) == before
    assert db.scalar("SELECT nextval('credit_allocation_transactions_id_seq')") == next_id
    # survivors' rows were never in this archive, and are untouched
    assert db.count("credit_usage") == 400

    code = main(["restore", "--backup", path, "--json"])
    assert code == 0 and json.loads(capsys.readouterr().out)["status"] == "already-restored"


def flip_bytes(path: Path) -> None:
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 8] = bytes(b ^ 0xFF for b in data[middle : middle + 8])
    path.write_bytes(bytes(data))


def test_a_corrupted_truncated_or_unproven_archive_is_refused_and_nothing_changes(env_url, tmp_path, capsys):
    db = env_url
    seed(db)
    path = Path(drop(tmp_path))
    manifest = manifest_path(path)
    sha = json.loads(manifest.read_text())["sha256"]
    size = path.stat().st_size
    before = db.snapshot()
    good = path.read_bytes()

    flip_bytes(path)
    state, report = restore(str(path))
    assert state.is_failed() and state.name == "Refused" and report.status == "refused"
    (reason,) = report.reasons
    assert reason.startswith(f"the archive {path} does not match its manifest ({size:,} bytes, sha256 ")
    assert f"the manifest says {size:,} bytes, sha256 {sha}): it is corrupted or truncated" in reason
    assert reason.endswith("restore from another backup; nothing was changed")
    assert db.snapshot() == before

    path.write_bytes(good[: size // 2])
    code = main(["restore", "--backup", str(path)])
    err = capsys.readouterr()
    assert code == 3 and "REFUSED" in err.out
    assert f"({size // 2:,} bytes, sha256" in err.out and "corrupted or truncated" in err.out
    assert db.snapshot() == before

    path.write_bytes(good)
    manifest.rename(tmp_path / "elsewhere.json")
    state, report = restore(str(path))
    assert report.status == "refused" and report.reasons == [
        f"no manifest beside {path} (expected {manifest}); safedrop restores only archives whose contents it "
        "can prove — use the manifest written with the backup; nothing was changed"
    ]
    assert db.snapshot() == before

    code = main(["restore", "--backup", str(tmp_path / "nope.dump")])
    assert code == 2 and "backup" in capsys.readouterr().err


def foreign_keys(db) -> str:
    """Every foreign key of the database, with whether it is validated."""
    return db.scalar(
        "SELECT string_agg(conrelid::regclass || ' ' || conname || ' ' || convalidated, ', ' ORDER BY conname) "
        "FROM pg_constraint WHERE contype = 'f'"
    )


def test_a_target_that_exists_again_is_refused_and_a_failed_restore_rolls_back(env_url, tmp_path):
    db = env_url
    seed(db)
    path = drop(tmp_path)

    db.execute("CREATE TABLE credit_allocations (id bigint)")
    before = db.snapshot()
    state, report = restore(path)
    assert report.status == "refused" and report.reasons == [
        "public.credit_allocations already exists; restore puts back only tables that are gone — rename or "
        "drop it first; nothing was changed"
    ]
    assert db.snapshot() == before

    # pg_restore fails at the view, after the tables and their rows: all of it rolls back.
    db.execute(
        "DROP TABLE credit_allocations;"
        "CREATE FUNCTION no_views() RETURNS event_trigger LANGUAGE plpgsql AS "
        "$$ BEGIN RAISE EXCEPTION 'no new views today'; END $$;"
        "CREATE EVENT TRIGGER no_views ON ddl_command_start WHEN TAG IN ('CREATE VIEW') "
        "EXECUTE FUNCTION no_views();"
    )
    before = db.snapshot()
    state, report = restore(path)
    assert state.is_failed() and report.status == "failed" and report.exit_code == 1
    (reason,) = report.reasons
    assert reason.startswith(
        "pg_restore failed and its transaction was rolled back, nothing was changed: could not execute "
        "query: ERROR: no new views today"
    ), reason
    assert db.snapshot() == before


def test_a_row_violating_a_restored_foreign_key_leaves_it_not_valid_named_until_fixed(env_url, tmp_path):
    """The tables come back (the violation is not theirs); the key is added NOT VALID, so it is enforced
    for new rows, and its validation fails: named, with the row and what to do. Fixed, a re-run validates it."""
    db = env_url
    seed(db)
    before = contents(db)
    path = drop(tmp_path)
    db.execute("UPDATE credit_usage SET allocation_id = 999 WHERE id = 7")  # no foreign key stops it now

    state, report = restore(path)
    assert state.is_failed() and report.status == "failed" and report.exit_code == 1
    assert report.reasons == [
        "restore verification failed: the tables are back with every row and sequence as in the backup, but "
        f"foreign key {FK} on public.credit_usage is NOT VALID: rows violate it (Key (allocation_id)=(999) is "
        'not present in table "credit_allocations"); correct or delete them, then run ALTER TABLE '
        f"public.credit_usage VALIDATE CONSTRAINT {FK} (or re-run the restore)"
    ]
    assert [(t.name, t.rows_found, t.checksum_matches) for t in report.verification.tables] == [
        ("public.credit_allocation_transactions", 39, True),
        ("public.credit_allocations", 39, True),
    ]
    assert f"{FK} on public.credit_usage: NOT VALID" in report.verification.foreign_keys
    after = contents(db)
    assert after.pop("foreign keys") == before["foreign keys"].replace(f"{FK} true", f"{FK} false")
    assert after.pop("fk") == before["fk"] + " NOT VALID"
    assert after == {k: v for k, v in before.items() if k not in ("foreign keys", "fk")}
    with pytest.raises(RuntimeError, match="violates foreign key constraint"):  # enforced for new rows
        db.execute("UPDATE credit_usage SET allocation_id = 998 WHERE id = 8")

    db.execute("UPDATE credit_usage SET allocation_id = 1 + id % 30 WHERE id = 7")
    state, report = restore(path)
    assert state.is_completed() and report.status == "restored", report.reasons
    assert report.check.entries == []
    assert report.warnings == [
        "the tables are there with exactly the backup's contents; validating the foreign keys left NOT "
        f"VALID: {FK} on public.credit_usage"
    ]
    assert [(o.name, o.state) for o in report.restore.foreign_keys] == [
        (f"{FK} on public.credit_usage", "validated")
    ]
    assert contents(db) == before
    state, report = restore(path)
    assert report.status == "already-restored"


def logs_of(flow_run_id) -> str:
    with get_client(sync_client=True) as client:
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
    return "\n".join(log.message for log in logs)


def tool_running(name: str, directory: Path) -> tuple[int, list[str]] | None:
    """Our pg_dump (writing into ``directory``) or restoring pg_restore (reading from it) — not another
    test's, and not the quick ``pg_restore --list`` the steps run to read the archive's contents."""
    marker = "--file=" if name == "pg_dump" else "--single-transaction"
    for pid, argv in cmdlines().items():
        if (
            Path(argv[0]).name == name
            and any(a.startswith(marker) for a in argv)
            and any(str(directory) + "/" in a for a in argv[1:])
        ):
            return pid, argv
    return None


def assert_no_password_in_run(flow_run_id, password: str, expect: str) -> str:
    # logs reach the API in batches: wait (with a deadline) for the line we expect
    def logged() -> str | None:
        text = logs_of(flow_run_id)
        return text if expect in text else None

    text = wait_until(logged, deadline_s=20, what=f"the log line {expect!r}")
    assert password not in text
    artifacts = artifacts_of(str(flow_run_id))
    assert artifacts
    for artifact in artifacts.values():
        assert password not in json.dumps(artifact.data, default=str), artifact.key
    return text


def test_no_password_in_argv_logs_or_artifacts_of_pg_dump_and_pg_restore(env_url, tmp_path):
    from tests.test_backup import table_locked

    db = env_url
    seed(db)
    password = db.db.password
    assert password and len(password) > 8
    jobs = {
        "pg_dump": lambda: drop_run(tmp_path)[0],
        "pg_restore": lambda: restore(  # a lock_timeout far away: one pg_restore, waiting until we let go
            str(next((tmp_path / "b").glob("*.dump"))), lock_timeout_ms=60_000, max_lock_timeout_ms=60_000
        )[0],
    }
    for tool, start in jobs.items():
        with table_locked(db, "tenants"):  # pg_dump dumps it; the restored view reads it
            job = Background(start)
            pid, argv = wait_until(
                lambda t=tool: tool_running(t, tmp_path / "b"), deadline_s=30, what=f"{tool} to start"
            )
            everyone = cmdlines()  # taken while the tool runs (it waits for our lock)
            environ = Path(f"/proc/{pid}/environ").read_bytes()
        job.join(60)
        assert job.error is None, job.error
        assert not any(password in " ".join(a) for a in everyone.values()), tool
        assert f"PGPASSWORD={password}".encode() in environ
        # a killed tool's session ends at once instead of staying queued for its lock
        assert b"PGOPTIONS=-c client_connection_check_interval=1000" in environ.split(b"\0")
        assert not any("127.0.0.1" in a or a.startswith(("-h", "--host", "postgresql:")) for a in argv), argv
        state = job.result
        assert state.is_completed(), state
        expect = "backing up" if tool == "pg_dump" else "restored"
        assert_no_password_in_run(state.state_details.flow_run_id, password, expect)
        if tool == "pg_dump":
            assert any(a.startswith("--snapshot=") for a in argv)
        else:
            assert "--single-transaction" in argv and any(a.startswith("--use-list=") for a in argv)
    assert contents(db)["public.credit_allocations rows"] == 39


def test_a_partitioned_target_comes_back_with_its_partitions(guide_db, tmp_path):
    """The plain functions, no Prefect: back up a partitioned target, drop it, restore it."""
    from safedrop.migration import TableName
    from tasks.backup import BackupOptions, take_backup
    from tasks.restore import plan_restore, run_restore, verify_restored

    db = guide_db
    db.execute(
        "CREATE TABLE allocation_events (id serial, at date NOT NULL, note text, meta json, "
        "PRIMARY KEY (id, at)) PARTITION BY RANGE (at);"
        "CREATE TABLE allocation_events_2023 PARTITION OF allocation_events "
        "FOR VALUES FROM ('2023-01-01') TO ('2024-01-01');"
        "CREATE TABLE allocation_events_2024 PARTITION OF allocation_events "
        "FOR VALUES FROM ('2024-01-01') TO ('2025-01-01') PARTITION BY HASH (id);"
        "CREATE TABLE allocation_events_2024_h0 PARTITION OF allocation_events_2024 "
        "FOR VALUES WITH (MODULUS 2, REMAINDER 0);"
        "CREATE TABLE allocation_events_2024_h1 PARTITION OF allocation_events_2024 "
        "FOR VALUES WITH (MODULUS 2, REMAINDER 1);"
        "CREATE INDEX allocation_events_note_idx ON allocation_events (note);"
        "INSERT INTO allocation_events (at, note, meta) SELECT date '2023-06-01' + g * 3, md5(g::text), "
        "json_build_object('g', g, 'at', now() - g * interval '1 hour') "
        "FROM generate_series(1, 150) g;"
    )

    def state() -> tuple:
        rows = db.scalar("SELECT md5(string_agg(t::text, ',' ORDER BY t::text)) FROM allocation_events t")
        bounds = db.scalar(
            "SELECT string_agg(c.relname || ' ' || pg_get_expr(c.relpartbound, c.oid), '; ' ORDER BY c.relname) "
            "FROM pg_class c WHERE c.relname LIKE 'allocation_events_%' AND c.relispartition"
        )
        indexes = db.scalar("SELECT count(*) FROM pg_indexes WHERE tablename LIKE 'allocation_events%'")
        return rows, bounds, indexes, db.scalar("SELECT last_value FROM allocation_events_id_seq")

    before = state()
    result = take_backup(
        db.db,
        [TableName("public", "allocation_events")],
        tmp_path,
        BackupOptions(scope="targets"),
        server_version_num=int(db.server.psql("SHOW server_version_num")),
    )
    # json has no hash function: this table's checksum is md5 over the row text (TimeZone pinned)
    assert result.targets[0].checksum.startswith("md5:")
    db.execute("DROP TABLE allocation_events CASCADE")

    plan = plan_restore(db.db, result.path)
    assert {
        "TABLE public allocation_events_2024_h1",
        "TABLE ATTACH public allocation_events_2024_h1",
        "TABLE DATA public allocation_events_2023",
        "INDEX ATTACH public allocation_events_2024_h0_note_idx",
        "SEQUENCE SET public allocation_events_id_seq",
    } <= set(plan.check.entries)
    run_restore(db.db, plan)
    verification = verify_restored(db.db, plan)
    assert [(t.name, t.rows_found, t.checksum_matches) for t in verification.tables] == [
        ("public.allocation_events", 150, True)
    ]
    assert state() == before
    assert plan_restore(db.db, result.path).already_restored


def test_missing_foreign_keys_on_intact_tables_are_put_back(env_url, tmp_path):
    """Tables intact but foreign keys gone (dropped by hand, or by a drop that committed them before its
    table drop gave up): restore puts back exactly those, and leaves the live sequences alone."""
    from safedrop.migration import TableName
    from tasks.backup import take_backup

    db = env_url
    seed(db)
    before = contents(db)
    targets = [
        TableName("public", "credit_allocation_transactions"),
        TableName("public", "credit_allocations"),
    ]
    result = take_backup(
        db.db,
        targets,
        tmp_path,
        server_version_num=int(db.server.psql("SHOW server_version_num")),
        allow_cascade=[VIEW, FK],
    )
    db.execute(
        f"ALTER TABLE credit_usage DROP CONSTRAINT {FK};"
        "ALTER TABLE credit_allocations DROP CONSTRAINT credit_allocations_tenant_id_fkey;"
        "SELECT nextval('credit_allocations_id_seq')"
    )  # the live sequence moved on: left alone

    state, report = restore(result.path)
    assert report.status == "restored", report.reasons
    assert sorted(report.check.entries) == [
        "FK CONSTRAINT public credit_allocations credit_allocations_tenant_id_fkey",
        f"FK CONSTRAINT public credit_usage {FK}",
    ]
    assert any("putting back only what is missing" in w for w in report.warnings)
    after = contents(db)
    assert after.pop("public.credit_allocations_id_seq") != before.pop("public.credit_allocations_id_seq")
    assert after == before


# --------------------------------------------------------------------------------------------------
# Under traffic: lock_timeout and retries, foreign keys NOT VALID then validated
# --------------------------------------------------------------------------------------------------


def pg_restore_sessions(db, *, waiting: bool = False) -> list[int]:
    """pids of the pg_restore sessions on the test database (only those waiting for a lock)."""
    engine = db.engine()
    try:
        with engine.connect() as conn:
            rows = conn.exec_driver_sql(
                "SELECT pid FROM pg_stat_activity WHERE application_name = 'safedrop pg_restore' "
                "AND datname = current_database()" + (" AND wait_event_type = 'Lock'" if waiting else "")
            ).fetchall()
    finally:
        engine.dispose()
    return [r[0] for r in rows]


def test_a_lock_held_longer_than_the_budget_stops_the_restore_naming_the_holder(env_url, tmp_path, capsys):
    db = env_url
    seed(db)
    path = drop(tmp_path)
    before = db.snapshot()
    assert main(["restore", "--backup", path, "--lock-wait-budget", "soon"]) == 2
    assert capsys.readouterr().err == "safedrop: cannot read duration 'soon'; use e.g. 500ms, 2s or 5m\n"
    assert main(["restore", "--backup", path, "--lock-timeout", "10ms"]) == 2
    assert capsys.readouterr().err.startswith(
        "safedrop: invalid lock_timeout_ms: Input should be greater than"
    )
    budget = ["--lock-timeout", "100ms", "--max-lock-timeout", "200ms", "--lock-wait-budget", "1.5s"]
    with holding(db, "LOCK TABLE tenants IN ACCESS EXCLUSIVE MODE") as holder:  # the view reads tenants
        holder_pid = holder.info.backend_pid
        started = time.monotonic()
        code = main(["restore", "--backup", path, "--json", *budget])
        took = time.monotonic() - started
        report = json.loads(capsys.readouterr().out)
        assert not pg_restore_sessions(db)  # every attempt's session is gone, none left queued
    assert code == 3 and report["status"] == "refused", report
    (reason,) = report["reasons"]
    match = re.fullmatch(
        r"gave up on the restore after (\d+) attempts within the lock-wait budget 1\.5 s \(lock_timeout up "
        rf"to 200 ms\); blocked by: pid {holder_pid} \({BLOCKER_APP}, idle in transaction, transaction open "
        r"[\d.]+ s, holds AccessExclusiveLock on public\.tenants\): LOCK TABLE tenants IN ACCESS EXCLUSIVE "
        r"MODE; nothing was restored — let it finish \(or end it\) and re-run",
        reason,
    )
    assert match, reason
    assert int(match.group(1)) >= 2  # 100 ms, 150 ms, 200 ms, … with backoff in between
    assert took < 30
    assert db.snapshot() == before
    assert not db.exists("public.credit_allocations")


def test_a_lock_released_within_the_budget_lets_the_restore_finish_after_retries(env_url, tmp_path):
    db = env_url
    seed(db)
    before = contents(db)
    path = drop(tmp_path)
    seen: set[int] = set()

    def retried() -> bool:  # a second pg_restore session waits on the lock: the first one gave up
        seen.update(pg_restore_sessions(db, waiting=True))
        return len(seen) >= 2

    with holding(db, "LOCK TABLE tenants IN ACCESS EXCLUSIVE MODE"):
        job = Background(
            lambda: restore(path, lock_timeout_ms=100, max_lock_timeout_ms=200, lock_wait_budget_s=60)
        )
        wait_until(retried, deadline_s=60, what="pg_restore to time out on the lock and retry")
    state, report = job.join(120)
    assert state.is_completed() and report.status == "restored", report.reasons
    assert report.restore.attempts >= 2 and report.restore.lock_timeouts == report.restore.attempts - 1
    assert contents(db) == before
    assert {o.state for o in report.restore.foreign_keys} == {"validated"}
    assert not pg_restore_sessions(db)


class Writer:
    """The application: its own autocommit connection inserts into credit_usage and updates credits every
    few milliseconds until stopped; every error is counted by SQLSTATE."""

    def __init__(self, db) -> None:
        self.conn = session(db, "test-writer", autocommit=True)
        self.stop = threading.Event()
        self.errors: Counter[str] = Counter()
        self.done = 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        n = 0
        while not self.stop.wait(0.003):
            n += 1
            for statement, args in (
                (
                    "INSERT INTO credit_usage (tenant_id, credit_id, feature, amount, allocation_id) "
                    "VALUES (%s, %s, 'api', 1, %s)",
                    (1 + n % 25, 1 + n % 25, 1 + n % 30),
                ),
                ("UPDATE credits SET balance = balance + 1 WHERE id = %s", (1 + n % 25,)),
            ):
                try:
                    with self.conn.cursor() as cur:
                        cur.execute(statement, args)
                except Exception as exc:  # noqa: BLE001 - counted, and asserted to be none
                    self.errors[getattr(exc, "pgcode", None) or type(exc).__name__] += 1
                self.done += 1

    def __enter__(self) -> Writer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(30)
        self.conn.close()


def test_the_restore_under_live_writes_succeeds_and_the_writers_see_no_error(env_url, tmp_path):
    db = env_url
    seed(db)
    path = drop(tmp_path)
    with Writer(db) as writer:
        wait_until(lambda: writer.done >= 50, deadline_s=30, what="the writer to get going")
        state, report = restore(path)
        done = writer.done
        wait_until(
            lambda: writer.done >= done + 50, deadline_s=30, what="the writer to go on after the restore"
        )
    assert state.is_completed() and report.status == "restored", report.reasons
    assert writer.errors == Counter(), writer.errors
    assert {o.state for o in report.restore.foreign_keys} == {"validated"}
    assert "false" not in foreign_keys(db)
    # the writer's new rows point at restored allocations: the restored key checks them
    assert db.scalar("SELECT count(*) FROM credit_usage WHERE allocation_id IS NOT NULL") > 400


def test_foreign_keys_odd_names_comments_not_valid_ones_and_partitioned_tables(guide_db, tmp_path):
    """The plain functions, no Prefect: a key with an odd name and a comment comes back validated; one
    that was NOT VALID in the backup stays so; one on a partitioned table (which PostgreSQL < 18 cannot
    add NOT VALID) is added validated."""
    from safedrop.migration import TableName
    from tasks.backup import BackupOptions, take_backup
    from tasks.restore import plan_restore, run_restore, verify_restored

    db = guide_db
    db.execute(
        "CREATE TABLE legacy_notes (id serial PRIMARY KEY, credit_id bigint, tenant_id bigint);"
        'ALTER TABLE legacy_notes ADD CONSTRAINT "note→credit 100%" FOREIGN KEY (credit_id) REFERENCES credits;'
        "INSERT INTO legacy_notes (credit_id, tenant_id) SELECT 1 + g % 25, 1 + g % 25 FROM generate_series(1, 60) g;"
        "ALTER TABLE legacy_notes ADD CONSTRAINT notes_tenant_fk FOREIGN KEY (tenant_id) REFERENCES tenants NOT VALID;"
        "COMMENT ON CONSTRAINT \"note→credit 100%\" ON legacy_notes IS 'kept for audits';"
        "CREATE TABLE legacy_events (id int, credit_id bigint REFERENCES credits) PARTITION BY RANGE (id);"
        "CREATE TABLE legacy_events_1 PARTITION OF legacy_events FOR VALUES FROM (0) TO (1000);"
        "INSERT INTO legacy_events SELECT g, 1 + g % 25 FROM generate_series(1, 99) g;"
    )
    before = foreign_keys(db)
    comment = (
        "SELECT obj_description(oid, 'pg_constraint') FROM pg_constraint WHERE conname = 'note→credit 100%'"
    )
    targets = [TableName("public", "legacy_notes"), TableName("public", "legacy_events")]
    result = take_backup(
        db.db,
        targets,
        tmp_path,
        BackupOptions(scope="targets"),
        server_version_num=int(db.server.psql("SHOW server_version_num")),
    )
    db.execute("DROP TABLE legacy_notes, legacy_events")

    plan = plan_restore(db.db, result.path)
    assert sorted((k.label, k.valid, len(k.comments)) for k in plan.foreign_keys) == sorted(
        [
            ("legacy_events_credit_id_fkey on public.legacy_events", True, 0),
            ("note→credit 100% on public.legacy_notes", True, 1),
            ("notes_tenant_fk on public.legacy_notes", False, 0),
        ]
    )
    restored = run_restore(db.db, plan)
    assert sorted((o.name, o.state) for o in restored.foreign_keys) == sorted(
        [
            ("legacy_events_credit_id_fkey on public.legacy_events", "validated"),
            ("note→credit 100% on public.legacy_notes", "validated"),
            ("notes_tenant_fk on public.legacy_notes", "not valid in the backup"),
        ]
    )
    verification = verify_restored(db.db, plan, restored)
    assert sorted(verification.foreign_keys) == sorted(
        [
            "note→credit 100% on public.legacy_notes: validated",
            "legacy_events_credit_id_fkey on public.legacy_events: validated",
            "notes_tenant_fk on public.legacy_notes: NOT VALID, as in the backup",
        ]
    )
    assert foreign_keys(db) == before
    assert db.scalar(comment) == "kept for audits"
    assert plan_restore(db.db, result.path).already_restored


def test_parse_foreign_keys_reads_only_what_pg_restore_prints_for_them():
    from safedrop.restore.foreignkeys import parse_foreign_keys

    script = (
        "--\n-- PostgreSQL database dump\n--\n\n\\restrict abc\n\nSET statement_timeout = 0;\n"
        "SELECT pg_catalog.set_config('search_path', '', false);\n\n"
        'ALTER TABLE ONLY "Odd"."t;x"\n    ADD CONSTRAINT "fk""1" FOREIGN KEY (a) REFERENCES public.credits(id) '
        "ON DELETE CASCADE DEFERRABLE NOT VALID;\n\n"
        'COMMENT ON CONSTRAINT "fk""1" ON "Odd"."t;x" IS \'a; b\';\n\n\\unrestrict abc\n'
    )
    [key] = parse_foreign_keys(script)
    assert (key.table, key.name, key.references, key.valid) == (
        TableName("Odd", "t;x"),
        'fk"1',
        TableName("public", "credits"),
        False,
    )
    assert key.add_statement(validate=False) == key.statement  # NOT VALID already: left as it was
    assert key.comments == ('COMMENT ON CONSTRAINT "fk""1" ON "Odd"."t;x" IS \'a; b\'',)
    with pytest.raises(ValueError, match="unexpected statement 'DROP TABLE public.credits'"):
        parse_foreign_keys(script + "DROP TABLE public.credits;\n")


def test_the_restore_finds_the_archive_by_file_name_or_by_the_drop_s_flow_run_id(
    env_url, tmp_path, monkeypatch
):
    """A worker of the restore deployment has no path from the operator's shell: the file name in its
    backup directory, or the id of the flow run that dropped the tables, is enough."""
    seed(env_url)
    monkeypatch.setenv("SAFEDROP_BACKUP_DIR", str(tmp_path / "b"))
    drop_state, path = drop_run(tmp_path)
    monkeypatch.chdir(tmp_path)  # not the backup directory
    for spec in (str(drop_state.state_details.flow_run_id), Path(path).name):
        state, report = restore(spec, dry_run=True)
        assert report.status == "ready", (spec, report.reasons)
        assert report.check.archive == path, (spec, report.check.archive)
    state, report = restore("00000000-0000-4000-8000-000000000000", dry_run=True)
    assert report.status == "failed"
    [reason] = report.reasons
    assert reason.startswith("backup 00000000-0000-4000-8000-000000000000 does not exist (looked in "), reason
    assert reason.endswith(
        "pass the archive the drop wrote, its file name in the backup directory, or the id of the flow run "
        "that dropped the tables"
    ), reason
