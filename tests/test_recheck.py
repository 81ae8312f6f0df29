"""Every committed write to a target after the backup's snapshot stops the drop — whatever its types.

The content checksum alone (``hash_record_extended``) hashes equal values equally: numeric ``1.0`` and
``1.00``, citext ``Billing@Example.com`` and ``billing@example.com``. A write that only changes such a
value, committed while the drop waits for its lock, was dropped with the backup holding the old text.
The recheck proves by xmin that no row was written since the snapshot (and keeps the checksum as a
second proof); these tests reproduce each way a write could slip past, against the real server.
"""

from __future__ import annotations

import threading

import pytest

from safedrop.errors import ChangedSinceBackup, DropStopped
from safedrop.pg.lockschedule import LockSchedule
from safedrop.pg.pgserver import wait_until
from tasks.backup import take_backup
from tests.helpers import credit_plan, drop_now, session

SEED = (
    "CREATE EXTENSION IF NOT EXISTS citext;"
    "ALTER TABLE credit_allocations ADD COLUMN rate numeric, ADD COLUMN contact citext, ADD COLUMN doc jsonb;"
    "INSERT INTO credit_allocations (tenant_id, credit_id, amount, period_start, period_end, rate, contact, doc) "
    "SELECT 1 + g % 25, 1 + g % 25, g, '2024-01-01', '2024-02-01', 1.0, 'Billing@Example.com', '{\"n\": 1.0}' "
    "FROM generate_series(1, 20) g;"
)


def _backup(tdb, tmp_path, allow: list[str] | None = None):
    version = int(tdb.scalar("SHOW server_version_num"))
    migration, oids, approved = credit_plan(tdb, allow)
    backup = take_backup(tdb.db, migration.targets, tmp_path / "b", server_version_num=version)
    return (migration, oids, approved), backup


def _drop(tdb, plan, backup, allow: list[str] | None = None):
    return drop_now(
        tdb.db,
        plan,
        LockSchedule(budget_ms=20_000),
        expected_rows={},
        record_in_ledger=True,
        backup=backup,
        allow_cascade=allow or [],
    )


def _waiting_for_lock(tdb) -> bool:
    return bool(
        tdb.scalar(
            "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid) WHERE NOT l.granted "
            "AND l.relation = 'credit_allocations'::regclass AND a.application_name = 'safedrop'"
        )
    )


def _drop_while_a_write_commits(tdb, plan, backup, write: str):
    """The write's transaction holds its row lock; the drop starts and waits for its EXCLUSIVE lock;
    the write commits; the drop gets its lock and rechecks. Returns the drop's exception, if any."""
    writer = session(tdb, "application")
    outcome: dict = {}
    try:
        with writer.cursor() as cur:
            cur.execute(write)

        def attempt():
            try:
                outcome["result"] = _drop(tdb, plan, backup)
            except Exception as exc:  # noqa: BLE001 - handed to the test
                outcome["error"] = exc

        thread = threading.Thread(target=attempt)
        thread.start()
        wait_until(lambda: _waiting_for_lock(tdb), deadline_s=30, what="the drop waiting for its lock")
        writer.commit()
        thread.join(60)
    finally:
        writer.close()
    return outcome


@pytest.mark.parametrize(
    "write",
    [
        "UPDATE credit_allocations SET rate = 1.00 WHERE id = 3",
        "UPDATE credit_allocations SET contact = 'billing@example.com' WHERE id = 3",
        "UPDATE credit_allocations SET doc = '{\"n\": 1.00}' WHERE id = 3",
    ],
    ids=["numeric-scale", "citext-case", "jsonb-number"],
)
def test_a_write_the_checksum_cannot_see_committed_while_the_drop_waits_stops_it(guide_db, tmp_path, write):
    guide_db.execute(SEED)
    plan, backup = _backup(guide_db, tmp_path)
    outcome = _drop_while_a_write_commits(guide_db, plan, backup, write)
    error = outcome.get("error")
    assert isinstance(error, ChangedSinceBackup), outcome
    assert str(error).startswith(
        "1 row of public.credit_allocations was written after the backup; nothing was dropped"
    ), error
    assert error.exit_code == 3
    assert guide_db.exists("credit_allocations") and guide_db.exists("credit_allocation_transactions")
    row = guide_db.scalar(
        "SELECT rate::text || '|' || contact || '|' || doc::text FROM credit_allocations WHERE id = 3"
    )
    assert row != '1.0|Billing@Example.com|{"n": 1.0}'  # the committed write is still there


