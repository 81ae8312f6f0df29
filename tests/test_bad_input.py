"""Bad input through the `safedrop` command: one clear line, a non-zero exit, nothing changed.

Complements tests/test_cli.py (malformed or non-PostgreSQL URL, wrong password, unreachable server,
unknown migration, unparsable migration) and tests/test_flow.py (unknown schema, misspelt --keep,
targets that never existed). Identifiers that look like SQL are data: they are looked up, quoted, and
reported as not existing — and ``tenants`` is still there afterwards.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg2
import pytest

from safedrop.cli.main import main
from safedrop.pg.lockschedule import LockSchedule
from safedrop.pg.pgserver import LocalPostgres, free_port, wait_until
from tests.conftest import TARGETS
from tests.helpers import credit_plan, drop_now

pytestmark = pytest.mark.usefixtures("prefect_harness", "cli_env")

SKIP_CODE = ("run", "--code-policy", "skip")  # a run that drops needs a code source, or says it skips one

INJECTION = "; DROP TABLE tenants; --"
VIEW_SQL = (
    "CREATE VIEW org_credit_overview AS SELECT tenant_id, sum(amount) FROM credit_allocations GROUP BY 1"
)


def cli_json(capsys, *argv: str) -> tuple[int, dict, str]:
    code = main([*argv, "--json"])
    out, err = capsys.readouterr()
    return code, json.loads(out), err


def write_migration(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "odd.sql"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("setup", "argv", "fragment"),
    [
        pytest.param(
            "",
            ["--keep", f"credits'{INJECTION}"],
            f'public."credits\'{INJECTION}" must survive the drop but does not exist; check --keep',
            id="keep-single-quote",
        ),
        pytest.param(
            "",
            ["--keep", f'credits"{INJECTION}'],
            f'public."credits""{INJECTION}" must survive the drop but does not exist; check --keep',
            id="keep-double-quote",
        ),
        pytest.param(
            "",
            ["--schema", f"public{INJECTION}", "--keep", "public.credits"],
            f"schema public{INJECTION} does not exist; check --schema",
            id="schema",
        ),
        pytest.param(
            VIEW_SQL,
            ["--allow-cascade", f"public.org_credit_overview'{INJECTION}"],
            "DROP … CASCADE would also remove view public.org_credit_overview",
            id="allow-cascade",
        ),
        pytest.param(
            "",
            ["--migration", "FILE"],
            f'public."credit_allocations{INJECTION}" does not exist and safedrop\'s ledger has no record',
            id="migration-file",
        ),
    ],
)
def test_identifiers_that_look_like_sql_are_data(guide_db, capsys, tmp_path, setup, argv, fragment):
    if setup:
        guide_db.execute(setup)
    migration = write_migration(tmp_path, f'DROP TABLE "credit_allocations{INJECTION}";\n')
    argv = [str(migration) if a == "FILE" else a for a in argv]
    before = guide_db.snapshot()
    code, report, err = cli_json(
        capsys, *SKIP_CODE, "--database-url", guide_db.url, "--backup-dir", str(tmp_path / "b"), *argv
    )
    assert code == 3 and report["status"] == "stopped", report["reasons"]
    assert any(fragment in r for r in report["reasons"]), report["reasons"]
    assert all("\n" not in r for r in report["reasons"])
    if "--allow-cascade" in argv:  # the odd name matched nothing, and says so
        assert (
            f"--allow-cascade public.org_credit_overview'{INJECTION} matches nothing" in report["warnings"][0]
        )
    assert guide_db.exists("public.tenants")
    assert guide_db.snapshot() == before
    assert not (tmp_path / "b").exists()
    assert "Traceback" not in err


def test_a_table_named_like_an_injection_is_dropped_and_nothing_else(guide_db, capsys, tmp_path):
    odd = f"credit_allocations{INJECTION}"
    guide_db.execute(f'CREATE TABLE "{odd}" (id int)')
    migration = write_migration(tmp_path, f'DROP TABLE "{odd}";\n')
    code, report, _ = cli_json(
        capsys,
        *SKIP_CODE,
        "--database-url",
        guide_db.url,
        "--migration",
        str(migration),
        "--backup-dir",
        str(tmp_path / "b"),
    )
    assert code == 0 and report["status"] == "succeeded", report["reasons"]
    assert report["dropped"] == [f'public."{odd}"']
    assert not guide_db.scalar("SELECT to_regclass(:t) IS NOT NULL", t=f'public."{odd}"')
    assert guide_db.exists("public.tenants") and all(guide_db.exists(t) for t in TARGETS)


def test_already_dropped_and_never_existed_are_told_apart(guide_db, capsys, tmp_path):
    # safedrop dropped the credit targets earlier (and wrote that in its ledger) …
    migration, oids, approved = credit_plan(guide_db)
    drop_now(
        guide_db.db,
        (migration, oids, approved),
        LockSchedule(),
        record_in_ledger=True,
        flow_run_id="earlier-run",
    )
    code, report, _ = cli_json(capsys, "plan", "--database-url", guide_db.url)
    assert code == 0 and report["status"] == "already-applied", report["reasons"]

    # … and a migration that also names a table that never existed stops on that one only
    typo = write_migration(tmp_path, "DROP TABLE credit_allocations;\nDROP TABLE credit_alocations;\n")
    before = guide_db.snapshot()
    code, report, _ = cli_json(
        capsys,
        *SKIP_CODE,
        "--database-url",
        guide_db.url,
        "--migration",
        str(typo),
        "--backup-dir",
        str(tmp_path / "b"),
    )
    assert code == 3 and report["status"] == "stopped"
    assert [r for r in report["reasons"] if "does not exist" in r] == [
        "public.credit_alocations does not exist and safedrop's ledger has no record of dropping it: "
        "check the migration's table names and --schema (if it was dropped by hand, remove it from the "
        "migration)"
    ]
    assert not any("public.credit_allocations " in r for r in report["reasons"])
    assert [(t["name"], t["exists"]) for t in report["targets"]] == [
        ("public.credit_allocations", False),
        ("public.credit_alocations", False),
    ]
    assert guide_db.snapshot() == before


def test_a_missing_pg_dump_stops_before_the_drop(guide_db, capsys, tmp_path, monkeypatch):
    empty = tmp_path / "no-binaries"
    empty.mkdir()
    monkeypatch.setenv("SAFEDROP_PG_BIN", str(empty))
    before = guide_db.snapshot()
    code, report, _ = cli_json(
        capsys, *SKIP_CODE, "--database-url", guide_db.url, "--backup-dir", str(tmp_path / "b")
    )
    assert code == 3 and report["status"] == "stopped", report["reasons"]
    assert report["reasons"] == [
        f"SAFEDROP_PG_BIN={empty} holds no working pg_dump and pg_restore; point it at a PostgreSQL bin "
        f"directory (e.g. /usr/lib/postgresql/{report['server_version'].split('.')[0]}/bin); "
        "the drop did not run"
    ]
    assert all(guide_db.exists(t) for t in TARGETS)
    assert guide_db.snapshot() == before
    assert not (tmp_path / "b").exists() or not list((tmp_path / "b").iterdir())


# --------------------------------------------------------------------------------------------------
# a real read-only standby of the session's server
# --------------------------------------------------------------------------------------------------


def _as_postgres(*cmd: str | Path) -> list[str]:
    return (["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []) + [str(c) for c in cmd]


@contextmanager
def standby_of(server: LocalPostgres) -> Iterator[int]:
    """pg_basebackup -R of ``server``, started on a free port as a hot standby; yields the port."""
    assert server.bindir is not None
    base = Path(tempfile.mkdtemp(prefix="safedrop-standby-"))
    data, sock = base / "data", base / "sock"
    sock.mkdir()
    if os.geteuid() == 0:
        shutil.chown(base, "postgres", "postgres")
        shutil.chown(sock, "postgres", "postgres")
    port = free_port()
    started = False
    try:
        subprocess.run(
            _as_postgres(
                server.bindir / "pg_basebackup",
                "-h",
                server.sockdir,
                "-p",
                server.port,
                "-U",
                "postgres",
                "-D",
                data,
                "-R",
                "-X",
                "stream",
                "--checkpoint=fast",
                "--no-sync",
            ),
            check=True,
            capture_output=True,
            timeout=120,
        )
        subprocess.run(
            _as_postgres(
                server.bindir / "pg_ctl",
                "-D",
                data,
                "-l",
                base / "log",
                "-w",
                "-t",
                "60",
                "-o",
                f"-p {port} -k {sock} -c listen_addresses=127.0.0.1 -c fsync=off",
                "start",
            ),
            check=True,
            capture_output=True,
            timeout=90,
        )
        started = True
        yield port
    finally:
        if started:
            subprocess.run(
                _as_postgres(server.bindir / "pg_ctl", "-D", data, "-m", "immediate", "-w", "stop"),
                capture_output=True,
                timeout=60,
            )
        shutil.rmtree(base, ignore_errors=True)


def test_a_read_only_standby_is_refused(pg, guide_db, capsys):
    with standby_of(pg) as port:
        url = guide_db.url.replace(f":{pg.port}/", f":{port}/")

        def accepts_connections() -> bool:
            try:
                psycopg2.connect(url, connect_timeout=2).close()
                return True
            except psycopg2.OperationalError:
                return False

        wait_until(
            accepts_connections, deadline_s=60, interval_s=0.1, what="the standby to accept connections"
        )
        code, report, err = cli_json(capsys, "plan", "--database-url", url)
    assert code == 3 and report["status"] == "stopped", report["reasons"]
    assert report["reasons"] == [
        f"the server at postgres@127.0.0.1:{port}/{guide_db.name} is a read-only standby (pg_is_in_recovery); "
        "point the database URL at the primary"
    ]
    assert pg.password not in json.dumps(report) + err
    assert all(guide_db.exists(t) for t in TARGETS)
