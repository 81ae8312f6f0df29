"""The backup store's S3 layer against a real S3-API server process (moto's server mode on localhost):
a stream uploaded in parts with its sha256, proven on what the store holds; a failed or interrupted
upload leaves nothing; each fault named in one line; URIs refused in one line."""

from __future__ import annotations

import hashlib
import io
import os

import pytest

from safedrop.errors import UsageError
from safedrop.store import s3 as store
from safedrop.store.location import S3Location, is_s3, parse_object_uri, parse_s3
from tests.s3server import S3Server, client

MIB = 1024 * 1024


@pytest.mark.parametrize(
    ("value", "bucket", "prefix"),
    [
        ("s3://backups", "backups", ""),
        ("s3://backups/", "backups", ""),
        ("s3://my.backups-1/prod/app//", "my.backups-1", "prod/app"),
        ("  S3://backups/a  ", "backups", "a"),
    ],
)
def test_an_s3_uri_names_a_bucket_and_a_prefix(value, bucket, prefix):
    assert is_s3(value)
    assert parse_s3(value) == S3Location(bucket, prefix)


@pytest.mark.parametrize(
    ("value", "said"),
    [
        ("s3://", "names no valid bucket"),
        ("s3://Upper/x", "names no valid bucket"),
        ("s3://ab/x", "names no valid bucket"),
        ("s3://b..ckets/x", "names no valid bucket"),
        ("s3://bucket/a/../b", "the prefix may not hold '.' or '..'"),
        ("s3://bucket/a?versionId=1", "takes no query"),
    ],
)
def test_a_malformed_s3_uri_is_refused_in_one_line(value, said):
    with pytest.raises(UsageError) as caught:
        parse_s3(value)
    assert said in str(caught.value) and "\n" not in str(caught.value)
    assert not is_s3("/var/backups") and not is_s3(None)


def test_an_object_uri_is_a_location_and_a_name():
    assert parse_object_uri("s3://bucket/prod/app/a.dump") == (S3Location("bucket", "prod/app"), "a.dump")
    with pytest.raises(UsageError, match="names a bucket, not a backup"):
        parse_object_uri("s3://bucket")


def test_a_stream_is_uploaded_in_parts_and_proven_on_what_the_store_holds(s3):
    data = os.urandom(12 * MIB + 12345)  # three parts of 5 MiB, the last one short
    seen: list[int] = []
    stored = store.upload_stream(
        store.client(s3.location),
        s3.location,
        "a.dump",
        io.BytesIO(data),
        part_bytes=5 * MIB,
        on_part=seen.append,
    )
    assert stored.uri == f"s3://{s3.name}/backups/a.dump"
    assert stored.bytes == len(data) and stored.sha256 == hashlib.sha256(data).hexdigest()
    assert seen == [5 * MIB, 10 * MIB, len(data)]
    assert s3.keys() == ["backups/a.dump"] and not s3.uploads_in_progress()
    assert b"".join(store.read(store.client(s3.location), s3.location, "a.dump")) == data
    assert stored.encryption in (None, "AES256")  # the bucket's default: no setting sent


def test_a_versioned_bucket_and_sse_are_recorded(s3):
    client(s3.server).put_bucket_versioning(Bucket=s3.name, VersioningConfiguration={"Status": "Enabled"})
    stored = store.upload_stream(
        store.client(s3.location),
        s3.location,
        "v.dump",
        io.BytesIO(b"x" * 1000),
        encryption={"ServerSideEncryption": "AES256"},
    )
    assert stored.version_id and stored.encryption == "AES256"


class Breaks(io.RawIOBase):
    """A stream that fails after ``good`` bytes (pg_dump dying mid-dump), or is interrupted (Ctrl-C)."""

    def __init__(self, good: int, error: BaseException) -> None:
        self.left, self.error = good, error

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        if self.left <= 0:
            raise self.error
        n = min(n if n > 0 else MIB, self.left)
        self.left -= n
        return b"y" * n