def test_a_write_from_a_savepoint_of_a_transaction_open_during_the_backup_stops_the_drop(guide_db, tmp_path):
    """A subtransaction's xid is not in a txid_snapshot's list of running transactions, so
    txid_visible_in_snapshot() takes it for visible: the rows at or after the snapshot's xmin catch it."""
    guide_db.execute(SEED)
    writer = session(guide_db, "application")
    try:
        with writer.cursor() as cur:
            cur.execute("SELECT txid_current()")  # an xid the backup's snapshot sees as running
            cur.execute("SAVEPOINT s1; UPDATE credit_allocations SET rate = 1.00 WHERE id = 5; RELEASE s1")
        plan, backup = _backup(guide_db, tmp_path)
        writer.commit()  # after the snapshot
    finally:
        writer.close()
    with pytest.raises(ChangedSinceBackup) as caught:
        _drop(guide_db, plan, backup)
    assert "of public.credit_allocations w" in str(caught.value) and "nothing was dropped" in str(
        caught.value
    )
    assert guide_db.exists("credit_allocations")
    assert guide_db.scalar("SELECT rate::text FROM credit_allocations WHERE id = 5") == "1.00"


def test_a_delete_after_the_backup_stops_the_drop(guide_db, tmp_path):
    guide_db.execute(SEED)
    plan, backup = _backup(guide_db, tmp_path)
    guide_db.execute("DELETE FROM credit_allocations WHERE id IN (1, 2)")
    with pytest.raises(ChangedSinceBackup) as caught:
        _drop(guide_db, plan, backup)
    assert str(caught.value).startswith(
        "2 rows of public.credit_allocations were deleted after the backup; nothing was dropped"
    ), caught.value
    assert guide_db.count("credit_allocations") == 18


def test_rows_frozen_or_vacuumed_since_the_backup_are_not_writes(guide_db, tmp_path):
    """VACUUM FREEZE keeps each row's xmin: the recheck does not take housekeeping for a write."""
    guide_db.execute(SEED)
    plan, backup = _backup(guide_db, tmp_path)
    guide_db.execute("VACUUM (FREEZE) credit_allocations; VACUUM (FREEZE) credit_allocation_transactions")
    result = _drop(guide_db, plan, backup)
    assert not guide_db.exists("credit_allocations")
    assert result.content_check.startswith("no row of 2 target(s) was written after the backup's snapshot")


def test_a_target_missing_from_the_backup_is_never_dropped(guide_db, tmp_path):
    """A backup whose manifest lacks a present target (an older plan, a changed migration) drops nothing."""
    guide_db.execute(SEED)
    plan, backup = _backup(guide_db, tmp_path)
    partial = backup.model_copy(
        update={"targets": [t for t in backup.targets if t.table_name == "credit_allocations"]}
    )
    with pytest.raises(DropStopped) as caught:
        _drop(guide_db, plan, partial)
    assert str(caught.value).startswith(
        f"public.credit_allocation_transactions is not in the backup {backup.path}; nothing was dropped"
    ), caught.value
    assert guide_db.exists("credit_allocations") and guide_db.exists("credit_allocation_transactions")


def test_a_partitioned_target_unchanged_since_the_backup_is_dropped(guide_db, tmp_path):
    """xmin is read through the partitioned parent from every partition."""
    guide_db.execute(
        "CREATE TABLE credit_allocation_transactions_p (LIKE credit_allocation_transactions) "
        "PARTITION BY RANGE (id);"
        "CREATE TABLE catp_1 PARTITION OF credit_allocation_transactions_p FOR VALUES FROM (0) TO (100);"
        "CREATE TABLE catp_2 PARTITION OF credit_allocation_transactions_p FOR VALUES FROM (100) TO (MAXVALUE);"
        "DROP TABLE credit_allocation_transactions;"
        "ALTER TABLE credit_allocation_transactions_p RENAME TO credit_allocation_transactions;"
        "INSERT INTO credit_allocation_transactions (id, allocation_id, amount, created_at) "
        "SELECT g, 1, 1, now() FROM generate_series(1, 200) g"
    )
    partitions = ["public.catp_1", "public.catp_2"]
    plan, backup = _backup(guide_db, tmp_path, partitions)
    guide_db.execute(
        "INSERT INTO credit_allocation_transactions (id, allocation_id, amount, created_at) VALUES (500, 1, 1, now())"
    )
    with pytest.raises(ChangedSinceBackup) as caught:
        _drop(guide_db, plan, backup, partitions)
    assert "1 row of public.credit_allocation_transactions was written after the backup" in str(caught.value)
    guide_db.execute("DELETE FROM credit_allocation_transactions WHERE id = 500")  # the backup's rows again
    result = _drop(guide_db, plan, backup, partitions)
    assert result.dropped == ["public.credit_allocation_transactions", "public.credit_allocations"]
    assert not guide_db.exists("catp_1") and not guide_db.exists("credit_allocation_transactions")


