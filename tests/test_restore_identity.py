"""A restore goes back into the database its backup was taken of — the same name on the same cluster
(``pg_control_system().system_identifier``) — unless the operator chooses another with
``--into-other-database``. Plain functions and the CLI in-process, no Prefect harness; real PostgreSQL,
pg_dump and pg_restore. Every refusal asserts its one line and that nothing was restored.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from safedrop.backup.manifest import manifest_path
from safedrop.cli.main import main
from safedrop.migration import TableName
from safedrop.pg.pgserver import LocalPostgres
from tasks.backup import BackupOptions, take_backup
from tests.conftest import GUIDE_TEMPLATE, fresh_database
from tests.conftest import TestDatabase as Db

TARGETS = [TableName("public", "credit_allocation_transactions"), TableName("public", "credit_allocations")]
DROP_TARGETS = "DROP TABLE credit_allocation_transactions, credit_allocations"
NO_LEDGER = "safedrop's ledger has no record of dropping these tables"  # dropped by hand here

pytestmark = pytest.mark.usefixtures("cli_env")


@pytest.fixture
def other_db(pg) -> Iterator[Db]:
    """Another database of the same cluster, shaped like the guide's, its targets already gone."""
    for db in fresh_database(pg, "o", GUIDE_TEMPLATE):
        db.execute(DROP_TARGETS)
        yield db


def system_identifier(server: LocalPostgres) -> str:
    return server.psql("SELECT system_identifier FROM pg_control_system()").strip()


def backed_up(db: Db, tmp_path: Path) -> Path:
    """Rows in the targets, then a backup of them (the plain backup function), as a drop takes it."""
    db.execute(
        "INSERT INTO credit_allocations (tenant_id, credit_id, amount, period_start, period_end) "
        "SELECT 1 + g % 5, 1 + g % 5, g * 1.5, date '2024-01-01' + g, date '2024-02-01' + g "
        "FROM generate_series(1, 12) g;"
        "INSERT INTO credit_allocation_transactions (allocation_id, amount) SELECT id, id FROM credit_allocations;"
    )
    result = take_backup(
        db.db,
        TARGETS,
        tmp_path / "backups",
        BackupOptions(scope="targets"),
        server_version_num=int(db.server.psql("SHOW server_version_num")),
    )
    return Path(result.path)


def restore(archive: Path, db: Db, capsys, *flags: str) -> tuple[int, str]:
    """``safedrop restore`` in this process; its exit code and what it printed."""
    code = main(["restore", "--backup", str(archive), "--database-url", db.url, *flags])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.out + captured.err
    return code, captured.out


def reasons(out: str) -> list[str]:
    return [line[4:] for line in out.splitlines() if line.startswith("  ✗ ")]


def warnings(out: str) -> list[str]:
    return [line[4:] for line in out.splitlines() if line.startswith("  ! ")]


def test_a_restore_into_a_database_of_another_name_is_refused_unless_chosen(
    guide_db, other_db, tmp_path, capsys
):
    archive = backed_up(guide_db, tmp_path)
    system = system_identifier(guide_db.server)
    manifest = json.loads(manifest_path(archive).read_text())
    # the backup records whose it is, read in the snapshot it dumped
    assert (manifest["database"], manifest["system_identifier"]) == (guide_db.name, system)
    before = other_db.snapshot()

    code, out = restore(archive, other_db, capsys)
    assert code == 3 and out.startswith("safedrop: REFUSED — nothing was changed\n"), out
    assert reasons(out) == [
        f"the backup {archive} was taken of database {guide_db.name!r} (system {system}), and this is "
        f"database {other_db.name!r} (system {system}): another database; restore it into "
        f"{guide_db.name!r}, or pass --into-other-database (parameter into_other_database) to restore "
        f"it into {other_db.name!r} on purpose; nothing was changed"
    ]
    assert other_db.snapshot() == before and not other_db.exists("public.credit_allocations")

    code, out = restore(archive, other_db, capsys, "--into-other-database")
    assert code == 0 and out.startswith("safedrop: RESTORED"), out
    assert warnings(out) == [
        f"restoring into database {other_db.name!r} (system {system}), as asked (--into-other-database); "
        f"the backup was taken of database {guide_db.name!r} (system {system})",
        NO_LEDGER,
    ]
    assert (
        other_db.count("credit_allocations") == 12 and other_db.count("credit_allocation_transactions") == 12
    )


def test_the_same_name_on_another_cluster_is_refused_unless_chosen(guide_db, tmp_path, capsys):
    """A second cluster (~2 s to start): a database of the backup's very name, but not its database."""
    archive = backed_up(guide_db, tmp_path)
    with LocalPostgres() as second:
        second.psql(f"CREATE DATABASE {guide_db.name}")
        twin = Db(second, guide_db.name)
        twin.execute((Path(__file__).parent.parent / "sql" / "demo" / "schema.sql").read_text())
        twin.execute(DROP_TARGETS)
        ours, theirs = system_identifier(guide_db.server), system_identifier(second)
        assert ours != theirs
        before = twin.snapshot()

        code, out = restore(archive, twin, capsys)
        assert code == 3 and out.startswith("safedrop: REFUSED — nothing was changed\n"), out
        assert reasons(out) == [
            f"the backup {archive} was taken of database {guide_db.name!r} (system {ours}), and this is "
            f"database {guide_db.name!r} (system {theirs}): the same name on another cluster; restore it "
            f"into {guide_db.name!r} on the cluster with system identifier {ours}, or pass "
            f"--into-other-database (parameter into_other_database) to restore it into this one on purpose; "
            "nothing was changed"
        ]
        assert twin.snapshot() == before and not twin.exists("public.credit_allocations")

        code, out = restore(archive, twin, capsys, "--into-other-database", "--json")
        report = json.loads(out)
        assert code == 0 and report["status"] == "restored", report
        assert report["warnings"] == [
            f"restoring into database {guide_db.name!r} (system {theirs}), as asked (--into-other-database); "
            f"the backup was taken of database {guide_db.name!r} (system {ours})",
            NO_LEDGER,
        ]
        assert twin.count("credit_allocations") == 12


def test_a_manifest_without_a_system_identifier_is_compared_by_name_only_and_says_so(
    guide_db, other_db, tmp_path, capsys
):
    """A backup written before safedrop recorded the cluster's identity: the name still decides."""
    archive = backed_up(guide_db, tmp_path)
    path = manifest_path(archive)
    manifest = json.loads(path.read_text())
    del manifest["system_identifier"]
    path.write_text(json.dumps(manifest, indent=2))
    system = system_identifier(guide_db.server)
    before = other_db.snapshot()

    code, out = restore(archive, other_db, capsys)
    assert code == 3 and reasons(out) == [
        f"the backup {archive} was taken of database {guide_db.name!r} (system identifier not recorded), "
        f"and this is database {other_db.name!r} (system {system}): another database; restore it into "
        f"{guide_db.name!r}, or pass --into-other-database (parameter into_other_database) to restore "
        f"it into {other_db.name!r} on purpose; nothing was changed"
    ], out
    assert other_db.snapshot() == before

    guide_db.execute(DROP_TARGETS)
    code, out = restore(archive, guide_db, capsys)
    assert code == 0 and out.startswith("safedrop: RESTORED"), out
    assert warnings(out) == [
        "the backup's manifest records no system identifier (written before safedrop recorded one, or by a "
        "role that may not read it): it was "
        f"compared with this database by name only ({guide_db.name!r}), so the same name on another "
        "cluster would not have been told apart",
        NO_LEDGER,
    ]
    assert guide_db.count("credit_allocations") == 12
