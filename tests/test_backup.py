"""The backup step against a real PostgreSQL with real pg_dump and pg_restore.

Slow dumps are made deterministic with a lock, not with data volume or sleeps: while a test holds
ACCESS EXCLUSIVE on ``credits``, pg_dump waits on its ``LOCK TABLE … IN ACCESS SHARE MODE`` until the
test lets go (or kills it).
"""

from __future__ import annotations

import hashlib
import os
import pickle
import re
import signal
import stat
import subprocess
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from safedrop.database import database_from_url
from safedrop.errors import BackupFailed
from safedrop.migration import TableName
from safedrop.pgserver import free_port, wait_until
from tasks.backup import (
    PgTools,
    TransientBackupFailure,
    backup,
    find_pg_dump,
    installed_tools,
    is_transient,
    reserve_backup_file,
    run_pg_dump,
    sha256_file,
    take_backup,
    verify_archive,
)

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
        f"WHERE NOT l.granted AND a.application_name = 'safedrop' AND a.datname = '{guide_db.name}'"
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


class Background:
    """Run a call in a thread and keep its result or exception."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        self.result: Any = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(fn,), daemon=True)
        self.thread.start()

    def _run(self, fn: Callable[[], Any]) -> None:
        try:
            self.result = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            self.error = exc

    def join(self, timeout: float = 30) -> None:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "take_backup did not return"


def start_blocked_backup(guide_db, backup_dir: Path, version: int, **kwargs) -> tuple[Background, int, list]:
    """take_backup in a thread, returned once its pg_dump process is waiting on our lock."""
    db = guide_db.db
    job = Background(lambda: take_backup(db, TARGETS, backup_dir, server_version_num=version, **kwargs))
    pid, argv = wait_until(lambda: pg_dump_writing_into(backup_dir), deadline_s=20, what="pg_dump to start")
    wait_until(lambda: pg_dump_is_waiting(guide_db), deadline_s=20, what="pg_dump to wait on the lock")
    return job, pid, argv


def toc(path: Path, tools: PgTools) -> str:
    return subprocess.run([str(tools.pg_restore), "--list", str(path)], check=True, capture_output=True,
                          text=True).stdout


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
    assert files_in(backup_dir) == [path.name]  # no .partial left
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
    data = subprocess.run([str(tools.pg_restore), "--data-only", "--table=credit_allocations", "-f", "-",
                           str(path)], check=True, capture_output=True, text=True).stdout
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
    assert files_in(backup_dir) == sorted([Path(first.path).name, Path(second.path).name])
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


def test_row_level_security_stops_a_role_that_would_dump_a_partial_table(guide_db, server_version_num,
                                                                         tmp_path):
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
        guide_db.execute(f"ALTER TABLE credit_allocations OWNER TO {role};"
                         "ALTER TABLE credit_allocations FORCE ROW LEVEL SECURITY;")
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
    job.join()  # the lock is gone: pg_dump finishes

    assert not any(password in " ".join(args) for args in everyone.values())
    assert pid in everyone
    # Only format options and the output file: host, user and database come from the environment.
    assert argv[1:4] == ["--format=custom", "--compress=1", "--no-password"]
    assert len(argv) == 5 and argv[4].startswith(f"--file={tmp_path}/") and argv[4].endswith(".dump.partial")
    assert f"PGPASSWORD={password}".encode() in environ
    assert {e.split(b"=", 1)[0] for e in environ if e} <= {
        b"PATH", b"LANG", b"LC_ALL", b"PGHOST", b"PGPORT", b"PGUSER", b"PGPASSWORD", b"PGDATABASE",
        b"PGAPPNAME", b"PGCONNECT_TIMEOUT",
    }
    assert job.error is None, job.error
    assert files_in(tmp_path) == [Path(job.result.path).name]


def test_pg_dump_killed_mid_dump_leaves_nothing(guide_db, server_version_num, tmp_path):
    with table_locked(guide_db):
        job, pid, _ = start_blocked_backup(guide_db, tmp_path, server_version_num)
        assert any(name.endswith(".dump.partial") for name in files_in(tmp_path))
        os.kill(pid, signal.SIGKILL)
        job.join()
    assert isinstance(job.error, BackupFailed)
    assert str(job.error).startswith("pg_dump was killed by signal SIGKILL before it finished")
    assert not is_transient(job.error)
    assert files_in(tmp_path) == []


def test_a_closed_connection_mid_dump_is_transient_and_leaves_nothing(guide_db, server_version_num, tmp_path):
    with table_locked(guide_db):
        job, _, _ = start_blocked_backup(guide_db, tmp_path, server_version_num)
        guide_db.server.psql(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            f"WHERE application_name = 'safedrop' AND datname = '{guide_db.name}'"
        )
        job.join()
    assert isinstance(job.error, TransientBackupFailure), job.error
    assert str(job.error).startswith("pg_dump failed: query failed: FATAL: terminating connection")
    assert files_in(tmp_path) == []


def test_a_dump_over_its_timeout_is_stopped_and_leaves_nothing(guide_db, server_version_num, tmp_path):
    with table_locked(guide_db):
        job, pid, _ = start_blocked_backup(guide_db, tmp_path, server_version_num, timeout_s=1)
        job.join()  # pg_dump is stuck on our lock: only the timeout can end it
        assert pid not in cmdlines()
    assert str(job.error) == (
        "pg_dump did not finish within 1 s and was stopped; raise timeout_s, or check for locks held on "
        "the database's tables; the drop did not run"
    )
    assert files_in(tmp_path) == []


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


def test_backup_task_retries_only_transient_failures(prefect_harness, guide_db, server_version_num, tmp_path):
    from prefect import flow
    from prefect.client.orchestration import get_client

    cases = {  # looked up inside the flow: a Database is never a flow parameter
        "refused": (database_from_url(f"postgresql://postgres:pw@127.0.0.1:{free_port()}/{guide_db.name}"),
                    server_version_num),
        "too-new": (guide_db.db, 990000),
    }
    quick = backup.with_options(retry_delay_seconds=0)

    @flow(name="backup-retry-test")
    def attempt(case: str):
        db, version = cases[case]
        state = quick(db, TARGETS, tmp_path, server_version_num=version, artifact_prefix="retry-test",
                      return_state=True)
        return state.state_details.task_run_id

    with get_client(sync_client=True) as client:
        refused = client.read_task_run(attempt("refused"))
        too_new = client.read_task_run(attempt("too-new"))
    assert refused.run_count == 3  # the first try and both retries
    assert refused.state.is_failed() and too_new.state.is_failed()
    assert too_new.run_count == 1  # a version mismatch is not retried
