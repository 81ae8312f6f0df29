"""`safedrop run --backup-dir s3://BUCKET/PREFIX` against a real S3-API server (moto's server mode on
localhost) and a real PostgreSQL: the archive streams into the bucket, its manifest lands beside it,
the run's report names the object, nothing of it is on the worker's disk, and no credential shows
anywhere. A store that cannot take the backup stops the run before the drop, nothing changed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import types
import uuid
from pathlib import Path

import boto3
import pytest
from prefect.settings import PREFECT_API_URL, temporary_settings

from safedrop.backup.storemanifest import read_stored_manifest
from safedrop.cli.main import main
from safedrop.store import s3 as store
from tests.conftest import TARGETS
from tests.helpers import pg_dump_child, poll
from tests.s3server import KEYS, S3Server, StoreLink, client
from tests.test_store_backup import fill

SKIP_CODE = ("--code-policy", "skip")


@pytest.fixture
def plain(cli_env):
    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        yield


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def no_secret(*texts: str) -> None:
    for text in texts:
        assert KEYS["AWS_SECRET_ACCESS_KEY"] not in text and KEYS["AWS_ACCESS_KEY_ID"] not in text


def local_files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_a_run_backs_up_into_the_bucket_and_drops(guide_db, plain, s3, capsys, tmp_path, monkeypatch):
    guide_db.execute(
        "INSERT INTO credit_allocations (tenant_id, credit_id, amount, period_start, period_end) "
        "SELECT 1, 1, g, date '2024-01-01', date '2024-02-01' FROM generate_series(1, 500) g"
    )
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))  # the machine's default backup dir
    uri = f"s3://{s3.name}/backups"
    report, printed = run_into_the_bucket(guide_db, capsys, uri)
    assert report["status"] == "succeeded", report
    backup = report["backup"]
    assert backup["path"].startswith(f"{uri}/{guide_db.name}-") and backup["path"].endswith(".dump"), backup
    name = backup["path"].rsplit("/", 1)[1]
    assert s3.keys() == [f"backups/{name}", f"backups/{name}.manifest.json"]
    assert not s3.uploads_in_progress()
    manifest = read_stored_manifest(store.client(s3.location), s3.location, name)
    assert manifest.uri == backup["path"] and manifest.sha256 == backup["sha256"]
    assert manifest.bytes == backup["bytes"] and manifest.flow_run_id is None
    assert {t.name: t.rows for t in manifest.targets}["public.credit_allocations"] == 500
    assert not any(guide_db.exists(t) for t in TARGETS)
    assert not (tmp_path / "data").exists() or local_files(tmp_path / "data") == []
    no_secret(printed, json.dumps(manifest.model_dump()))


def rows_of_targets(db) -> dict[str, str]:
    return {
        t: db.scalar(f"SELECT count(*) || ' ' || md5(string_agg(t::text, ',' ORDER BY t::text)) FROM {t} t")
        for t in TARGETS
    }


def run_backing_up_to(guide_db, capsys, uri: str, *extra: str) -> tuple[int, str, str]:
    """`safedrop run --backup-dir URI` (no code scan) with ``extra`` flags: exit code, stdout, stderr."""
    return cli(capsys, "run", "--database-url", guide_db.url, *SKIP_CODE, "--backup-dir", uri, *extra)


def run_into_the_bucket(guide_db, capsys, uri: str) -> tuple[dict, str]:
    """`safedrop run --backup-dir URI --json`, which must succeed; its report, and all it printed."""
    code, out, err = run_backing_up_to(guide_db, capsys, uri, "--allow-nonempty", "--json")
    assert code == 0, out + err
    return json.loads(out), out + err


def another_machine(monkeypatch, tmp_path: Path) -> None:
    """A machine that never saw the backup: its own working, data, state and temporary directories."""
    for name in ("XDG_DATA_HOME", "XDG_STATE_HOME", "TMPDIR"):
        path = tmp_path / "elsewhere" / name.lower()
        path.mkdir(parents=True)
        monkeypatch.setenv(name, str(path))
    monkeypatch.chdir(tmp_path / "elsewhere")
    monkeypatch.setattr("tempfile.tempdir", None)  # TMPDIR read again


def test_a_machine_that_never_saw_the_backup_restores_it_from_the_bucket(
    guide_db, plain, s3, capsys, tmp_path, monkeypatch
):
    guide_db.execute(
        "INSERT INTO credit_allocations (tenant_id, credit_id, amount, period_start, period_end) "
        "SELECT 1 + g % 3, 1, g, date '2024-01-01', date '2024-02-01' FROM generate_series(1, 300) g"
    )
    before = rows_of_targets(guide_db)
    backup = run_into_the_bucket(guide_db, capsys, f"s3://{s3.name}/backups")[0]["backup"]
    another_machine(monkeypatch, tmp_path)
    code, out, err = cli(capsys, "restore", "--backup", backup["path"], "--database-url", guide_db.url)
    assert code == 0, out + err
    assert "Traceback" not in out + err
    assert rows_of_targets(guide_db) == before
    leftovers = list((tmp_path / "elsewhere" / "tmpdir").iterdir())
    assert leftovers == [], leftovers  # the fetched archive went with the restore
    no_secret(out, err)


@pytest.mark.parametrize("damage", ["changed", "truncated", "manifest-missing"])
def test_a_damaged_stored_backup_is_refused_and_nothing_changes(
    guide_db, plain, s3, capsys, tmp_path, monkeypatch, damage
):
    backup = run_into_the_bucket(guide_db, capsys, f"s3://{s3.name}/backups")[0]["backup"]
    key = backup["path"].split(f"s3://{s3.name}/", 1)[1]
    raw = client(s3.server)
    data = raw.get_object(Bucket=s3.name, Key=key)["Body"].read()
    if damage == "changed":
        raw.put_object(Bucket=s3.name, Key=key, Body=data[:-10] + bytes(10))
    elif damage == "truncated":
        raw.put_object(Bucket=s3.name, Key=key, Body=data[: len(data) // 2])
    else:
        raw.delete_object(Bucket=s3.name, Key=key + ".manifest.json")
    before = guide_db.snapshot()
    another_machine(monkeypatch, tmp_path)
    code, out, err = cli(capsys, "restore", "--backup", backup["path"], "--database-url", guide_db.url)
    assert code == 3 and "REFUSED" in out, out + err
    last = out
    if damage == "manifest-missing":
        assert f"no manifest beside {backup['path']}" in last, last
    else:
        assert f"the archive {backup['path']} does not match its manifest" in last, last
        assert "corrupted or truncated" in last and "nothing was changed" in last, last
    assert "Traceback" not in out + err
    assert guide_db.snapshot() == before
    assert list((tmp_path / "elsewhere" / "tmpdir").iterdir()) == []


def test_a_malformed_bucket_uri_is_one_line_and_nothing_runs(guide_db, plain, capsys):
    before = guide_db.snapshot()
    code, out, err = run_backing_up_to(guide_db, capsys, "s3://No_Such")
    assert code == 2 and out.startswith("safedrop: FAILED"), out + err
    assert "✗ backup_dir 's3://No_Such' names no valid bucket: expected s3://BUCKET/PREFIX" in out, out
    assert "Traceback" not in out + err
    assert guide_db.snapshot() == before


def test_a_missing_bucket_stops_the_run_before_the_drop(guide_db, plain, s3, capsys):
    before = guide_db.snapshot()
    code, out, err = run_backing_up_to(guide_db, capsys, "s3://no-such-bucket-here/x")
    assert code == 3 and out.startswith("safedrop: STOPPED — nothing was changed"), out + err
    assert (
        "✗ the backup could not be stored: the bucket of s3://no-such-bucket-here/x does not exist; create it "
        "or fix the URI; nothing was dropped\n"
    ) in out, out
    assert "Traceback" not in out + err
    assert guide_db.snapshot() == before
    no_secret(out, err)


def test_the_store_going_away_mid_upload_stops_the_run_before_the_drop_and_the_next_run_converges(
    guide_db, plain, s3, capsys, monkeypatch
):
    """The run reaches the bucket through a relay; once pg_dump's archive is being uploaded (pg_dump held
    with SIGSTOP until the multipart upload exists) the relay is cut — the store is gone for the run.
    Every retry finds it gone: the run stops before the drop, the targets whole, no object. With the store
    back, the next run backs up and drops, and the first run's abandoned upload is cleared."""
    fill(guide_db, 100_000)  # ~6 MiB: more than one part, whatever pg_dump had written when held
    before = rows_of_targets(guide_db)
    link = StoreLink(s3.server).restore()
    monkeypatch.setenv("AWS_ENDPOINT_URL", link.endpoint)
    waited: list[float] = []
    # the retries' delays are recorded, not waited (the steps' own clock; the time module is shared)
    monkeypatch.setattr("safedrop.steps.time", types.SimpleNamespace(sleep=waited.append))
    cut = threading.Event()

    def store_goes_away() -> None:
        pid = poll("pg_dump to start", pg_dump_child, 120)
        os.kill(pid, signal.SIGSTOP)
        try:
            poll("the multipart upload to begin", s3.uploads_in_progress)
            link.cut()
            cut.set()
        finally:
            os.kill(pid, signal.SIGCONT)

    watcher = threading.Thread(target=store_goes_away, daemon=True)
    watcher.start()
    try:
        code, out, err = run_backing_up_to(guide_db, capsys, f"s3://{s3.name}/backups", "--allow-nonempty")
    finally:
        link.cut()
    watcher.join(timeout=60)
    assert cut.is_set(), out + err
    assert code == 3 and out.startswith("safedrop: STOPPED — nothing was changed"), out + err
    # the last retry finds the store gone when it checks the bucket; the first lost it mid-upload
    assert f"✗ the backup could not be stored: the object store for s3://{s3.name}/backups" in out, out
    assert "is unreachable while" in out and "check AWS_ENDPOINT_URL" in out, out
    assert f"/backups/{guide_db.name}-" in err and "is unreachable while uploading" in err, err
    assert "nothing was dropped\n" in out and "Traceback" not in out + err
    assert "retrying in 2 s, 1 of 2" in err and waited == [2, 10], (err, waited)
    assert rows_of_targets(guide_db) == before and all(guide_db.exists(t) for t in TARGETS)
    assert s3.keys() == []  # no partial object: an upload the store never completed is not one
    assert pg_dump_child() is None
    no_secret(out, err)

    link.restore()
    report, _ = run_into_the_bucket(guide_db, capsys, f"s3://{s3.name}/backups")
    assert report["status"] == "succeeded" and not any(guide_db.exists(t) for t in TARGETS)
    name = report["backup"]["path"].rsplit("/", 1)[1]
    assert s3.keys() == [f"backups/{name}", f"backups/{name}.manifest.json"]
    # the first run's upload could not be aborted with the store gone: `backups` names it, prune aborts it
    [abandoned] = s3.uploads_in_progress()
    code, out, err = cli(capsys, "backups", "list", "--backup-dir", f"s3://{s3.name}/backups")
    assert code == 0 and "unfinished uploads (parts the store keeps with no object" in out, out + err
    assert f"  s3://{s3.name}/{abandoned}  started " in out, out
    code, out, err = cli(
        capsys,
        "backups",
        "prune",
        "--older-than",
        "0d",
        "--confirm",
        "--backup-dir",
        f"s3://{s3.name}/backups",
    )
    assert code == 0 and "removed 0 backup(s) and aborted 1 unfinished upload(s)" in out, out + err
    assert s3.uploads_in_progress() == [] and len(s3.keys()) == 2
    link.cut()


