"""The backup step against a real PostgreSQL with real pg_dump and pg_restore.

Slow dumps are made deterministic with a lock, not with data volume or sleeps: while a test holds
ACCESS EXCLUSIVE on ``credits``, pg_dump waits on its ``LOCK TABLE … IN ACCESS SHARE MODE`` until the
test lets go (or kills it).
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import signal
import stat
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import sqlalchemy as sa

from safedrop.backup.archive import sha256_file, verify_archive
from safedrop.backup.backupfiles import reserve_backup_file
from safedrop.backup.manifest import manifest_path
from safedrop.backup.pgdump import run_pg_dump
from safedrop.errors import BackupFailed, TransientBackupFailure, UsageError
from safedrop.migration import TableName
from safedrop.pg.database import database_from_url
from safedrop.pg.pgserver import free_port, wait_until
from safedrop.pg.pgtools import PgTools, find_pg_dump, installed_tools
from safedrop.retries import is_transient
from tasks.backup import BackupOptions, backup, take_backup
from tests.helpers import Background

TARGETS = [TableName("public", "credit_allocation_transactions"), TableName("public", "credit_allocations")]
QUALIFIED = ["public.credit_allocation_transactions", "public.credit_allocations"]
DUMP_NAME = re.compile(r"^(?P<db>.+)-\d{8}T\d{6}Z(-[0-9a-f]{4})?\.dump$")
LOCK_APP = "safedrop-test-lock"


# ------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def server_version_num(pg) -> int:
    return int(pg.psql("SHOW server_version_num").strip())


def seed_targets(guide_db) -> None:
    guide_db.execute(
        "INSERT INTO credit_allocations (tenant_id, credit_id, amount, period_start, period_end) "
        "VALUES (1, 1, 123.45, '2024-01-01', '2024-01-31'), (2, 2, 67.89, '2024-02-01', '2024-02-29');"
        "INSERT INTO credit_allocation_transactions (allocation_id, amount) "
        "SELECT id, 7.77 FROM credit_allocations;"
    )


def files_in(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


def cmdlines() -> dict[int, list[str]]:
    """argv of every process we can see (processes that vanish while we look are skipped)."""
    out = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if raw:
            out[int(entry.name)] = [a.decode("utf-8", "replace") for a in raw.rstrip(b"\0").split(b"\0")]
    return out


def pg_dump_writing_into(directory: Path) -> tuple[int, list[str]] | None:
    """The pg_dump process whose --file is in ``directory`` (ours, not another test's)."""
    for pid, argv in cmdlines().items():
        if Path(argv[0]).name == "pg_dump" and any(a.startswith(f"--file={directory}/") for a in argv):
            return pid, argv
    return None


def pg_dump_is_waiting(guide_db) -> bool:
    """True once our pg_dump's session waits for a lock in the test database."""
    out = guide_db.server.psql(
        "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid) "
        f"WHERE NOT l.granted AND a.application_name = 'safedrop pg_dump' AND a.datname = '{guide_db.name}'"
    )
    return out.strip() != "0"


@contextmanager
def table_locked(guide_db, table: str = "credits") -> Iterator[None]:
    """Hold ACCESS EXCLUSIVE on ``table`` so a pg_dump started meanwhile waits until we let go."""
    engine = guide_db.db.engine(connect_args={"application_name": LOCK_APP})
    conn = engine.connect()
    try:
        conn.execute(sa.text(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE"))
        yield
    finally:
        conn.rollback()
        conn.close()
        engine.dispose()


def start_blocked_backup(guide_db, backup_dir: Path, version: int, **options) -> tuple[Background, int, list]:
    """take_backup in a thread, returned once its pg_dump process is waiting on our lock."""
    db = guide_db.db
    job = Background(
        lambda: take_backup(db, TARGETS, backup_dir, BackupOptions(**options), server_version_num=version)
    )
    pid, argv = wait_until(lambda: pg_dump_writing_into(backup_dir), deadline_s=20, what="pg_dump to start")
    wait_until(lambda: pg_dump_is_waiting(guide_db), deadline_s=20, what="pg_dump to wait on the lock")
    return job, pid, argv


def toc(path: Path, tools: PgTools) -> str:
    return subprocess.run(
        [str(tools.pg_restore), "--list", str(path)], check=True, capture_output=True, text=True
    ).stdout


# ------------------------------------------------------------------------------------------------
# the happy path and re-runs
# ------------------------------------------------------------------------------------------------


def test_backup_writes_a_verified_private_archive(guide_db, server_version_num, tmp_path):
    seed_targets(guide_db)
    before = guide_db.snapshot()
    backup_dir = tmp_path / "backups" / "nested"

    result = take_backup(guide_db.db, TARGETS, backup_dir, server_version_num=server_version_num)

    path = Path(result.path)
    assert path.parent == backup_dir and path.is_file()
    assert DUMP_NAME.match(path.name).group("db") == guide_db.name
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(backup_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "backups").stat().st_mode) == 0o700  # parents we made too
    manifest_file = manifest_path(path)
    assert files_in(backup_dir) == [path.name, manifest_file.name]  # no .partial left
    assert stat.S_IMODE(manifest_file.stat().st_mode) == 0o600
    assert result.manifest_path == str(manifest_file)
    assert result.bytes == path.stat().st_size > 0
    assert result.sha256 == hashlib.sha256(path.read_bytes()).hexdigest() == sha256_file(path)
    assert result.tables_in_archive == QUALIFIED
    assert result.warnings == []
    tools = find_pg_dump(server_version_num)
    assert result.pg_dump_version == tools.version_line and tools.version in result.pg_dump_version
    assert result.duration_s > 0

    listing = toc(path, tools)
    for table in ("credit_allocations", "credit_allocation_transactions"):
        assert re.search(rf"^\d+; \d+ \d+ TABLE public {table} postgres$", listing, re.M)
        assert re.search(rf"^\d+; \d+ \d+ TABLE DATA public {table} postgres$", listing, re.M)
    assert verify_archive(path, TARGETS, tools) == QUALIFIED
    # The rows really are in it.
    data = subprocess.run(
        [str(tools.pg_restore), "--data-only", "--table=credit_allocations", "-f", "-", str(path)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert "123.45" in data and "67.89" in data
    assert guide_db.snapshot() == before


def test_a_second_backup_gets_its_own_file_and_an_existing_dir_keeps_its_mode(
    guide_db, server_version_num, tmp_path
):
    backup_dir = tmp_path / "shared"
    backup_dir.mkdir()
    os.chmod(backup_dir, 0o755)

    first = take_backup(guide_db.db, TARGETS, backup_dir, server_version_num=server_version_num)
    second = take_backup(guide_db.db, TARGETS, backup_dir, server_version_num=server_version_num)

    assert first.path != second.path
    assert files_in(backup_dir) == sorted(
        n for r in (first, second) for n in (Path(r.path).name, manifest_path(Path(r.path)).name)
    )
    assert stat.S_IMODE(backup_dir.stat().st_mode) == 0o755  # not ours: left alone …
    assert first.warnings == [
        f"backup directory {backup_dir} is accessible to other users (mode 0755); "
        "the archive holds every row of the database"
    ]  # … but reported


def test_names_taken_in_the_same_second_do_not_collide(tmp_path):
    from datetime import UTC, datetime

    now = datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)
    partial1, final1 = reserve_backup_file(tmp_path, "my/db", now=now)
    partial2, final2 = reserve_backup_file(tmp_path, "my/db", now=now)
    assert final1.name == "my_db-20240506T070809Z.dump"
    assert partial1.name == "my_db-20240506T070809Z.dump.partial"
    assert final2 != final1 and DUMP_NAME.match(final2.name)
    assert stat.S_IMODE(partial2.stat().st_mode) == 0o600


# ------------------------------------------------------------------------------------------------
# refusals before pg_dump runs
# ------------------------------------------------------------------------------------------------


def test_an_unusable_backup_dir_stops_before_pg_dump(guide_db, server_version_num, tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    cases = [  # (backup_dir, what the message says); root can write anywhere the kernel lets it
        (blocker / "backups", "it cannot be created (Not a directory)"),
        (blocker, "it exists but is not a directory"),
        (Path(f"/proc/safedrop-{uuid.uuid4().hex}/b"), "it cannot be created (No such file or directory)"),
        (Path("/proc"), "pass a backup_dir this process can write to"),  # a directory that refuses files
    ]
    before = guide_db.snapshot()

    for backup_dir, reason in cases:
        with pytest.raises(BackupFailed) as caught:
            take_backup(guide_db.db, TARGETS, backup_dir, server_version_num=server_version_num)
        message = str(caught.value)
        assert message.startswith(f"backup directory {backup_dir} is not writable"), message
        assert message.endswith("; the drop did not run") and "\n" not in message
        assert reason is None or reason in message, message
        assert not is_transient(caught.value)

    assert files_in(tmp_path) == ["not-a-dir"] and blocker.read_text() == "x"
    assert not list(Path("/proc").glob("*.dump*"))
    assert guide_db.snapshot() == before


def test_no_pg_dump_for_a_server_newer_than_any_installed(tmp_path):
    newest = max(installed_tools(), key=lambda t: t.version_num)

    with pytest.raises(BackupFailed) as caught:
        find_pg_dump(990000)
    assert str(caught.value) == (
        f"pg_dump {newest.version} is older than the server (99.0); install PostgreSQL 99's client "
        "(Debian: apt-get install postgresql-client-99) or set SAFEDROP_PG_BIN; the drop did not run"
    )
    # take_backup stops the same way, before touching anything (this database is never contacted).
    unreachable = database_from_url("postgresql://postgres:pw@127.0.0.1:1/nowhere")
    with pytest.raises(BackupFailed, match=r"older than the server \(99\.0\)") as caught:
        take_backup(unreachable, TARGETS, tmp_path / "b", server_version_num=990000)
    assert not is_transient(caught.value)
    assert not (tmp_path / "b").exists()


def test_pg_dump_choice_same_major_else_newer(server_version_num):
    tools = find_pg_dump(server_version_num)
    assert tools.major == server_version_num // 10000
    assert tools.pg_dump.name == "pg_dump" and tools.pg_restore.parent == tools.pg_dump.parent
    # An older server is dumped by the newest pg_dump newer than it.
    older = find_pg_dump(120000)
    assert older.version_num == max(t.version_num for t in installed_tools())


def test_safedrop_pg_bin_overrides_the_search(monkeypatch, tmp_path, server_version_num):
    tools = find_pg_dump(server_version_num)
    monkeypatch.setenv("SAFEDROP_PG_BIN", str(tools.bindir))
    assert find_pg_dump(server_version_num) == tools
    monkeypatch.setenv("SAFEDROP_PG_BIN", str(tmp_path))
    with pytest.raises(BackupFailed, match=rf"SAFEDROP_PG_BIN={re.escape(str(tmp_path))} holds no working"):
        find_pg_dump(server_version_num)


def test_row_level_security_stops_a_role_that_would_dump_a_partial_table(
    guide_db, server_version_num, tmp_path
):
    seed_targets(guide_db)
    role, password = f"dumper_{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    guide_db.execute(
        f"CREATE ROLE {role} LOGIN PASSWORD '{password}';"
        f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role};"
        f"GRANT SELECT ON ALL SEQUENCES IN SCHEMA public TO {role};"
        "ALTER TABLE credit_allocations ENABLE ROW LEVEL SECURITY;"
        f"CREATE POLICY only_tenant_1 ON credit_allocations TO {role} USING (tenant_id = 1);"
    )
    try:
        limited = database_from_url(guide_db.server.url(guide_db.name, user=role, password=password))
        backup_dir = tmp_path / "b"
        with pytest.raises(BackupFailed) as caught:
            take_backup(limited, TARGETS, backup_dir, server_version_num=server_version_num)
        assert str(caught.value) == (
            "a dump would be cut short by row-level security on public.credit_allocations; "
            "run as the table owner (postgres) or a BYPASSRLS role; the drop did not run"
        )
        assert not is_transient(caught.value)
        assert not backup_dir.exists()

        # The check mirrors what pg_dump itself would do as that role.
        partial = tmp_path / "direct.dump"
        with pytest.raises(BackupFailed, match="row-level security") as direct:
            run_pg_dump(find_pg_dump(server_version_num), limited, partial)
        assert password not in str(direct.value) and not is_transient(direct.value)

        # FORCE ROW LEVEL SECURITY catches the owner too; BYPASSRLS lets the same role through.
        guide_db.execute(
            f"ALTER TABLE credit_allocations OWNER TO {role};"
            "ALTER TABLE credit_allocations FORCE ROW LEVEL SECURITY;"
        )
        with pytest.raises(BackupFailed, match=r"FORCE ROW LEVEL SECURITY applies to its owner too"):
            take_backup(limited, TARGETS, backup_dir, server_version_num=server_version_num)
        guide_db.execute(f"ALTER ROLE {role} BYPASSRLS")
        result = take_backup(limited, TARGETS, backup_dir, server_version_num=server_version_num)
        assert result.tables_in_archive == QUALIFIED
    finally:
        guide_db.execute(f"REASSIGN OWNED BY {role} TO postgres; DROP OWNED BY {role}; DROP ROLE {role};")


def test_a_missing_target_fails_verification_and_keeps_the_archive(guide_db, server_version_num, tmp_path):
    ghost = TableName("public", "credit_allocations_old")
    with pytest.raises(BackupFailed) as caught:
        take_backup(guide_db.db, [*TARGETS, ghost], tmp_path, server_version_num=server_version_num)
    (kept,) = files_in(tmp_path)
    assert DUMP_NAME.match(kept)
    assert str(caught.value) == (
        f"the archive {tmp_path / kept} lacks public.credit_allocations_old (no TABLE or TABLE DATA entry); "
        "it is kept for inspection but is not a backup of the targets; the drop did not run"
    )


# ------------------------------------------------------------------------------------------------
# connection failures and secrets
# ------------------------------------------------------------------------------------------------


def test_a_wrong_password_fails_cleanly_without_leaking_it(guide_db, server_version_num, tmp_path):
    wrong = f"wrong-{uuid.uuid4().hex}"
    bad = database_from_url(guide_db.server.url(guide_db.name, password=wrong))
    before = guide_db.snapshot()

    with pytest.raises(BackupFailed) as caught:
        take_backup(bad, TARGETS, tmp_path / "b", server_version_num=server_version_num)
    message = str(caught.value)
    assert 'password authentication failed for user "postgres"' in message
    assert message.endswith("; the drop did not run")
    assert wrong not in message and "Traceback" not in message and "\n" not in message
    assert not is_transient(caught.value)  # retrying a wrong password only locks accounts
    assert not (tmp_path / "b").exists()

    # pg_dump's own connection failure, straight from its stderr.
    partial = tmp_path / "x.dump.partial"
    with pytest.raises(BackupFailed) as caught:
        run_pg_dump(find_pg_dump(server_version_num), bad, partial)
    message = str(caught.value)
    assert message.startswith('pg_dump failed: connection to server at "127.0.0.1", port ')
    assert 'password authentication failed for user "postgres"; the drop did not run' in message
    assert wrong not in message and "RAN:" not in message and "--file" not in message and "\n" not in message
    assert guide_db.snapshot() == before


def test_a_refused_connection_is_transient(guide_db, server_version_num, tmp_path):
    nowhere = database_from_url(f"postgresql://postgres:secret-pw@127.0.0.1:{free_port()}/{guide_db.name}")
    with pytest.raises(TransientBackupFailure, match="Connection refused") as caught:
        take_backup(nowhere, TARGETS, tmp_path / "b", server_version_num=server_version_num)
    assert is_transient(caught.value) and "secret-pw" not in str(caught.value)
    with pytest.raises(TransientBackupFailure, match=r"^pg_dump failed: .*Connection refused"):
        run_pg_dump(find_pg_dump(server_version_num), nowhere, tmp_path / "x.dump")
    # The mark survives the pickling Prefect may do.
    assert is_transient(pickle.loads(pickle.dumps(caught.value)))


def test_the_password_is_never_in_any_argv(guide_db, server_version_num, tmp_path):
    password = guide_db.db.password
    assert password
    with table_locked(guide_db):
        job, pid, argv = start_blocked_backup(guide_db, tmp_path, server_version_num)
        everyone = cmdlines()  # taken while pg_dump is surely running (it waits for our lock)
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    job.wait()  # the lock is gone: pg_dump finishes

    assert not any(password in " ".join(args) for args in everyone.values())
    assert pid in everyone
    # Only format options and the output file: host, user and database come from the environment.
    assert argv[1:4] == ["--format=custom", "--compress=1", "--no-password"]
    assert re.fullmatch(r"--snapshot=[0-9A-F]+-[0-9A-F]+-\d+", argv[4]) and argv[5] == "--verbose"
    assert len(argv) == 7 and argv[6].startswith(f"--file={tmp_path}/") and argv[6].endswith(".dump.partial")
    assert f"PGPASSWORD={password}".encode() in environ
    assert {e.split(b"=", 1)[0] for e in environ if e} <= {
        b"PATH",
        b"LANG",
        b"LC_ALL",
        b"PGHOST",
        b"PGPORT",
        b"PGUSER",
        b"PGPASSWORD",
        b"PGDATABASE",
        b"PGAPPNAME",
        b"PGCONNECT_TIMEOUT",
        b"PGOPTIONS",  # client_connection_check_interval: a killed pg_dump's session ends at once
    }
    assert b"PGOPTIONS=-c client_connection_check_interval=1000" in environ
    assert job.error is None, job.error
    assert files_in(tmp_path) == [Path(job.result.path).name, Path(job.result.manifest_path).name]


def test_pg_dump_killed_mid_dump_leaves_nothing(guide_db, server_version_num, tmp_path):
    with table_locked(guide_db):
        job, pid, _ = start_blocked_backup(guide_db, tmp_path, server_version_num)
        assert any(name.endswith(".dump.partial") for name in files_in(tmp_path))
        os.kill(pid, signal.SIGKILL)
        job.wait()
    assert isinstance(job.error, BackupFailed)
    assert str(job.error).startswith("pg_dump was killed by signal SIGKILL before it finished")
    assert not is_transient(job.error)
    assert files_in(tmp_path) == []


def test_a_closed_connection_mid_dump_is_transient_and_leaves_nothing(guide_db, server_version_num, tmp_path):
    with table_locked(guide_db):
        job, _, _ = start_blocked_backup(guide_db, tmp_path, server_version_num)
        guide_db.server.psql(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            f"WHERE application_name = 'safedrop pg_dump' AND datname = '{guide_db.name}'"
        )
        job.wait()
    assert isinstance(job.error, TransientBackupFailure), job.error
    assert str(job.error).startswith("pg_dump failed: query failed: FATAL: terminating connection")
    assert files_in(tmp_path) == []


def test_a_dump_over_its_timeout_is_stopped_and_leaves_nothing(guide_db, server_version_num, tmp_path):
    with table_locked(guide_db):
        job, pid, _ = start_blocked_backup(guide_db, tmp_path, server_version_num, timeout_s=1)
        job.wait()  # pg_dump is stuck on our lock: only the timeout can end it
        assert pid not in cmdlines()
    assert str(job.error) == (
        "pg_dump did not finish within 1 s and was stopped; raise timeout_s, or check for locks held on "
        "the database's tables; the drop did not run"
    )
    assert files_in(tmp_path) == []


@pytest.fixture
def ctrl_c_interrupts() -> Iterator[None]:
    """SIGINT raises KeyboardInterrupt, as at a terminal (a pytest-xdist worker process ignores it)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@pytest.mark.usefixtures("ctrl_c_interrupts")
def test_ctrl_c_stops_pg_dump_and_removes_the_partial_file(guide_db, server_version_num, tmp_path):
    seen: dict[str, int] = {}

    def interrupt_when_blocked() -> None:
        found = wait_until(lambda: pg_dump_writing_into(tmp_path), deadline_s=20, what="pg_dump")
        seen["pid"] = found[0]
        wait_until(lambda: pg_dump_is_waiting(guide_db), deadline_s=20, what="pg_dump to wait")
        os.kill(os.getpid(), signal.SIGINT)  # KeyboardInterrupt in the main thread, inside take_backup

    with table_locked(guide_db):
        helper = threading.Thread(target=interrupt_when_blocked, daemon=True)
        helper.start()
        with pytest.raises(KeyboardInterrupt):
            take_backup(guide_db.db, TARGETS, tmp_path, server_version_num=server_version_num)
        helper.join(20)
    assert seen["pid"] not in cmdlines()  # killed and reaped, not left running
    assert files_in(tmp_path) == []


# ------------------------------------------------------------------------------------------------
# the Prefect task, through a real flow
# ------------------------------------------------------------------------------------------------


def read_artifact(key: str):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))
    return found


def test_backup_task_publishes_an_artifact(prefect_harness, guide_db, server_version_num, tmp_path):
    from prefect import flow

    db = guide_db.db
    prefix = f"test-{uuid.uuid4().hex[:8]}"

    @flow(name="backup-test")
    def run_backup():
        return backup(db, TARGETS, tmp_path, server_version_num=server_version_num, artifact_prefix=prefix)

    result = run_backup()

    assert Path(result.path).is_file() and result.tables_in_archive == QUALIFIED
    (artifact,) = read_artifact(f"{prefix}-backup")
    text = str(artifact.data)
    assert result.sha256 in text and result.path in text and f"{result.bytes:,} bytes" in text
    assert "public.credit_allocations" in text and result.pg_dump_version in text
    assert db.password not in text and db.display in text
    assert result.manifest_path in text and "scope | database" in text
    (progress,) = read_artifact(f"{prefix}-backup-progress")
    assert progress.type == "progress" and float(progress.data) == 100.0


def test_backup_task_retries_only_transient_failures(prefect_harness, guide_db, server_version_num, tmp_path):
    from prefect import flow
    from prefect.client.orchestration import get_client

    cases = {  # looked up inside the flow: a Database is never a flow parameter
        "refused": (
            database_from_url(f"postgresql://postgres:pw@127.0.0.1:{free_port()}/{guide_db.name}"),
            server_version_num,
        ),
        "too-new": (guide_db.db, 990000),
    }
    quick = backup.task().with_options(retry_delay_seconds=0)

    @flow(name="backup-retry-test")
    def attempt(case: str):
        db, version = cases[case]
        state = quick(
            db, TARGETS, tmp_path, server_version_num=version, artifact_prefix="retry-test", return_state=True
        )
        return state.state_details.task_run_id

    with get_client(sync_client=True) as client:
        refused = client.read_task_run(attempt("refused"))
        too_new = client.read_task_run(attempt("too-new"))
    assert refused.run_count == 3  # the first try and both retries
    assert refused.state.is_failed() and too_new.state.is_failed()
    assert too_new.run_count == 1  # a version mismatch is not retried


# ------------------------------------------------------------------------------------------------
# the manifest, scopes, formats, partitions, verify_restore, a full disk
# ------------------------------------------------------------------------------------------------


def checksums_now(guide_db, tables) -> dict[str, tuple[int, str]]:
    from safedrop.pg.checksums import pin_text_settings, table_checksums

    engine = guide_db.engine()
    try:
        with engine.connect() as conn, conn.begin():
            pin_text_settings(conn)
            return {t.qualified: v for t, v in table_checksums(conn, tables).items()}
    finally:
        engine.dispose()


def archive_rows(path: Path, table: str, tools: PgTools) -> list[str]:
    """The rows of ``table`` in an archive (its COPY block), straight from pg_restore."""
    script = subprocess.run(
        [str(tools.pg_restore), "--data-only", f"--table={table}", "-f", "-", str(path)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    block = script.split(f"COPY public.{table} ", 1)[1].split("\\.\n", 1)[0]
    return block.splitlines()[1:]


def test_the_manifest_counts_and_checksums_the_dumps_own_snapshot(guide_db, server_version_num, tmp_path):
    seed_targets(guide_db)
    tools = find_pg_dump(server_version_num)
    expected = checksums_now(guide_db, TARGETS)
    with table_locked(guide_db):  # pg_dump waits for credits, its snapshot already taken …
        job, _, _ = start_blocked_backup(guide_db, tmp_path, server_version_num)
        # … while a row arrives and commits: neither the archive nor the manifest may see it
        guide_db.execute(
            "INSERT INTO credit_allocation_transactions (allocation_id, amount) VALUES (1, 9.99)"
        )
    job.join()
    assert job.error is None, job.error
    result = job.result
    assert guide_db.count("credit_allocation_transactions") == 3
    manifest = json.loads(Path(result.manifest_path).read_text())
    assert {t["name"]: (t["rows"], t["checksum"]) for t in manifest["targets"]} == expected
    assert len(archive_rows(Path(result.path), "credit_allocation_transactions", tools)) == 2
    assert manifest["sha256"] == sha256_file(Path(result.path)) and manifest["bytes"] == result.bytes
    assert manifest["archive"] == Path(result.path).name and manifest["archive_format"] == "custom"
    assert manifest["database"] == guide_db.name and manifest["server"] == guide_db.db.display
    assert manifest["server_version_num"] == server_version_num
    assert manifest["pg_dump_version"] == tools.version_line and manifest["scope"] == "database"
    assert manifest["compression"] == 1 and manifest["snapshot"] and manifest["created_at"]
    assert {s["name"]: s["last_value"] for s in manifest["sequences"]} == {
        "public.credit_allocation_transactions_id_seq": 2,
        "public.credit_allocations_id_seq": 2,
    }
    removed = {o["description"] for o in manifest["removed"]}
    assert {
        "index credit_allocations_tenant_id_idx",
        "constraint credit_allocations_pkey on table credit_allocations",
        "sequence credit_allocations_id_seq",
        "table credit_allocations",
    } <= removed
    assert guide_db.db.password not in Path(result.manifest_path).read_text()
    assert all(t["checksum"].startswith("hash:") for t in manifest["targets"])  # PostgreSQL 14+: no text
    # the restored-data checksum is reproducible: remove the late row and the numbers agree again
    guide_db.execute("DELETE FROM credit_allocation_transactions WHERE amount = 9.99")
    assert checksums_now(guide_db, TARGETS) == expected


def test_targets_scope_keeps_every_definition_but_only_the_targets_rows(
    guide_db, server_version_num, tmp_path
):
    seed_targets(guide_db)
    guide_db.execute(
        "CREATE VIEW allocation_totals AS SELECT tenant_id, sum(amount) FROM credit_allocations "
        "GROUP BY 1; CREATE SCHEMA other; CREATE TABLE other.t (x int); INSERT INTO other.t VALUES (1)"
    )
    tools = find_pg_dump(server_version_num)
    full = take_backup(guide_db.db, TARGETS, tmp_path / "full", server_version_num=server_version_num)
    before = guide_db.snapshot()

    result = take_backup(
        guide_db.db,
        TARGETS,
        tmp_path / "t",
        BackupOptions(scope="targets", verify_restore=True),
        server_version_num=server_version_num,
    )

    listing = toc(Path(result.path), tools)
    data = sorted(re.findall(r"TABLE DATA (\S+ \S+) ", listing))
    assert data == ["public credit_allocation_transactions", "public credit_allocations"]
    for definition in (
        "TABLE public credits ",
        "TABLE other t ",
        "VIEW public allocation_totals ",
        "FK CONSTRAINT public credit_allocations credit_allocations_tenant_id_fkey ",
    ):
        assert definition in listing
    assert result.bytes < full.bytes and result.scope == "targets" and result.verified_by_restore
    assert [(t.name, t.rows) for t in result.targets] == [(QUALIFIED[0], 2), (QUALIFIED[1], 2)]
    # the scratch database is gone, and nothing else changed
    assert (
        guide_db.server.psql(
            "SELECT count(*) FROM pg_database WHERE datname LIKE 'safedrop_verify_%'"
        ).strip()
        == "0"
    )
    assert guide_db.snapshot() == before


def test_a_partitioned_target_is_dumped_and_verified_with_its_partitions(
    guide_db, server_version_num, tmp_path
):
    guide_db.execute(
        "CREATE TABLE allocation_events (id int, at date, note text) PARTITION BY RANGE (at);"
        "CREATE TABLE allocation_events_2023 PARTITION OF allocation_events "
        "FOR VALUES FROM ('2023-01-01') TO ('2024-01-01');"
        "CREATE TABLE allocation_events_2024 PARTITION OF allocation_events "
        "FOR VALUES FROM ('2024-01-01') TO ('2025-01-01') PARTITION BY LIST (id);"
        "CREATE TABLE allocation_events_2024_odd PARTITION OF allocation_events_2024 FOR VALUES IN (1, 3);"
        "INSERT INTO allocation_events VALUES (1, '2023-05-01', 'a'), (3, '2024-05-01', 'b'), (1, '2024-06-01', 'c')"
    )
    target = [TableName("public", "allocation_events")]
    tools = find_pg_dump(server_version_num)
    for scope in ("targets", "database"):
        result = take_backup(
            guide_db.db,
            target,
            tmp_path / scope,
            BackupOptions(scope=scope),
            server_version_num=server_version_num,
        )
        assert result.tables_in_archive == ["public.allocation_events"]
        listing = toc(Path(result.path), tools)
        assert "TABLE DATA public allocation_events_2023 " in listing
        assert "TABLE DATA public allocation_events_2024_odd " in listing
        (entry,) = result.targets
        assert (entry.relkind, entry.rows) == ("p", 3)
        assert entry.below == [
            "public.allocation_events_2023",
            "public.allocation_events_2024",
            "public.allocation_events_2024_odd",
        ]
    # verification names a leaf partition whose rows are missing (data left out on purpose here)
    layout = {target[0]: ("p", [TableName("public", "allocation_events_2023"), TableName("public", "nope")])}
    with pytest.raises(
        BackupFailed,
        match=r"lacks public.nope \(partition of public.allocation_events; "
        r"no TABLE or TABLE DATA entry\)",
    ):
        verify_archive(Path(result.path), target, tools, layout=layout)


def test_directory_format_with_parallel_jobs(guide_db, server_version_num, tmp_path):
    from safedrop.backup.archive import archive_digest

    seed_targets(guide_db)
    result = take_backup(
        guide_db.db,
        TARGETS,
        tmp_path,
        BackupOptions(archive_format="directory", jobs=2, compression=0),
        server_version_num=server_version_num,
    )
    path = Path(result.path)
    assert path.is_dir() and path.name.endswith(".dumpdir") and stat.S_IMODE(path.stat().st_mode) == 0o700
    assert all(stat.S_IMODE(f.stat().st_mode) == 0o600 for f in path.iterdir())
    assert files_in(tmp_path) == [path.name, manifest_path(path).name]
    manifest = json.loads(manifest_path(path).read_text())
    size, digest, files = archive_digest(path)
    assert (
        (manifest["bytes"], manifest["sha256"], manifest["files"])
        == (size, digest, files)
        == (result.bytes, result.sha256, files)
    )
    assert files == {f.name: sha256_file(f) for f in path.iterdir()} and "toc.dat" in files
    assert manifest["jobs"] == 2 and result.tables_in_archive == QUALIFIED
    with pytest.raises(UsageError, match="parallel dumps \\(jobs > 1\\) need the directory format"):
        take_backup(
            guide_db.db, TARGETS, tmp_path, BackupOptions(jobs=2), server_version_num=server_version_num
        )


def test_verify_restore_without_createdb_stops_before_dumping(guide_db, server_version_num, tmp_path):
    seed_targets(guide_db)
    role, password = f"dumper_{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    guide_db.execute(
        f"CREATE ROLE {role} LOGIN BYPASSRLS PASSWORD '{password}';"
        f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role};"
        f"GRANT SELECT ON ALL SEQUENCES IN SCHEMA public TO {role};"
    )
    try:
        limited = database_from_url(guide_db.server.url(guide_db.name, user=role, password=password))
        with pytest.raises(BackupFailed) as caught:
            take_backup(
                limited,
                TARGETS,
                tmp_path,
                BackupOptions(verify_restore=True),
                server_version_num=server_version_num,
            )
        assert str(caught.value) == (
            f"verify_restore needs a role that may create a scratch database: role {role} has no CREATEDB; "
            f"grant it (ALTER ROLE {role} CREATEDB) or turn verify_restore off; the drop did not run"
        )
        assert files_in(tmp_path) == []
    finally:
        guide_db.execute(f"DROP OWNED BY {role}; DROP ROLE {role};")


TINY = 16 * 1024  # bytes: the full disk's size


def _backup_on_a_full_disk(url: str, tiny: Path, server_version_num: int) -> dict:
    """take_backup into a tmpfs of TINY bytes mounted at ``tiny``: what it raised and the files left."""
    statvfs = os.statvfs(tiny)
    out: dict = {"size": statvfs.f_blocks * statvfs.f_frsize, "error": None, "transient": None}
    try:
        take_backup(database_from_url(url), TARGETS, tiny, server_version_num=server_version_num)
    except BackupFailed as exc:
        out.update(error=str(exc), transient=is_transient(exc))
    out["files"] = files_in(tiny)
    return out


# A user's process cannot mount: the backup runs in a child that is root of its own user and mount
# namespaces (``unshare --user --map-root-user --mount``), where the tmpfs exists and then vanishes.
_IN_NAMESPACE = """
import json, os, sys
from pathlib import Path
from tests.test_backup import _backup_on_a_full_disk
print(json.dumps(_backup_on_a_full_disk(os.environ["SAFEDROP_TEST_URL"], Path(sys.argv[1]), int(sys.argv[2]))))
"""


def backup_on_a_full_disk(guide_db, path: Path, server_version_num: int) -> dict:
    """A backup into a real full disk (ENOSPC, not a size limit): a TINY tmpfs mounted at ``path`` —
    here, as root; as a user, in a child process in namespaces of its own. Never skipped: a host that
    allows neither fails the test, saying so."""
    path.mkdir()
    options = f"size={TINY},mode=0700"
    if os.geteuid() == 0:
        mount = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True, text=True
        )
        if mount.returncode == 0:
            try:
                return _backup_on_a_full_disk(guide_db.url, path, server_version_num)
            finally:
                subprocess.run(["umount", "-l", str(path)], check=False)
    child = subprocess.run(
        [
            *("unshare", "--user", "--map-root-user", "--mount"),
            *("sh", "-c", f'mount -t tmpfs -o {options} tmpfs "$1" && exec "$2" -c "$3" "$1" "$4"', "sh"),
            *(str(path), sys.executable, _IN_NAMESPACE, str(server_version_num)),
        ],
        cwd=Path(__file__).resolve().parent.parent,
        env={**os.environ, "SAFEDROP_TEST_URL": guide_db.url},
        capture_output=True,
        text=True,
        timeout=120,
    )
    if child.returncode != 0:
        pytest.fail(
            "a full disk needs a tiny tmpfs: this host lets this process neither mount one (root) nor make "
            f"a user namespace to mount it in ({child.stderr.strip()[-500:] or child.returncode})"
        )
    return json.loads(child.stdout.strip().splitlines()[-1])


def seed_many(guide_db) -> None:
    """Enough rows for a dump larger than 8 KiB (the size limit) and 16 KiB (the tiny file system)."""
    seed_targets(guide_db)
    guide_db.execute(
        "INSERT INTO credit_allocation_transactions (allocation_id, amount) "
        "SELECT 1, g FROM generate_series(1, 5000) g"
    )


def test_a_size_limit_stops_the_backup_and_leaves_nothing(guide_db, server_version_num, tmp_path):
    seed_many(guide_db)
    before = guide_db.snapshot()
    # RLIMIT_FSIZE on pg_dump: its writes fail past the limit, as on a full disk
    with pytest.raises(BackupFailed) as caught:
        take_backup(
            guide_db.db,
            TARGETS,
            tmp_path / "cap",
            BackupOptions(max_bytes=8192),
            server_version_num=server_version_num,
        )
    message = str(caught.value)
    assert message.startswith("pg_dump failed: could not write to output file: File too large")
    assert "free space there or choose another backup_dir); the drop did not run" in message
    assert files_in(tmp_path / "cap") == [] and not is_transient(caught.value)
    assert guide_db.snapshot() == before


def test_a_full_disk_stops_the_backup_and_leaves_nothing(guide_db, server_version_num, tmp_path):
    seed_many(guide_db)
    before = guide_db.snapshot()
    outcome = backup_on_a_full_disk(guide_db, tmp_path / "tiny", server_version_num)  # the real thing
    assert outcome["size"] == TINY
    assert outcome["error"] == (
        "pg_dump failed: could not write to output file: No space left on device (the backup directory's "
        "file system is full, or the archive outgrew its size limit: free space there or choose another "
        "backup_dir); the drop did not run"
    )
    assert outcome["files"] == [] and outcome["transient"] is False
    assert guide_db.snapshot() == before


def test_the_exported_snapshot_does_not_see_later_commits(guide_db):
    from safedrop.backup.dumpplan import exported_snapshot

    with exported_snapshot(guide_db.db) as (conn, exported):
        assert re.fullmatch(r"[0-9A-F]+-[0-9A-F]+-\d+", exported["snapshot_id"])
        assert re.fullmatch(r"\d+:\d+:[\d,]*", exported["txid_snapshot"])
        assert conn.exec_driver_sql("SHOW transaction_isolation").scalar() == "repeatable read"
        before = conn.exec_driver_sql("SELECT count(*) FROM credit_allocations").scalar()
        seed_targets(guide_db)  # commits in another session
        assert conn.exec_driver_sql("SELECT count(*) FROM credit_allocations").scalar() == before == 0
    assert guide_db.count("credit_allocations") == 2