@pytest.mark.parametrize("error", [OSError("pg_dump went away"), KeyboardInterrupt()])
def test_a_failed_or_interrupted_upload_leaves_no_object_and_no_parts(s3, error):
    with pytest.raises(type(error) if isinstance(error, KeyboardInterrupt) else store.StoreError) as caught:
        store.upload_stream(
            store.client(s3.location), s3.location, "b.dump", Breaks(11 * MIB, error), part_bytes=5 * MIB
        )
    if isinstance(error, OSError):
        assert str(caught.value) == (
            f"the store failed while uploading s3://{s3.name}/backups/b.dump (OSError: pg_dump went away)"
        )
    assert s3.keys() == [] and s3.uploads_in_progress() == []


def test_a_missing_bucket_is_named_in_one_line(s3):
    missing = S3Location("safedrop-no-such-bucket", "x")
    with pytest.raises(store.StoreError) as caught:
        store.check_writable(store.client(missing), missing)
    assert (
        str(caught.value)
        == "the bucket of s3://safedrop-no-such-bucket/x does not exist; create it or fix the URI"
    )
    with pytest.raises(
        store.StoreError, match=r"^the bucket of s3://safedrop-no-such-bucket/x/a.dump does not exist"
    ):
        store.upload_stream(store.client(missing), missing, "a.dump", io.BytesIO(b"z"))


def test_no_credentials_are_named_in_one_line(s3, monkeypatch, tmp_path):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with pytest.raises(store.StoreError) as caught:
        store.check_writable(store.client(s3.location), s3.location)
    assert str(caught.value).startswith(
        f"no credentials for s3://{s3.name}/backups while checking the bucket"
    )


def test_a_store_that_goes_away_mid_upload_stops_the_upload_in_one_line(tmp_path, monkeypatch):
    server = S3Server(tmp_path / "moto.log").start()
    try:
        for name, value in server.env.items():
            monkeypatch.setenv(name, value)
        client(server).create_bucket(Bucket="going-away")
        location = S3Location("going-away", "p")

        class StopsTheServer(io.RawIOBase):
            sent = 0

            def readable(self) -> bool:
                return True

            def read(self, n: int = -1) -> bytes:
                if self.sent >= 6 * MIB:
                    server.stop()  # after the first part went up: the store is gone
                self.sent += MIB
                return b"w" * MIB if self.sent <= 12 * MIB else b""

        s3 = store.client(location)
        with pytest.raises(store.StoreError) as caught:
            store.upload_stream(s3, location, "c.dump", StopsTheServer(), part_bytes=5 * MIB)
        message = str(caught.value)
        assert message.startswith(
            "the object store for s3://going-away/p/c.dump is unreachable while uploading"
        )
        assert "check AWS_ENDPOINT_URL" in message and caught.value.transient
        assert KEYS_NEVER_SHOWN(message)
    finally:
        server.stop()


def KEYS_NEVER_SHOWN(text: str) -> bool:
    return "testing-secret-key" not in text and "testing-key-id" not in text


def test_an_object_read_back_different_from_what_was_sent_is_refused_and_removed(s3, monkeypatch):
    """A store that keeps no checksum: the object is read back; a difference removes the upload."""
    real_read = store.read

    def tampered(*args, **kwargs):
        for chunk in real_read(*args, **kwargs):
            yield chunk[:-1] + b"!"

    real_head = store.head
    monkeypatch.setattr(store, "head", lambda *a, **k: {**real_head(*a, **k), "ChecksumSHA256": None})
    monkeypatch.setattr(store, "read", tampered)
    with pytest.raises(store.StoreError) as caught:
        store.upload_stream(store.client(s3.location), s3.location, "d.dump", io.BytesIO(b"q" * 1000))
    assert (
        str(caught.value)
        == f"s3://{s3.name}/backups/d.dump read back is not what was sent; the upload was removed"
    )
    assert s3.keys() == []