@pytest.fixture(scope="module")
def guarded_store(tmp_path_factory):
    """An S3 server that checks every request against IAM (moto's auth mode, after the set-up's seven
    actions): a bucket, a read-only role (a restorer's, not a worker's) and an admin who can look."""
    server = S3Server(tmp_path_factory.mktemp("guarded") / "moto.log", auth_after=7).start()
    try:
        s3c, iam = (
            client(server),
            boto3.client(
                "iam",
                endpoint_url=server.endpoint,
                region_name="us-east-1",
                aws_access_key_id=KEYS["AWS_ACCESS_KEY_ID"],
                aws_secret_access_key=KEYS["AWS_SECRET_ACCESS_KEY"],
            ),
        )
        s3c.create_bucket(Bucket="safedrop-guarded")
        keys = {}
        for user, actions in (("restorer", ["s3:ListBucket", "s3:GetObject"]), ("admin", ["s3:*"])):
            iam.create_user(UserName=user)
            keys[user] = iam.create_access_key(UserName=user)["AccessKey"]
            policy = {
                "Version": "2012-10-17",
                "Statement": [{"Effect": "Allow", "Action": actions, "Resource": "*"}],
            }
            iam.put_user_policy(UserName=user, PolicyName="backups", PolicyDocument=json.dumps(policy))
        yield server, keys
    finally:
        server.stop()


