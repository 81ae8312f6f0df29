"""pg_dump streamed into a real S3-API server (moto's server mode on localhost): the archive is uploaded
while pg_dump writes it, nothing on local disk, proven on the stored object; a failed dump or a missing
bucket leaves no object and says so in one line, the database untouched."""

from __future__ import annotations

import hashlib
import os
import signal
import threading

import pytest

from safedrop.backup.storedump import dump_to_store, stored_toc
from safedrop.backup.storemanifest import check_stored_archive, read_stored_manifest, write_stored_manifest
from safedrop.errors import BackupFailed, RestoreRefused
from safedrop.pg.pgtools import find_pg_dump
from safedrop.results import BackupManifest
from safedrop.store import s3 as store
from safedrop.store.location import S3Location
from tests.conftest import TARGETS
from tests.helpers import pg_dump_child, poll
from tests.s3server import S3Server, client

ROWS = 120_000  # ~7 MiB of archive at -Z0: more than one 5 MiB part


@pytest.fixture
def tools(pg):
    return find_pg_dump(int(pg.psql("SHOW server_version_num").strip()))


def fill(db, rows: int = ROWS) -> None:
    db.execute(
        "INSERT INTO credit_allocations (tenant_id, credit_id, amount, period_start, period_end) "
        f"SELECT 1 + g % 5, 1 + g % 5, g * 1.5, date '2024-01-01', date '2024-02-01' FROM generate_series(1, {rows}) g;"
        "INSERT INTO credit_allocation_transactions (allocation_id, amount) "
        "SELECT id, (id * 7919) % 1000 FROM credit_allocations"
    )


def test_pg_dump_streams_into_the_store_and_the_stored_object_is_proven(
    guide_db, tools, s3, tmp_path, monkeypatch
):
    fill(guide_db)
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))  # nothing of the dump may land here
    (tmp_path / "tmp").mkdir()
    stored = dump_to_store(
        tools, guide_db.db, s3.location, "t.dump", compression=0, part_bytes=5 * 1024 * 1024
    )
    assert s3.keys() == ["backups/t.dump"] and not s3.uploads_in_progress()
    assert stored.bytes > 5 * 1024 * 1024, stored  # several parts
    data = b"".join(store.read(store.client(s3.location), s3.location, "t.dump"))
    assert len(data) == stored.bytes and hashlib.sha256(data).hexdigest() == stored.sha256
    labels = [e.label for e in stored_toc(tools, store.client(s3.location), s3.location, "t.dump")]
    for table in TARGETS:
        assert any(label.startswith(f"TABLE DATA public {table} ") for label in labels), labels
    assert os.listdir(tmp_path / "tmp") == []


def test_a_failed_pg_dump_leaves_no_object_and_says_why(guide_db, tools, s3):
    with pytest.raises(BackupFailed) as caught:
        dump_to_store(tools, guide_db.db, s3.location, "bad.dump", snapshot="00000003-0000001B-1")
    message = str(caught.value)
    assert (
        message.startswith("pg_dump failed: ")
        and "snapshot" in message
        and message.endswith("the drop did not run")
    )
    assert s3.keys() == [] and s3.uploads_in_progress() == []
    assert all(guide_db.exists(f"public.{t}") for t in TARGETS)


def test_a_missing_bucket_stops_before_pg_dump_in_one_line(guide_db, tools, s3):
    missing = S3Location("safedrop-missing-bucket", "prod")
    with pytest.raises(BackupFailed) as caught:
        dump_to_store(tools, guide_db.db, missing, "m.dump")
    assert str(caught.value) == (
        "the backup could not be stored: the bucket of s3://safedrop-missing-bucket/prod does not exist; "
        "create it or fix the URI; nothing was dropped"
    )
    assert dump_sessions(guide_db) == 0  # pg_dump never started


def dump_sessions(db) -> int:
    with db.db.shared_engine().connect() as conn:
        return conn.exec_driver_sql(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'safedrop pg_dump'"
        ).scalar_one()


