"""After the drop committed: whatever fails next, the run still says what was dropped, where the backup
is and the exact command that puts the tables back, and exits with the code the README's table gives.

Each failure is a real one: a ``sql_drop`` event trigger (committed with the drop, as a DBA's would be)
revokes the run's privilege on a survivor or drops a survivor's column, so verification meets a real
error or a real problem; the Prefect API goes away right after the commit (a real TCP proxy in front of
the test server stops answering); a SIGTERM reaches the command line while its COMMIT waits for a real
lock. Each time the tables really are gone, and the backup the output names puts them back.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import threading
import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest
from prefect.events.worker import EventsWorker
from prefect.logging.handlers import APILogWorker
from prefect.settings import (
    PREFECT_API_URL,
    PREFECT_CLIENT_MAX_RETRIES,
    get_current_settings,
    temporary_settings,
)

from safedrop.cli.main import main
from safedrop.pg import queries
from safedrop.pg.pgserver import wait_until
from tests.conftest import TARGETS
from tests.helpers import SAFEDROP, console_env, holding

QUALIFIED = [f"public.{t}" for t in TARGETS]
SKIP_CODE = ("--code-policy", "skip")


@pytest.fixture
def plain(cli_env) -> Iterator[None]:
    """The command line as a user runs it without a Prefect server: its steps in this process."""
    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        yield


@pytest.fixture
def owner(guide_db) -> Iterator[str]:
    """The guide's tables owned by an application role that is not a superuser; its URL."""
    role, password = f"app_owner_{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    guide_db.execute(
        f"CREATE ROLE {role} LOGIN PASSWORD '{password}';"
        f"GRANT CREATE ON DATABASE {guide_db.name} TO {role}; GRANT CREATE ON SCHEMA public TO {role};"
        "DO $$ DECLARE t record; BEGIN"
        "  FOR t IN SELECT format('%I.%I', schemaname, tablename) AS name FROM pg_tables"
        "           WHERE schemaname = 'public' LOOP"
        f"    EXECUTE 'ALTER TABLE ' || t.name || ' OWNER TO {role}';"
        "  END LOOP; END $$;"
    )
    try:
        yield guide_db.server.url(guide_db.name, user=role, password=password)
    finally:
        guide_db.execute(f"REASSIGN OWNED BY {role} TO postgres; DROP OWNED BY {role};")
        guide_db.server.psql(f"DROP ROLE {role}")


def after_the_drop(tdb, statement: str) -> None:
    """A ``sql_drop`` event trigger that runs ``statement`` in the drop's own transaction (so it commits
    with the drop): whatever it breaks, breaks right after the COMMIT."""
    tdb.execute(
        "CREATE FUNCTION public.after_the_drop() RETURNS event_trigger LANGUAGE plpgsql SECURITY DEFINER AS $f$"
        f" BEGIN IF tg_tag = 'DROP TABLE' THEN {statement}; END IF; END $f$;"
        "CREATE EVENT TRIGGER after_the_drop ON sql_drop EXECUTE FUNCTION public.after_the_drop();"
    )


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def the_backup(out: str) -> str:
    """The archive the report names (the ``backup:`` line of the text report)."""
    match = re.search(r"^  backup: (\S+) \(", out, re.M)
    assert match, out
    return match.group(1)


def assert_facts(output: str, backup: str) -> None:
    """The output names what was dropped, the archive, and the exact restore command."""
    assert "Traceback" not in output, output
    for name in QUALIFIED:
        assert name in output, output
    assert backup in output, output
    assert f"safedrop restore --backup {backup}" in output, output


def assert_restorable(tdb, capsys, url: str, backup: str) -> None:
    """The targets are gone; the named archive puts them back."""
    assert not any(tdb.exists(t) for t in TARGETS)
    code, out, err = cli(capsys, "restore", "--backup", backup, "--database-url", url)
    assert code == 0, out + err
    assert all(tdb.exists(t) for t in TARGETS)


# --------------------------------------------------------------------------------------------------
# verification meets a real error, or a real problem, right after the commit
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("breakage", "repair", "reason"),
    [
        (
            "REVOKE SELECT ON public.credits FROM {role}",
            "GRANT SELECT ON public.credits TO {role}",
            "permission denied for table credits",
        ),
        (
            "ALTER TABLE public.credits DROP COLUMN updated_at",
            "ALTER TABLE public.credits ADD COLUMN updated_at timestamptz NOT NULL DEFAULT now()",
            "public.credits lost its column updated_at",
        ),
    ],
    ids=["revoked-privilege", "lost-column"],
)
def test_verification_failing_after_the_commit_reports_the_drop_and_the_restore(
    guide_db, owner, plain, capsys, tmp_path, breakage, repair, reason
):
    role = owner.split("://")[1].split(":")[0]
    after_the_drop(guide_db, breakage.format(role=role))
    code, out, err = cli(
        capsys, "run", *SKIP_CODE, "--database-url", owner, "--backup-dir", str(tmp_path / "b")
    )
    assert code == 1, out + err
    assert out.startswith("safedrop: FAILED"), out + err
    assert reason in out, out
    backup = the_backup(out)
    assert_facts(out, backup)
    assert f"  dropped: {', '.join(QUALIFIED)}" in out, out

    guide_db.execute(f"DROP EVENT TRIGGER after_the_drop; {repair.format(role=role)}")
    assert_restorable(guide_db, capsys, owner, backup)