@pytest.mark.parametrize(
    ("who", "said"),
    [
        (
            "unknown",
            "the store refused the credentials for s3://safedrop-guarded/backups while checking the bucket "
            "(InvalidAccessKeyId: The AWS Access Key Id you provided does not exist in our records.); renew "
            "them (expired session token?) or fix AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY",
        ),
        (
            "restorer",
            "access denied to s3://safedrop-guarded/backups while checking the bucket (AccessDenied: Access "
            "Denied); the worker's credentials need s3:PutObject, s3:AbortMultipartUpload and s3:GetObject on "
            "the prefix",
        ),
    ],
)
def test_credentials_the_store_refuses_stop_the_run_before_the_drop_in_one_line(
    guide_db, plain, guarded_store, capsys, monkeypatch, who, said
):
    """Wrong or expired keys (the store answers both InvalidAccessKeyId/ExpiredToken, one branch; moto
    cannot expire a token) and a role without write access: named, not retried, nothing changed."""
    server, keys = guarded_store
    key = keys.get(who, {"AccessKeyId": "AKIANOTAKEYATALL0000", "SecretAccessKey": "not-a-secret-at-all"})
    monkeypatch.setenv("AWS_ENDPOINT_URL", server.endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key["AccessKeyId"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", key["SecretAccessKey"])
    before = guide_db.snapshot()
    code, out, err = run_backing_up_to(guide_db, capsys, "s3://safedrop-guarded/backups")
    assert code == 3 and out.startswith("safedrop: STOPPED — nothing was changed"), out + err
    assert f"✗ the backup could not be stored: {said}; nothing was dropped\n" in out, out
    assert "retrying" not in err and "Traceback" not in out + err
    assert key["SecretAccessKey"] not in out + err
    assert guide_db.snapshot() == before
    admin = keys["admin"]
    listed = boto3.client(
        "s3",
        endpoint_url=server.endpoint,
        region_name="us-east-1",
        aws_access_key_id=admin["AccessKeyId"],
        aws_secret_access_key=admin["SecretAccessKey"],
    ).list_objects_v2(Bucket="safedrop-guarded")
    assert listed.get("Contents", []) == []


@pytest.mark.usefixtures("prefect_harness")
def test_the_ledger_records_the_uri_and_the_flow_run_id_finds_the_backup_in_the_bucket(
    guide_db, s3, capsys, cli_env, monkeypatch, tmp_path
):
    """A deployment's worker backs up into the bucket ($SAFEDROP_BACKUP_DIR); another machine whose
    $SAFEDROP_BACKUP_DIR is the same bucket restores by the flow run's id alone."""
    from tests.helpers import run

    monkeypatch.setenv("DATABASE_URL", guide_db.url)
    monkeypatch.setenv("SAFEDROP_BACKUP_DIR", f"s3://{s3.name}/backups")
    before = rows_of_targets(guide_db)
    state, report = run()
    assert state.is_completed(), report.reasons
    uri = report.backup.path
    assert uri.startswith(f"s3://{s3.name}/backups/{guide_db.name}-"), uri
    recorded = guide_db.scalar("SELECT string_agg(DISTINCT backup_path, ',') FROM safedrop.dropped_tables")
    assert recorded == uri
    monkeypatch.delenv("DATABASE_URL")
    another_machine(monkeypatch, tmp_path)
    code, out, err = cli(capsys, "restore", "--backup", report.flow_run_id, "--database-url", guide_db.url)
    assert code == 0, out + err
    assert uri in out, out
    assert rows_of_targets(guide_db) == before


@pytest.fixture
def small_tmpdir(tmp_path, monkeypatch):
    """A 1 MiB file system (tmpfs) as the process's TMPDIR and data home: far smaller than the archive."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small file system needs root (CI runs as root)")
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", str(mount)], check=True)
    try:
        monkeypatch.setenv("TMPDIR", str(mount))
        monkeypatch.setenv("XDG_DATA_HOME", str(mount / "data"))
        monkeypatch.setattr("tempfile.tempdir", None)
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_backup_larger_than_the_local_disk_streams_and_its_restore_says_what_room_it_needs(
    guide_db, plain, s3, capsys, small_tmpdir
):
    guide_db.execute(
        "INSERT INTO credit_allocations (tenant_id, credit_id, amount, period_start, period_end) "
        "SELECT 1 + g % 5, 1, g * 1.5, date '2024-01-01', date '2024-02-01' FROM generate_series(1, 400000) g"
    )
    report, _ = run_into_the_bucket(guide_db, capsys, f"s3://{s3.name}/backups")
    assert report["backup"]["bytes"] > 2 * 1024 * 1024, report["backup"]  # twice the disk
    assert not any(guide_db.exists(t) for t in TARGETS)
    # the restore downloads the archive, so it needs the room: it says so, and changes nothing
    before = guide_db.snapshot()
    code, out, err = cli(
        capsys, "restore", "--backup", report["backup"]["path"], "--database-url", guide_db.url
    )
    assert code == 3 and "REFUSED" in out, out + err
    assert "and the temporary directory" in out and "point TMPDIR at a file system with room for it" in out, (
        out
    )
    assert guide_db.snapshot() == before


def save_credentials_block(slug: str, name: str, data: dict) -> None:
    """A prefect-aws credentials block as the UI or `prefect block create` saves one: a block document
    of the type every Prefect server registers (prefect-aws itself is not installed here)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import BlockDocumentCreate

    with get_client(sync_client=True) as client:
        block_type = client.read_block_type_by_slug(slug)
        schema = client.get_most_recent_block_schema_for_block_type(block_type.id)
        client.create_block_document(
            BlockDocumentCreate(name=name, block_type_id=block_type.id, block_schema_id=schema.id, data=data)
        )


@pytest.mark.usefixtures("prefect_harness")
def test_a_credentials_block_reaches_the_bucket_and_its_secret_is_nowhere(guide_db, s3, monkeypatch):
    """A deployment's `backup_credentials_block`: the worker's environment has no AWS keys and no
    endpoint at all — only the block does — and the run backs up into the bucket, the restore flow
    reads it back with the same block; the block's secret key is in no parameter, log, artifact,
    manifest or report. A block that does not exist stops the run in one line, nothing changed."""
    from flows.restore_dropped_tables import restore_dropped_tables
    from safedrop.parameters import RestoreParameters
    from tests.helpers import run
    from tests.test_secrets import traces

    secret = f"block-secret-{uuid.uuid4().hex}"
    name = f"backups-{uuid.uuid4().hex[:8]}"
    save_credentials_block(
        "aws-credentials",
        name,
        {
            "aws_access_key_id": "block-key-id",
            "aws_secret_access_key": secret,
            "region_name": "us-east-1",
            "aws_client_parameters": {"endpoint_url": s3.server.endpoint},
        },
    )
    for variable in [k for k in os.environ if k.startswith("AWS_")]:
        monkeypatch.delenv(variable)  # the standard chain finds nothing: no keys, no endpoint
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent/config")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/credentials")
    monkeypatch.setenv("DATABASE_URL", guide_db.url)
    uri = f"s3://{s3.name}/backups"
    before = rows_of_targets(guide_db)

    state, report = run(backup_dir=uri, backup_credentials_block="no-such-block", allow_nonempty=True)
    assert report.status == "failed" and len(report.reasons) == 1, report.reasons
    assert (
        "backup_credentials_block 'no-such-block': the Prefect server has no AWS Credentials"
        in (report.reasons[0])
    )
    assert rows_of_targets(guide_db) == before and s3.keys() == []

    state, report = run(backup_dir=uri, backup_credentials_block=name, allow_nonempty=True)
    assert report.status == "succeeded", report.reasons
    assert not any(guide_db.exists(t) for t in TARGETS)
    archive = report.backup.path.rsplit("/", 1)[1]
    assert s3.keys() == [f"backups/{archive}", f"backups/{archive}.manifest.json"]
    found = traces(str(state.state_details.flow_run_id))
    assert name in found["parameters"]

    params = RestoreParameters(
        backup_path=report.backup.path, database_secret_block=None, backup_credentials_block=name
    )
    restored = restore_dropped_tables(params, return_state=True)
    assert restored.is_completed(), restored.message
    assert rows_of_targets(guide_db) == before
    restore_traces = traces(str(restored.state_details.flow_run_id))
    manifest = client(s3.server).get_object(Bucket=s3.name, Key=f"backups/{archive}.manifest.json")
    everything = [*found.values(), *restore_traces.values(), manifest["Body"].read().decode()]
    assert not [text for text in everything if secret in text]
    assert secret not in report.model_dump_json() + str(state.message) + str(restored.message)
