"""The database password, recognisable on purpose, appears nowhere a run leaves traces.

One whole run (backup included) as a role with its own password, and one run that fails to connect
with it. Looked for: stdout and stderr (file descriptors) and every log record, every process's argv
while pg_dump runs, the
flow run's parameters, logs, artifacts, task-run states and report, the backup directory, and — as the
catch-all — the bytes of the Prefect API's own database.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterId,
    LogFilter,
    LogFilterFlowRunId,
)
from prefect.logging.handlers import APILogHandler

from safedrop.pg.pgserver import find_server_bin, free_port, wait_until
from tests.conftest import TARGETS
from tests.gitrepos import GitHttpServer, leftovers, make_app_repo, private_tempdir, recording_git
from tests.helpers import Background, artifacts_of, run

pytestmark = pytest.mark.usefixtures("prefect_harness")

PASSWORD = "Zq8-recognisable-S3cret"

# pg_dump that waits at a gate before becoming the real one (exec: same process, same argv), so the
# process list can be read while pg_dump is certainly running.
GATED_PG_DUMP = """#!/bin/sh
case "$1" in --version) exec "{real}" "$@";; esac
while [ ! -e "{gate}" ]; do sleep 0.02; done
exec "{real}" "$@"
"""


def cmdlines() -> dict[int, str]:
    out = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                out[int(entry.name)] = (
                    (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")
                )
            except OSError:
                continue
    return out


def traces(flow_run_id: str) -> dict[str, str]:
    """Everything Prefect keeps about the flow run, as text."""
    APILogHandler().flush()
    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(flow_run_id)
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
        task_runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )
    return {
        "parameters": json.dumps(flow_run.parameters, default=str),
        "flow run state": f"{flow_run.state.name} {flow_run.state.message}",
        "logs": "\n".join(log.message for log in logs),
        "task runs": "\n".join(f"{t.name} {t.state.name} {t.state.message}" for t in task_runs),
        "artifacts": "\n".join(
            f"{a.key} {a.description} {json.dumps(a.data, default=str)}"
            for a in artifacts_of(flow_run_id).values()
        ),
    }


def prefect_database_bytes() -> bytes:
    from prefect.settings import PREFECT_SERVER_DATABASE_CONNECTION_URL

    path = Path(PREFECT_SERVER_DATABASE_CONNECTION_URL.value().split("///", 1)[1])
    return b"".join(p.read_bytes() for p in path.parent.glob(path.name + "*"))


@pytest.fixture
def owner_role(guide_db, monkeypatch):
    role = f"sd_owner_{uuid.uuid4().hex[:8]}"
    guide_db.execute(f"CREATE ROLE {role} LOGIN SUPERUSER PASSWORD '{PASSWORD}'")
    url = guide_db.server.url(guide_db.name, user=role, password=PASSWORD)
    monkeypatch.setenv("DATABASE_URL", url)
    return role


def test_the_password_is_nowhere_after_a_whole_run(
    guide_db, owner_role, tmp_path, monkeypatch, capfd, caplog
):
    real = find_server_bin()
    bindir, gate = tmp_path / "bin", tmp_path / "gate"
    bindir.mkdir()
    (bindir / "pg_dump").write_text(GATED_PG_DUMP.format(real=real / "pg_dump", gate=gate))
    (bindir / "pg_dump").chmod(0o755)
    (bindir / "pg_restore").symlink_to(real / "pg_restore")
    monkeypatch.setenv("SAFEDROP_PG_BIN", str(bindir))
    backups = tmp_path / "backups"

    job = Background(lambda: run(backup_dir=str(backups)))
    try:
        pid = wait_until(
            lambda: next((p for p, c in cmdlines().items() if f"{bindir}/pg_dump --format" in c), None),
            deadline_s=60,
            what="pg_dump to start",
        )
        everyone = cmdlines()  # pg_dump is running: held at its gate
    finally:
        gate.touch()
    state, report = job.join()

    assert report.status == "succeeded", report.reasons
    assert not any(guide_db.exists(t) for t in TARGETS)
    assert "--file=" in everyone[pid] and "PGPASSWORD" not in everyone[pid]
    assert not [c for c in everyone.values() if PASSWORD in c]
    out, err = capfd.readouterr()  # what reached file descriptors 1 and 2 (child processes included)
    assert PASSWORD not in out + err
    assert f"connecting to {owner_role}@" in caplog.text  # every log record, formatted: the URL masked
    assert PASSWORD not in caplog.text
    flow_run_id = str(state.state_details.flow_run_id)
    found = traces(flow_run_id)
    assert found["logs"] and found["artifacts"] and found["task runs"]
    assert {where for where, text in found.items() if PASSWORD in text} == set()
    assert PASSWORD not in report.model_dump_json() + str(state.message)
    assert not [
        p
        for p in backups.rglob("*")
        if p.is_file() and PASSWORD.encode() in p.read_bytes() and not p.name.endswith(".dump")
    ]  # the archive itself holds data, not the URL
    stored = prefect_database_bytes()
    assert f"{owner_role}@127.0.0.1".encode() in stored  # the logs are in there, URL masked …
    assert PASSWORD.encode() not in stored  # … and the password is not, anywhere


def test_the_password_is_nowhere_after_a_failed_connection(guide_db, tmp_path, monkeypatch, capfd, caplog):
    url = f"postgresql://sd_owner:{PASSWORD}@127.0.0.1:{free_port()}/{guide_db.name}"
    monkeypatch.setenv("DATABASE_URL", url)
    state, report = run(backup_dir=str(tmp_path / "b"))
    assert state.is_failed() and report.status == "failed"
    [reason] = report.reasons
    assert reason.startswith("cannot connect to sd_owner@127.0.0.1:"), reason
    assert PASSWORD not in reason + str(state.message) + report.model_dump_json()
    out, err = capfd.readouterr()
    assert PASSWORD not in out + err + caplog.text
    flow_run_id = str(state.state_details.flow_run_id)
    found = traces(flow_run_id)
    with get_client(sync_client=True) as client:
        [precheck] = [
            t
            for t in client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
            )
            if t.name.startswith("connection-precheck")
        ]
    assert precheck.run_count == 4  # refused connections are retried (three times), then named
    assert {where for where, text in found.items() if PASSWORD in text} == set()
    assert PASSWORD.encode() not in prefect_database_bytes()


# --------------------------------------------------------------------------------------------------
# the token for a private code repository, from a Prefect Secret block

REPO_TOKEN = "glpat-Recognisable0Repo0Token"


def test_the_repository_token_is_nowhere(guide_db, tmp_path, monkeypatch, capfd, caplog):
    """A private repository over smart HTTP (git http-backend, 401 without the right basic auth):
    fetched with the token from a Secret block, then refused a wrong one. The token is in no git
    argv (a recording git on PATH, and every process's argv read while the server answers), no log,
    artifact, parameter, state, report or exception text, and not in the Prefect database's bytes."""
    from prefect.blocks.system import Secret

    monkeypatch.setenv("DATABASE_URL", guide_db.url)
    temp_root = private_tempdir(monkeypatch, tmp_path)
    (tmp_path / "remote").mkdir()
    repo = make_app_repo(tmp_path / "remote")
    git_log = tmp_path / "git-argv"
    recording_git(tmp_path / "bin", git_log)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    Secret(value=f"ci-bot:{REPO_TOKEN}").save("safedrop-test-repo-token", overwrite=True)
    Secret(value="ci-bot:glpat-Wrong0Token").save("safedrop-test-wrong-token", overwrite=True)

    with GitHttpServer(repo.bare.parent, "ci-bot", REPO_TOKEN) as server:
        url = f"{server.url()}#cleanup"
        refused_state, refused = run(
            code_paths=[url], code_secret_block="safedrop-test-wrong-token", backup_dir=str(tmp_path / "b2")
        )
        state, report = run(
            code_paths=[url], code_secret_block="safedrop-test-repo-token", backup_dir=str(tmp_path / "b")
        )
        assert report.status == "succeeded", report.reasons
        assert report.code_sources[0].commit == repo.cleanup

    assert refused.status == "stopped"
    assert refused.reasons == [
        f"cannot fetch the code at {server.url()}: the server refused the HTTPS token in Prefect Secret "
        "block 'safedrop-test-wrong-token'; check that it is valid and may read the repository"
    ]
    assert not (tmp_path / "b2").exists()
    assert {status for *_, status in server.requests} == {200, 401}
    calls = git_log.read_text()
    assert "fetch" in calls and REPO_TOKEN not in calls and "Wrong0Token" not in calls
    assert server.argv_seen and not [argv for argv in server.argv_seen if REPO_TOKEN in argv]
    out, err = capfd.readouterr()
    assert REPO_TOKEN not in out + err + caplog.text
    for st, rep in ((state, report), (refused_state, refused)):
        found = traces(str(st.state_details.flow_run_id))
        assert url in found["parameters"] and found["artifacts"]
        assert {
            where for where, text in found.items() if REPO_TOKEN in text or "Wrong0Token" in text
        } == set()
        assert REPO_TOKEN not in rep.model_dump_json() + str(st.message)
    assert REPO_TOKEN.encode() not in prefect_database_bytes()  # the Secret block is stored encrypted
    assert leftovers(temp_root) == []