def test_a_resumed_run_reuses_its_backup_only_for_the_same_targets(guide_db, tmp_path):
    """A run resumed after approval runs from the top and finds the backup it took before by its flow
    run id: reused when the manifest's targets are exactly the current ones — a partitioned target
    included — and not when the migration's targets changed since."""
    from safedrop.migration import TableName
    from tasks.backup import backup_of_run

    guide_db.execute(
        "CREATE TABLE allocation_events (id int, at date) PARTITION BY RANGE (at);"
        "CREATE TABLE allocation_events_2024 PARTITION OF allocation_events "
        "FOR VALUES FROM ('2024-01-01') TO ('2025-01-01') PARTITION BY LIST (id);"
        "CREATE TABLE allocation_events_2024_odd PARTITION OF allocation_events_2024 FOR VALUES IN (1, 3);"
        "INSERT INTO allocation_events VALUES (1, '2024-05-01'), (3, '2024-06-01')"
    )
    version = int(guide_db.scalar("SHOW server_version_num"))
    targets = [TableName("public", "allocation_events"), TableName("public", "credit_allocations")]
    run_id = "0b3d9c4e-0000-4000-8000-000000000001"
    first = take_backup(guide_db.db, targets, tmp_path / "b", server_version_num=version, flow_run_id=run_id)
    (events,) = [t for t in first.targets if t.table_name == "allocation_events"]
    assert events.leaves == ["public.allocation_events_2024_odd"]

    again, why = backup_of_run(tmp_path / "b", run_id, version, targets)
    assert why is None and again is not None
    assert (again.path, again.sha256) == (first.path, first.sha256)
    assert again.tables_in_archive == ["public.allocation_events", "public.credit_allocations"]

    changed = [*targets, TableName("public", "credit_allocation_transactions")]
    none, why = backup_of_run(tmp_path / "b", run_id, version, changed)
    assert none is None
    assert why == (
        f"the backup {first.path} holds public.allocation_events, public.credit_allocations, not the current "
        "targets public.allocation_events, public.credit_allocation_transactions, public.credit_allocations: "
        "taking a new one"
    )


def test_a_resumed_run_whose_targets_changed_takes_a_new_backup(guide_db, tmp_path, caplog):
    """The backup step of a resumed run (the same flow run id) whose migration now names another target:
    the earlier archive lacks it, so a new backup of every current target is taken, and the log says why."""
    from safedrop.migration import TableName
    from safedrop.steps import plain_steps
    from tasks.backup import backup

    version = int(guide_db.scalar("SHOW server_version_num"))
    run_id = "0b3d9c4e-0000-4000-8000-000000000002"
    before = [TableName("public", "credit_allocations")]
    first = take_backup(guide_db.db, before, tmp_path / "b", server_version_num=version, flow_run_id=run_id)
    now = [*before, TableName("public", "credit_allocation_transactions")]
    with plain_steps(), caplog.at_level("WARNING"):
        second = backup(
            guide_db.db,
            now,
            tmp_path / "b",
            server_version_num=version,
            artifact_prefix="t",
            flow_run_id=run_id,
        )
    assert second.path != first.path and len(list((tmp_path / "b").glob("*.dump"))) == 2
    assert sorted(t.name for t in second.targets) == [
        "public.credit_allocation_transactions",
        "public.credit_allocations",
    ]
    assert f"the backup {first.path} holds public.credit_allocations, not the current targets" in caplog.text