# --------------------------------------------------------------------------------------------------
# exit codes: a usage error found inside the run is still a usage error
# --------------------------------------------------------------------------------------------------


def test_a_usage_error_found_inside_the_run_exits_2_and_changes_nothing(guide_db, plain, capsys, tmp_path):
    """The overlap of the targets and --keep is found by the connection precheck, inside the flow."""
    before = guide_db.snapshot()
    code, out, err = cli(
        capsys,
        "run",
        *SKIP_CODE,
        "--database-url",
        guide_db.url,
        "--keep",
        "credits,credit_allocations",
        "--backup-dir",
        str(tmp_path / "b"),
        "--json",
    )
    report = json.loads(out)
    assert code == 2, out + err
    assert report["status"] == "failed" and report["reasons"] == [
        "public.credit_allocations is both a target of the migration and a table to keep; fix --keep"
    ], report["reasons"]
    assert "Traceback" not in out + err
    assert guide_db.snapshot() == before
    assert not (tmp_path / "b").exists()


# --------------------------------------------------------------------------------------------------
# the Prefect API goes away right after the commit
# --------------------------------------------------------------------------------------------------


class ApiCutter:
    """A TCP proxy in front of the Prefect API that goes down for good when a request carries ``trigger``
    (here: the drop step publishing its artifact, right after the COMMIT): that request is never passed
    on, every connection is cut and no new one is accepted."""

    def __init__(self, api_url: str, trigger: bytes) -> None:
        parts = urlsplit(api_url)
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.path = parts.path
        self.trigger: bytes | None = trigger
        self.cut = threading.Event()
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.path}"

    def __enter__(self) -> ApiCutter:
        threading.Thread(target=self._accept, args=(self._listener,), daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._close()

    def come_back(self) -> None:
        """The API answers again, on the same address (and stays up: no trigger any more)."""
        self.trigger = None
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self.cut.clear()
        threading.Thread(target=self._accept, args=(self._listener,), daemon=True).start()

    def _close(self) -> None:
        with self._lock:
            for sock in [self._listener, *self._sockets]:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                sock.close()
            self._sockets.clear()

    def _go_down(self) -> None:
        self.cut.set()
        self._close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.upstream)
            with self._lock:
                self._sockets += [client, server]
            threading.Thread(target=self._relay, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._relay, args=(server, client, False), daemon=True).start()

    def _relay(self, source: socket.socket, sink: socket.socket, watch: bool) -> None:
        seen = b""
        try:
            while data := source.recv(65536):
                seen = (seen + data)[-65536:]
                if watch and self.trigger and self.trigger in seen:
                    self._go_down()
                    return
                sink.sendall(data)
        except OSError:
            pass


@pytest.mark.usefixtures("prefect_harness", "cli_env")
def test_the_prefect_api_gone_after_the_commit_still_reports_the_drop(guide_db, capsys, tmp_path):
    """Through Prefect, as with a server: the API stops answering when the drop publishes its artifact.
    No task state, artifact or flow-run state can be recorded from then on; the command line still
    prints what was dropped, the backup and the restore command, and exits 1."""
    api = get_current_settings().api.url
    with ApiCutter(api, trigger=b'drop-credit-allocation-tables-drop"') as proxy:
        with temporary_settings(updates={PREFECT_API_URL: proxy.url, PREFECT_CLIENT_MAX_RETRIES: 0}):
            code, out, err = cli(
                capsys, "run", *SKIP_CODE, "--database-url", guide_db.url, "--backup-dir", str(tmp_path / "b")
            )
            assert proxy.cut.is_set(), "the API never went down: the drop published no artifact"
            # Prefect's log and event workers of this process still hold what they could not send: the API
            # comes back so that they can, before the proxy goes (else they retry into the session's end)
            proxy.come_back()
            EventsWorker.drain_all()
            APILogWorker.drain_all()
    assert code == 1, out + err
    assert out.startswith("safedrop: FAILED"), out + err
    backup = the_backup(out)
    assert_facts(out, backup)
    assert f"  dropped: {', '.join(QUALIFIED)}" in out, out
    assert_restorable(guide_db, capsys, guide_db.url, backup)


