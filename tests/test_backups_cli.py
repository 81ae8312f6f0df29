"""`safedrop backups list|prune` on real backups (real pg_dump) in a directory and in a bucket on a real
S3-API server: every backup listed with its database, migration, size and age; prune is a dry run
unless --confirm and never removes the newest backup of a migration and database, however old."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from safedrop.backup.manifest import MANIFEST_SUFFIX
from safedrop.cli.main import main
from safedrop.migration import TableName, load_migration
from safedrop.results import BackupManifest
from safedrop.store import s3 as store
from safedrop.store.location import S3Location, parse_object_uri
from tasks.backup import BackupOptions, take_backup
from tests.conftest import GUIDE_TEMPLATE, TARGETS, fresh_database


@pytest.fixture
def other_db(pg):
    yield from fresh_database(pg, "o", GUIDE_TEMPLATE)


def backups_of(tdb, where, ages_days: list[int]) -> list[str]:
    """Real backups of ``tdb`` (scope targets), their manifests dated ``ages_days`` ago; their locations."""
    migration = load_migration("drop_credit_allocation_tables")
    version = tdb.scalar("SELECT current_setting('server_version_num')::int")
    made = []
    for days in ages_days:
        result = take_backup(
            tdb.db,
            [TableName("public", t) for t in TARGETS],
            where,
            BackupOptions(scope="targets"),
            server_version_num=version,
            migration=migration,
        )
        backdate(result.path, datetime.now(UTC) - timedelta(days=days))
        made.append(result.path)
    return made


def backdate(archive: str, when: datetime) -> None:
    if archive.startswith("s3://"):
        location, name = parse_object_uri(archive)
        s3 = store.client(location)
        manifest = BackupManifest.model_validate_json(store.get_bytes(s3, location, name + MANIFEST_SUFFIX))
        manifest.created_at = when.isoformat(timespec="seconds")
        store.put_bytes(s3, location, name + MANIFEST_SUFFIX, manifest.model_dump_json().encode())
    else:
        path = Path(archive + MANIFEST_SUFFIX)
        manifest = BackupManifest.model_validate_json(path.read_bytes())
        manifest.created_at = when.isoformat(timespec="seconds")
        path.write_text(manifest.model_dump_json())


def exists(archive: str) -> bool:
    if archive.startswith("s3://"):
        location, name = parse_object_uri(archive)
        try:
            store.head(store.client(location), location, name)
            return True
        except store.ObjectMissing:
            return False
    return Path(archive).exists()


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("kind", ["directory", "bucket"])
def test_prune_keeps_the_newest_of_each_database_and_removes_only_with_confirm(
    guide_db, other_db, tmp_path, capsys, request, kind
):
    if kind == "bucket":
        bucket = request.getfixturevalue("s3")
        where_text = f"s3://{bucket.name}/fleet"
        where = S3Location(bucket.name, "fleet")
    else:
        where = tmp_path / "backups"
        where_text = str(where)
    old, older, newest = backups_of(guide_db, where, [50, 40, 35])
    [lonely] = backups_of(other_db, where, [90])  # another database: its only backup, however old

    code, out, err = cli(capsys, "backups", "list", "--backup-dir", where_text, "--json")
    assert code == 0, out + err
    listed = json.loads(out)["backups"]
    assert [b["archive"] for b in listed] == [newest, older, old, lonely], listed
    by = {b["archive"]: b for b in listed}
    assert by[newest]["needed"] and by[lonely]["needed"] and not by[old]["needed"]
    assert (
        by[newest]["database"] == guide_db.name and by[newest]["migration"] == "drop_credit_allocation_tables"
    )
    assert 35 * 86400 <= by[newest]["age_s"] < 36 * 86400 and by[newest]["bytes"] > 0

    code, out, err = cli(capsys, "backups", "prune", "--older-than", "30d", "--backup-dir", where_text)
    assert code == 0, out + err
    assert "would remove 2 backup(s) older than 30 d (dry run: add --confirm to remove them)" in out, out
    assert all(exists(a) for a in (old, older, newest, lonely))  # a dry run removes nothing

    code, out, err = cli(
        capsys, "backups", "prune", "--older-than", "30d", "--confirm", "--backup-dir", where_text, "--json"
    )
    assert code == 0, out + err
    assert sorted(json.loads(out)["removed"]) == sorted([old, older])
    assert not exists(old) and not exists(older) and exists(newest) and exists(lonely)
    code, out, err = cli(capsys, "backups", "list", "--backup-dir", where_text, "--json")
    assert [b["archive"] for b in json.loads(out)["backups"]] == [newest, lonely]


def test_a_bad_duration_or_uri_is_one_line(capsys, tmp_path):
    code, out, err = cli(capsys, "backups", "prune", "--older-than", "soon", "--backup-dir", str(tmp_path))
    assert code == 2 and err.strip() == "safedrop: cannot read duration 'soon'; use e.g. 500ms, 2s or 5m", err
    code, out, err = cli(capsys, "backups", "list", "--backup-dir", "s3://X")
    assert code == 2 and err.strip().startswith("safedrop: --backup-dir 's3://X' names no valid bucket"), err
