"""A run while the application works: its writes, its long transactions, its writes to the targets.

The application is tests/workload.py in a process of its own: inserts into credit_usage (whose
foreign-key checks lock tenants, then credits — the targets' parents), updates of credits, reads of
tenants, every few milliseconds, each on its own autocommit connection; every error is counted by
SQLSTATE. The run must succeed without costing the application a single error — also while a long
transaction holds credits, the hot parent the drop must lock — and must never lose a committed write
to the targets.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from safedrop.errors import ChangedSinceBackup
from safedrop.pg.lockschedule import LockSchedule
from safedrop.pg.pgserver import wait_until
from tasks.backup import take_backup
from tests.conftest import SURVIVORS, TARGETS
from tests.helpers import application, credit_plan, drop_now, holding, run, session

SEED_TARGETS = (
    "INSERT INTO credit_allocations (tenant_id, credit_id, amount, period_start, period_end) "
    "SELECT 1 + g % 25, 1 + g % 25, g, '2024-01-01', '2024-02-01' FROM generate_series(1, 50) g;"
    "INSERT INTO credit_allocation_transactions (allocation_id, amount) SELECT id, 1 FROM credit_allocations;"
)


def safedrop_waits_for(observer, relation: str) -> bool:
    with observer.cursor() as cur:
        cur.execute(
            "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
            "WHERE NOT l.granted AND l.relation = to_regclass(%s) AND a.application_name = 'safedrop' "
            "AND a.datname = current_database()",
            (relation,),
        )
        return cur.fetchone()[0] > 0


@pytest.mark.cli
def test_a_run_under_application_traffic_and_a_long_transaction_on_credits_costs_the_application_nothing(
    guide_db, tmp_path
):
    """`safedrop run` as an operator runs it, while the application writes and a report holds credits
    open: the drop waits for credits (the parent of the targets' foreign keys) without ever holding
    another table while it waits, the long transaction ends, the run succeeds, exit 0 — and the
    application saw zero errors. Its survivors' row counts moved during the run; that is no failure."""
    exe = Path(sys.executable).parent / "safedrop"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    env.update(PREFECT_HOME=str(tmp_path / "prefect-home"), DATABASE_URL=guide_db.url)
    observer = session(guide_db, "traffic-test-observer", autocommit=True)
    try:
        with application(guide_db, tmp_path) as traffic:
            with holding(guide_db, "SELECT * FROM credits LIMIT 1", app="long-report") as report_tx:
                cli = subprocess.Popen(
                    [str(exe), "run", "--code-policy", "skip", "--backup-dir", str(tmp_path / "b"), "--json"],
                    cwd=tmp_path,
                    env=env,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                )
                seen = wait_until(
                    lambda: "waiting" if safedrop_waits_for(observer, "credits") else cli.poll() is not None,
                    deadline_s=240,
                    interval_s=0.02,
                    what="the drop to wait for credits",
                )
                report_tx.commit()  # the long transaction ends; the drop gets credits on a later attempt
            out, err = cli.communicate(timeout=240)
    finally:
        observer.close()
    report = json.loads(out)
    assert cli.returncode == 0, (report["reasons"], err[-2000:])
    assert report["status"] == "succeeded" and report["dropped"] == [f"public.{t}" for t in TARGETS]
    assert seen == "waiting"  # the drop really had to wait for credits
    assert traffic["errors"] == {}, traffic
    assert all(traffic["ops"][k] > 20 for k in traffic["ops"]), traffic["ops"]
    survivors = {s["table"]: s for s in report["verification"]["survivors"]}
    usage = survivors["public.credit_usage"]
    assert usage["rows_after"] > usage["rows_before"]  # the application kept inserting: reported, not judged
    assert all(not s["problems"] for s in survivors.values())
    assert not any(guide_db.exists(t) for t in TARGETS)
    assert all(guide_db.exists(t) for t in SURVIVORS)


@pytest.mark.usefixtures("prefect_harness")
@pytest.mark.parametrize("destination", ["directory", "bucket"])
def test_targets_written_during_the_run_are_never_lost(guide_db, tmp_path, monkeypatch, request, destination):
    """--allow-nonempty while the application still updates a target row every few milliseconds: the
    writes committed after the dump's snapshot are not in the archive, so under its lock the drop finds
    the targets differ from the backup's checksums and refuses, dropping nothing — the same when the
    archive streams into a bucket while the snapshot checksums the targets."""
    monkeypatch.setenv("DATABASE_URL", guide_db.url)
    guide_db.execute(SEED_TARGETS)
    if destination == "bucket":
        bucket = request.getfixturevalue("s3")
        backup_dir = f"s3://{bucket.name}/backups"
    else:
        backup_dir = str(tmp_path / "b")
    with application(guide_db, tmp_path, "--update-targets") as traffic:
        state, report = run(allow_nonempty=True, backup_dir=backup_dir)
        schema_during = guide_db.snapshot()[0]
    assert state.is_failed() and report.status == "stopped", report.reasons
    [reason] = report.reasons
    assert re.search(
        r"^[\d,]+ rows? of public\.credit_allocations (was|were) written after the backup;", reason
    ), reason
    assert reason.endswith(
        "nothing was dropped — re-run so the backup holds every row (stop the application's writes to "
        "the targets first)"
    ), reason
    assert report.dropped == [] and all(guide_db.exists(t) for t in TARGETS)
    assert traffic["errors"] == {}, traffic
    assert schema_during == guide_db.snapshot()[0]  # foreign keys, indexes: all still there
    last = float(guide_db.scalar("SELECT amount FROM credit_allocations WHERE id = 1"))
    assert last == traffic["last_target_write"]  # every committed write is still there


def test_a_row_updated_nine_times_after_the_backup_is_one_changed_row(guide_db, tmp_path):
    """The refusal counts rows, not writes: nine committed updates of one row after the dump are one
    row the archive holds in an older version."""
    guide_db.execute(SEED_TARGETS)
    migration, oids, approved = credit_plan(guide_db)
    version = int(guide_db.scalar("SHOW server_version_num"))
    backup = take_backup(guide_db.db, migration.targets, tmp_path / "b", server_version_num=version)
    for _ in range(9):
        guide_db.execute("UPDATE credit_allocations SET amount = amount + 1 WHERE id = 7")
    before = guide_db.snapshot()
    with pytest.raises(ChangedSinceBackup) as caught:
        drop_now(
            guide_db.db,
            (migration, oids, approved),
            LockSchedule(budget_ms=10_000),
            expected_rows={},
            record_in_ledger=True,
            backup=backup,
        )
    assert str(caught.value).startswith(
        "1 row of public.credit_allocations was written after the backup; nothing was dropped"
    ), caught.value
    assert caught.value.exit_code == 3 and caught.value.status == "stopped"
    assert guide_db.snapshot() == before