# --------------------------------------------------------------------------------------------------
# SIGTERM while the drop's COMMIT waits for a real lock
# --------------------------------------------------------------------------------------------------

HOLD = 4242  # the advisory lock the test holds and the drop's COMMIT waits for

#: A deferred constraint trigger on safedrop's ledger: it runs at the drop's COMMIT and waits there for
#: an advisory lock the test holds. Like a COMMIT writing its record (or waiting for a synchronous
#: standby), it does not stop at a cancel: it counts the cancel, visibly to other sessions (a sequence),
#: and goes on waiting. Whether the drop commits is then up to the test, after the command line was
#: told to stop. It survives every cancel, not just the first: the postmaster delivers one cancel
#: request as SIGINT to the backend and again to its process group, and about one run in six the second
#: lands after the first was handled (seen here: "canceling statement" raised from the second wait, or
#: from the nextval in the handler).
SLOW_COMMIT = f"""
CREATE SEQUENCE public.commit_cancels;
CREATE FUNCTION public.hold_the_commit() RETURNS trigger LANGUAGE plpgsql SET lock_timeout = 0 AS $f$
DECLARE
    cancelled boolean := false;
BEGIN
    LOOP
        BEGIN
            IF cancelled THEN
                PERFORM nextval('public.commit_cancels');
                cancelled := false;
            END IF;
            PERFORM pg_advisory_xact_lock({HOLD});
            RETURN NULL;
        EXCEPTION WHEN query_canceled THEN
            cancelled := true;
        END;
    END LOOP;
END $f$;
CREATE CONSTRAINT TRIGGER hold_the_commit AFTER INSERT ON safedrop.dropped_tables
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION public.hold_the_commit();
"""


def committing(tdb) -> int | None:
    """pid of safedrop's session while its COMMIT waits for the test's lock."""
    return tdb.scalar(
        "SELECT pid FROM pg_stat_activity WHERE application_name = 'safedrop' AND datname = current_database() "
        "AND query = 'COMMIT' AND wait_event_type = 'Lock'"
    )


@pytest.mark.cli
@pytest.mark.parametrize("commits", [True, False], ids=["it-commits", "it-rolls-back"])
def test_sigterm_during_the_commit_waits_for_the_truth(guide_db, plain, capsys, tmp_path, commits):
    """SIGTERM reaches `safedrop run` while its COMMIT waits for a lock; the cancel does not end the
    COMMIT. Only after the signal does the test decide: release the lock (the drop commits) or end the
    drop's session (it rolls back). The command line waits for that session to end, then says what the
    database says — with what was dropped, the backup and the restore command when it committed."""
    guide_db.execute(queries.load("ledger_setup").text + SLOW_COMMIT)
    before = guide_db.snapshot()
    out_path, err_path = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    argv = [
        str(SAFEDROP),
        "run",
        "--database-url",
        guide_db.url,
        *SKIP_CODE,
        "--backup-dir",
        str(tmp_path / "b"),
    ]
    with holding(guide_db, f"SELECT pg_advisory_xact_lock({HOLD})") as lock:
        with out_path.open("w") as out, err_path.open("w") as err:
            process = subprocess.Popen(argv, cwd=tmp_path, env=console_env(tmp_path), stdout=out, stderr=err)
        try:
            pid = wait_until(lambda: committing(guide_db), deadline_s=60, what="the drop's COMMIT to wait")
            process.send_signal(signal.SIGTERM)
            wait_until(
                lambda: guide_db.scalar("SELECT is_called FROM public.commit_cancels"),
                deadline_s=20,
                what="the command line to cancel the COMMIT",
            )
            # a command line that does not wait answers (and exits) now; one that waits says so
            wait_until(
                lambda: process.poll() is not None or "waiting for its session" in err_path.read_text(),
                deadline_s=20,
                what="the command line to answer or to wait",
            )
            if commits:
                lock.rollback()  # the lock goes: the COMMIT completes
            else:
                guide_db.scalar("SELECT pg_terminate_backend(:pid)", pid=pid)  # its session ends: rolled back
            code = process.wait(timeout=60)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    out, err = out_path.read_text(), err_path.read_text()
    last = [line for line in err.splitlines() if line.strip()][-1]
    assert code == 143, out + err
    assert "Traceback" not in out + err
    if not commits:
        assert (
            last == "safedrop: interrupted before the drop committed; it rolled back: nothing was dropped"
        ), err
        assert guide_db.snapshot() == before
        return
    assert last == (
        "safedrop: interrupted after the drop committed: the targets are dropped, but verification did not "
        "run — run it again to verify (it reports 'already applied')"
    ), err
    backup = the_backup(out)
    assert_facts(out, backup)
    guide_db.execute("DROP TRIGGER hold_the_commit ON safedrop.dropped_tables")
    assert_restorable(guide_db, capsys, guide_db.url, backup)


