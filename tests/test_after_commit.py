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
import socket
import threading
import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest
from prefect.settings import PREFECT_API_URL, PREFECT_CLIENT_MAX_RETRIES, get_current_settings, temporary_settings

from safedrop.cli import main
from tests.conftest import TARGETS

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
        capsys, "run", *SKIP_CODE, "--database-url", guide_db.url, "--keep", "credits,credit_allocations",
        "--backup-dir", str(tmp_path / "b"), "--json",
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
        self.trigger = trigger
        self.cut = threading.Event()
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._listener.getsockname()[1]}{self.path}"

    def __enter__(self) -> ApiCutter:
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._go_down()

    def _go_down(self) -> None:
        self.cut.set()
        with self._lock:
            for sock in [self._listener, *self._sockets]:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                sock.close()

    def _accept(self) -> None:
        while not self.cut.is_set():
            try:
                client, _ = self._listener.accept()
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
                if watch and self.trigger in seen:
                    self._go_down()
                    return
                if self.cut.is_set():
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
    assert code == 1, out + err
    assert out.startswith("safedrop: FAILED"), out + err
    backup = the_backup(out)
    assert_facts(out, backup)
    assert f"  dropped: {', '.join(QUALIFIED)}" in out, out
    assert_restorable(guide_db, capsys, guide_db.url, backup)