def test_the_store_going_away_mid_upload_stops_the_backup_and_pg_dump_goes_too(
    guide_db, tools, tmp_path, monkeypatch
):
    """pg_dump is held (SIGSTOP) once the upload has begun, the store is stopped, pg_dump goes on: the
    next part cannot be sent — the backup stops in one line, pg_dump is killed, nothing dropped."""
    fill(guide_db, 500_000)  # ~30 MiB: pg_dump cannot be done before it is held
    server = S3Server(tmp_path / "moto.log").start()
    outcome: dict = {}
    try:
        for name, value in server.env.items():
            monkeypatch.setenv(name, value)
        client(server).create_bucket(Bucket="going-away")
        location = S3Location("going-away", "p")

        def backup() -> None:
            try:
                dump_to_store(
                    tools, guide_db.db, location, "g.dump", compression=0, part_bytes=5 * 1024 * 1024
                )
            except BaseException as exc:
                outcome["error"] = exc

        worker = threading.Thread(target=backup)
        worker.start()
        pid = poll("pg_dump to start", pg_dump_child)
        os.kill(pid, signal.SIGSTOP)
        try:
            poll(
                "the multipart upload to begin",
                lambda: client(server).list_multipart_uploads(Bucket="going-away").get("Uploads"),
            )
            server.stop()
        finally:
            os.kill(pid, signal.SIGCONT)
        worker.join(timeout=120)
        assert not worker.is_alive()
    finally:
        server.stop()
    error = outcome.get("error")
    assert isinstance(error, BackupFailed), outcome
    message = str(error)
    assert message.startswith(
        "the backup could not be stored: the object store for s3://going-away/p/g.dump is unreachable while uploading"
    ), message
    assert message.endswith("; nothing was dropped") and "testing-secret-key" not in message
    assert pg_dump_child() is None
    poll("pg_dump's session to go", lambda: dump_sessions(guide_db) == 0)
    assert all(guide_db.exists(f"public.{t}") for t in TARGETS)


def manifest_of(stored, name: str) -> BackupManifest:
    """The manifest a backup writes for a stored archive (the fields the proof reads, the rest plausible)."""
    return BackupManifest(
        archive=name,
        archive_format="custom",
        bytes=stored.bytes,
        sha256=stored.sha256,
        database="t",
        server="postgres@127.0.0.1:5432/t",
        server_version="15",
        server_version_num=150000,
        pg_dump_version="pg_dump (PostgreSQL) 15",
        pg_dump_version_num=150000,
        scope="targets",
        compression=1,
        snapshot="00000003-00000002-1",
        created_at="2026-12-07T10:00:00+00:00",
        duration_s=1.0,
        targets=[],
        uri=stored.uri,
        version_id=stored.version_id,
        encryption=stored.encryption,
    )


@pytest.fixture
def stored_backup(guide_db, tools, s3):
    fill(guide_db, 1000)
    s3c = store.client(s3.location)
    stored = dump_to_store(tools, guide_db.db, s3.location, "m.dump", s3=s3c)
    manifest = manifest_of(stored, "m.dump")
    assert write_stored_manifest(s3c, s3.location, manifest) == f"s3://{s3.name}/backups/m.dump.manifest.json"
    return s3c, manifest


def test_a_stored_archive_and_its_manifest_prove_each_other(s3, stored_backup):
    s3c, manifest = stored_backup
    assert read_stored_manifest(s3c, s3.location, "m.dump") == manifest
    check_stored_archive(s3c, s3.location, manifest)  # intact: no refusal
    assert s3.keys() == ["backups/m.dump", "backups/m.dump.manifest.json"]


@pytest.mark.parametrize("change", ["changed", "truncated"])
def test_a_changed_or_truncated_stored_archive_is_refused(s3, stored_backup, change):
    s3c, manifest = stored_backup
    data = b"".join(store.read(s3c, s3.location, "m.dump"))
    tampered = data[:-1] + bytes([data[-1] ^ 1]) if change == "changed" else data[: len(data) // 2]
    client(s3.server).put_object(Bucket=s3.name, Key="backups/m.dump", Body=tampered)
    with pytest.raises(RestoreRefused) as caught:
        check_stored_archive(s3c, s3.location, manifest)
    message = str(caught.value)
    assert message.startswith(f"the archive s3://{s3.name}/backups/m.dump does not match its manifest (")
    assert f"{len(tampered):,} bytes" in message
    assert message.endswith("it is corrupted or truncated; restore from another backup; nothing was changed")


def test_in_a_versioned_bucket_the_recorded_version_is_read_whatever_was_written_since(guide_db, tools, s3):
    client(s3.server).put_bucket_versioning(Bucket=s3.name, VersioningConfiguration={"Status": "Enabled"})
    s3c = store.client(s3.location)
    stored = dump_to_store(tools, guide_db.db, s3.location, "v.dump", s3=s3c)
    assert stored.version_id
    client(s3.server).put_object(Bucket=s3.name, Key="backups/v.dump", Body=b"overwritten")
    check_stored_archive(s3c, s3.location, manifest_of(stored, "v.dump"))  # the recorded version: intact


def test_a_stored_archive_without_its_manifest_is_refused(s3, stored_backup):
    s3c, _ = stored_backup
    client(s3.server).delete_object(Bucket=s3.name, Key="backups/m.dump.manifest.json")
    with pytest.raises(RestoreRefused) as caught:
        read_stored_manifest(s3c, s3.location, "m.dump")
    assert str(caught.value) == (
        f"no manifest beside s3://{s3.name}/backups/m.dump (expected s3://{s3.name}/backups/m.dump.manifest.json); "
        "safedrop restores only archives whose contents it can prove — use the manifest written with the "
        "backup; nothing was changed"
    )