# --------------------------------------------------------------------------------------------------
# the rehearsal's schema dump does not queue behind a lock for ever
# --------------------------------------------------------------------------------------------------


def test_the_rehearsal_s_schema_dump_gives_up_on_a_held_lock_and_names_the_holder(guide_db):
    """pg_dump --schema-only locks every table too: with a table held exclusively, the rehearsal's dump
    waits at most the lock-wait budget (--lock-wait-timeout), then the run stops naming who holds it."""
    from safedrop.errors import PrecheckStop
    from safedrop.migration import load_migration
    from tasks.rehearsal import rehearse_on_copy
    from tests.helpers import BLOCKER_APP, Background

    migration = load_migration("drop_credit_allocation_tables")
    version = guide_db.scalar("SELECT current_setting('server_version_num')::int")
    before = guide_db.snapshot()
    with holding(guide_db, "LOCK TABLE tenants IN ACCESS EXCLUSIVE MODE"):
        job = Background(lambda: rehearse_on_copy(guide_db.db, migration, version, lock_wait_s=1))
        job.wait(60)  # without a lock-wait timeout it waits for the lock (up to the dump's 600 s)
    with pytest.raises(PrecheckStop) as caught:
        job.join()
    [reason] = caught.value.reasons
    assert reason.startswith(
        "could not copy the schema for the rehearsal: pg_dump could not lock public.tenants within the "
        "lock-wait budget 1 s; blocked by: pid "
    ), reason
    assert f"({BLOCKER_APP}, " in reason, reason
    assert guide_db.snapshot() == before
    assert not guide_db.scalar("SELECT count(*) FROM pg_database WHERE datname LIKE 'safedrop_rehearsal_%'")


# --------------------------------------------------------------------------------------------------
# the README's one exit-code table says what the code does
# --------------------------------------------------------------------------------------------------


def test_the_readme_lists_every_exit_code():
    """One table lists the codes; the code produces exactly those. A test that produces each:

    - 0: tests/test_cli.py::test_run_drops_and_prints_a_readable_summary (and `already applied`)
    - 1: test_verification_failing_after_the_commit_reports_the_drop_and_the_restore (here);
      tests/test_cli_failures.py::test_a_refused_connection_is_retried_three_times_then_named
    - 2: test_a_usage_error_found_inside_the_run_exits_2_and_changes_nothing (here);
      tests/test_cli.py::test_bad_input_is_one_line_exit_2_and_touches_nothing
    - 3: tests/test_cli.py::test_run_stops_with_3_and_changes_nothing_when_something_depends
    - 130: tests/test_interrupts.py::test_sigterm_or_ctrl_c_at_start_up (SIGINT) and
      ::test_sigterm_or_ctrl_c_during_the_backup
    - 143: tests/test_interrupts.py (every stage); test_sigterm_during_the_commit_waits_for_the_truth (here)
    """
    import signal as signals
    from typing import get_args

    from safedrop.cli import commands
    from safedrop.errors import PrecheckStop, UsageError
    from safedrop.fleet.fleetreport import EXIT_CODES as FLEET_CODES
    from safedrop.interrupts import EXIT_CODES as SIGNAL_CODES
    from safedrop.results import RestoreReport, RestoreStatus, RunReport, Status
    from tests.conftest import ROOT

    readme = (ROOT / "README.md").read_text()
    rows = re.findall(r"^\| \*\*(\d+)\*\* \|", readme, re.M)
    assert sorted(map(int, rows)) == [0, 1, 2, 3, 130, 143], rows  # one row each, in one table
    blocks = readme.split("### Exit codes", 1)[1].split("\n\n")
    table = next(b for b in blocks if b.startswith("| code |"))
    assert sorted(map(int, re.findall(r"^\| \*\*(\d+)\*\* \|", table, re.M))) == [0, 1, 2, 3, 130, 143]
    assert "Exit codes: **0**" not in readme  # the old sentence is gone, not repeated beside the table

    produced = {RunReport(status=s, migration="m", dry_run=False).exit_code for s in get_args(Status)}
    produced |= {RestoreReport(status=s, backup="b").exit_code for s in get_args(RestoreStatus)}
    produced |= set(FLEET_CODES.values())
    produced |= {UsageError("x").exit_code, PrecheckStop(["x"]).exit_code}
    produced |= {commands.EXIT_OK, commands.EXIT_FAILED, commands.EXIT_USAGE, commands.EXIT_STOPPED}
    assert produced == {0, 1, 2, 3}
    assert SIGNAL_CODES == {signals.SIGINT: 130, signals.SIGTERM: 143}
