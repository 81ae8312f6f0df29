"""S3 (and S3-compatible stores: MinIO, Ceph, R2, …) through boto3, for backups.

Credentials come from boto3's standard chain (environment, shared profile, instance or pod role) and
the endpoint from ``AWS_ENDPOINT_URL`` (or ``AWS_ENDPOINT_URL_S3``) when set, or from a prefect-aws
block a deployment names (``safedrop.store.credentials``) — nothing of them is ever
passed in argv, logged, or written to a manifest. Every failure is a ``StoreError`` with one line that
names the bucket and what to fix; ``transient`` says whether a retry may help.

``upload_stream`` writes a readable stream (pg_dump's stdout) as one object by multipart upload, parts
of ``part_bytes`` held in memory one at a time (the local disk needs nothing): the whole object's
sha256 and each part's sha256 are computed on the way, the parts are sent with their checksum (a
store that checks them refuses a corrupted part), and the stored object's checksum is compared with
ours after completion. Any failure — or an interrupt — aborts the multipart upload: no partial object
is left behind.
"""

from __future__ import annotations

import base64
import hashlib
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import IO, Any

from safedrop.errors import SafedropError, UsageError
from safedrop.store import credentials
from safedrop.store.location import S3Location

PART_BYTES = 16 * 1024 * 1024  # S3's minimum part is 5 MiB; 10,000 parts of 16 MiB: 156 GiB per object
READ_BYTES = 1024 * 1024
IN_FLIGHT = 2  # parts being sent at once while the next one is read


class StoreError(SafedropError):
    """The object store could not be used: unreachable, no such bucket, access denied, credentials."""

    def __init__(self, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient

    def __reduce__(self):
        return (self.__class__, (str(self),), {"transient": self.transient})


class ObjectMissing(StoreError):
    """The bucket holds no such object (or no such version)."""


def _missing(exc: BaseException) -> bool:
    """Whether the store said "not found" (HEAD answers a bare 404, GET NoSuchKey)."""
    from botocore import exceptions as bce

    code = str(exc.response.get("Error", {}).get("Code")) if isinstance(exc, bce.ClientError) else ""
    return code in ("404", "NoSuchKey", "NoSuchVersion")


@dataclass(frozen=True)
class StoredObject:
    """What the store holds after an upload, as the manifest records it."""

    uri: str
    bytes: int
    sha256: str  # hex, of the whole object, computed while uploading
    version_id: str | None
    encryption: str | None  # AES256, aws:kms, … as the store says (the bucket's default when not asked)
    kms_key_id: str | None = None


def client(location: S3Location) -> Any:
    """A boto3 S3 client: the standard AWS chain (``AWS_ENDPOINT_URL`` honoured by boto3 itself), or
    the prefect-aws block the run names (``safedrop.store.credentials``).

    A missing region falls back to us-east-1 (S3 answers for every region there and redirects)."""
    from botocore.config import Config

    session, options = credentials.session_and_options()
    config = Config(
        retries={"max_attempts": 4, "mode": "standard"},
        connect_timeout=10,
        read_timeout=60,
        # A checksum only when an operation requires one: some S3-compatible stores refuse the newer
        # default trailers; our own parts carry their sha256 explicitly.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    return session.client("s3", region_name=session.region_name or "us-east-1", config=config, **options)


def describe(exc: BaseException, location: S3Location | str, doing: str) -> StoreError:
    """One secret-free line for a failed store operation, with what to fix."""
    from botocore import exceptions as bce

    where = str(location)
    if isinstance(exc, StoreError):
        return exc
    if isinstance(exc, bce.NoCredentialsError | bce.PartialCredentialsError):
        return StoreError(
            f"no credentials for {where} while {doing}: set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, "
            "AWS_PROFILE, or give the worker a role"
        )
    if isinstance(exc, bce.EndpointConnectionError | bce.ConnectTimeoutError | bce.ReadTimeoutError):
        return StoreError(
            f"the object store for {where} is unreachable while {doing} ({type(exc).__name__}); check "
            "AWS_ENDPOINT_URL and the network",
            transient=True,
        )
    if isinstance(exc, bce.ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        message = str(error.get("Message", "")).strip().splitlines()[0:1]
        said = f"{code}: {message[0]}" if message else code
        if code in ("NoSuchBucket",):
            return StoreError(f"the bucket of {where} does not exist ({said}); create it or fix the URI")
        if code in ("AccessDenied", "AllAccessDisabled", "403", "Forbidden"):
            return StoreError(
                f"access denied to {where} while {doing} ({said}); the worker's credentials need "
                "s3:PutObject, s3:AbortMultipartUpload and s3:GetObject on the prefix"
            )
        if code in (
            "ExpiredToken",
            "ExpiredTokenException",
            "InvalidAccessKeyId",
            "SignatureDoesNotMatch",
            "InvalidToken",
            "TokenRefreshRequired",
        ):
            return StoreError(
                f"the store refused the credentials for {where} while {doing} ({said}); renew them "
                "(expired session token?) or fix AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY"
            )
        if code in ("QuotaExceeded", "EntityTooLarge", "XMinioStorageFull", "XMinioAdminBucketQuotaExceeded"):
            return StoreError(
                f"the store is full for {where} while {doing} ({said}); free space or raise the quota"
            )
        return StoreError(f"the store failed while {doing} {where} ({said})", transient=_status(exc) >= 500)
    if isinstance(exc, bce.BotoCoreError):
        return StoreError(
            f"the store failed while {doing} {where} ({type(exc).__name__}: {exc})", transient=True
        )
    return StoreError(f"the store failed while {doing} {where} ({type(exc).__name__}: {exc})")


def check_writable(s3: Any, location: S3Location) -> None:
    """Before the dump: the bucket exists and takes our credentials (HEAD bucket). A HEAD answer has no
    body, so a refusal is a bare 403 — an unknown or expired key and a missing permission look the same:
    one listing of the prefix asks again for the store's own error code."""
    try:
        s3.head_bucket(Bucket=location.bucket)
    except Exception as exc:
        if _missing(exc):
            raise StoreError(f"the bucket of {location} does not exist; create it or fix the URI") from None
        if _status(exc) == 403:
            exc = _why_refused(s3, location) or exc
        raise describe(exc, location, "checking the bucket") from None


def _status(exc: BaseException) -> int:
    return int(getattr(exc, "response", {}).get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)


def _why_refused(s3: Any, location: S3Location) -> BaseException | None:
    prefix = location.key("")  # "PREFIX/", or "" at the bucket's root
    try:
        s3.list_objects_v2(Bucket=location.bucket, Prefix=prefix, MaxKeys=1)
    except Exception as exc:
        return exc
    return None


ENCRYPTION_SETTINGS = "'' (the bucket's default), 'AES256' (SSE-S3), 'aws:kms' or 'aws:kms:KEY_ID'"


def encryption_args(setting: str) -> dict[str, str] | None:
    """The upload's server-side encryption arguments for a setting (``ENCRYPTION_SETTINGS``); None: the
    bucket's default encryption applies. Raises UsageError for anything else."""
    text = (setting or "").strip()
    if not text:
        return None
    if text.upper() in ("AES256", "SSE-S3"):
        return {"ServerSideEncryption": "AES256"}
    if text.lower() == "aws:kms":
        return {"ServerSideEncryption": "aws:kms"}
    if text.lower().startswith("aws:kms:") and text[len("aws:kms:") :].strip():
        return {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": text[len("aws:kms:") :].strip()}
    raise UsageError(f"backup encryption {setting!r} is not one of {ENCRYPTION_SETTINGS}")


def _b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode()


def upload_stream(
    s3: Any,
    location: S3Location,
    name: str,
    stream: IO[bytes],
    *,
    part_bytes: int = PART_BYTES,
    encryption: dict[str, str] | None = None,
    on_part: Callable[[int], None] | None = None,
    finish: Callable[[], None] | None = None,
) -> StoredObject:
    """Upload everything ``stream`` yields as ``location/name``; returns what the store then holds.

    ``encryption``: extra arguments for the upload (``ServerSideEncryption``, ``SSEKMSKeyId``); none:
    the bucket's default encryption applies. ``on_part(total_bytes)`` after each part. ``finish()``
    after the last part, before the object is made: the writer's verdict (pg_dump's exit status) — if
    it raises, the upload is aborted. The multipart upload is aborted on any failure, interrupts
    included — nothing partial is left; an error of ours (``SafedropError``) is raised as it is.
    """
    key = location.key(name)
    uri = location.object_uri(name)
    try:
        upload = s3.create_multipart_upload(
            Bucket=location.bucket, Key=key, ChecksumAlgorithm="SHA256", **(encryption or {})
        )
    except Exception as exc:
        raise describe(exc, uri, "starting the upload of") from None
    upload_id = upload["UploadId"]
    whole = hashlib.sha256()
    part_digests: list[bytes] = []
    parts: list[dict[str, Any]] = []
    total = 0

    def send(number: int, chunk: bytes, digest: bytes | None = None) -> tuple[dict[str, Any], bytes]:
        digest = digest or hashlib.sha256(chunk).digest()  # in the part's thread: beside the reader's hash
        response = s3.upload_part(
            Bucket=location.bucket,
            Key=key,
            UploadId=upload_id,
            PartNumber=number,
            Body=chunk,
            ChecksumSHA256=_b64(digest),
        )
        return {"PartNumber": number, "ETag": response["ETag"], "ChecksumSHA256": _b64(digest)}, digest

    # One part on its way while the next is read: the dump and the upload overlap, at most
    # IN_FLIGHT + 1 parts in memory.
    pool = ThreadPoolExecutor(max_workers=IN_FLIGHT, thread_name_prefix="s3-part")
    pending: deque[tuple[Future, int]] = deque()  # a part on its way, and its size
    sent = 0

    def settle(keep: int) -> None:
        nonlocal sent
        while len(pending) > keep:
            future, size = pending.popleft()
            part, digest = future.result()
            parts.append(part)
            part_digests.append(digest)
            sent += size
            if on_part:
                on_part(sent)

    try:
        for number, chunk in enumerate(_parts(stream, part_bytes), 1):
            whole.update(chunk)
            total += len(chunk)
            pending.append((pool.submit(send, number, chunk), len(chunk)))
            settle(keep=IN_FLIGHT - 1)
        settle(keep=0)
        if not parts:  # an empty stream still makes an object (S3 needs one part, which may be empty)
            part, digest = send(1, b"")
            parts.append(part)
            part_digests.append(digest)
        if finish is not None:
            finish()
        done = s3.complete_multipart_upload(
            Bucket=location.bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}
        )
    except BaseException as exc:
        for future, _ in pending:
            future.cancel()
        pool.shutdown(wait=True)  # no part lands after the abort
        _abort(s3, location.bucket, key, upload_id)
        if isinstance(exc, Exception) and not isinstance(exc, SafedropError):
            raise describe(exc, uri, "uploading") from None
        raise
    pool.shutdown()
    stored = StoredObject(
        uri=uri,
        bytes=total,
        sha256=whole.hexdigest(),
        version_id=done.get("VersionId") if done.get("VersionId") not in (None, "", "null") else None,
        encryption=done.get("ServerSideEncryption"),
        kms_key_id=done.get("SSEKMSKeyId"),
    )
    try:
        _prove_stored(
            s3, location, name, stored, composite=_b64(hashlib.sha256(b"".join(part_digests)).digest())
        )
    except BaseException:
        delete(s3, location.bucket, key, stored.version_id)
        raise
    return stored


def _parts(stream: IO[bytes], part_bytes: int) -> Iterator[bytes]:
    """The stream in parts of ``part_bytes`` (the last one shorter), read in 1 MiB reads."""
    buffer = bytearray()
    while True:
        chunk = stream.read(min(READ_BYTES, part_bytes - len(buffer)) or READ_BYTES)
        if not chunk:
            break
        buffer += chunk
        if len(buffer) >= part_bytes:
            yield bytes(buffer)
            buffer.clear()
    if buffer:
        yield bytes(buffer)


def _abort(s3: Any, bucket: str, key: str, upload_id: str) -> None:
    try:
        s3.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
    except Exception:
        pass  # the store is gone: its lifecycle rule (README) removes the parts; no object was made


def delete(s3: Any, bucket: str, key: str, version_id: str | None = None) -> None:
    try:
        if version_id:
            s3.delete_object(Bucket=bucket, Key=key, VersionId=version_id)
        else:
            s3.delete_object(Bucket=bucket, Key=key)
    except Exception:
        pass


def remove(s3: Any, location: S3Location, name: str) -> None:
    """Delete ``location/name`` (a versioned bucket keeps it as a noncurrent version). Raises StoreError."""
    try:
        s3.delete_object(Bucket=location.bucket, Key=location.key(name))
    except Exception as exc:
        raise describe(exc, location.object_uri(name), "deleting") from None


def head(s3: Any, location: S3Location, name: str, version_id: str | None = None) -> dict[str, Any]:
    """The object's metadata (size, checksum when the store keeps one, version, encryption)."""
    kwargs = {"VersionId": version_id} if version_id else {}
    try:
        return s3.head_object(
            Bucket=location.bucket, Key=location.key(name), ChecksumMode="ENABLED", **kwargs
        )
    except Exception as exc:
        if _missing(exc):
            raise ObjectMissing(f"no object {location.object_uri(name)} in the store") from None
        raise describe(exc, location.object_uri(name), "reading") from None


def _prove_stored(s3: Any, location: S3Location, name: str, stored: StoredObject, *, composite: str) -> None:
    """After completion: the store holds our bytes — its size, and its checksum when it keeps one
    (else the object is read back and hashed)."""
    meta = head(s3, location, name, stored.version_id)
    if int(meta.get("ContentLength", -1)) != stored.bytes:
        raise StoreError(
            f"the store holds {meta.get('ContentLength')} bytes for {stored.uri}, {stored.bytes} were sent; "
            "the upload was removed"
        )
    theirs = str(meta.get("ChecksumSHA256") or "")
    if theirs:
        if theirs.split("-")[0] != composite:
            raise StoreError(
                f"the store's checksum of {stored.uri} is not the one sent; the upload was removed"
            )
        return
    digest = hashlib.sha256()
    for chunk in read(s3, location, name, stored.version_id):
        digest.update(chunk)
    if digest.hexdigest() != stored.sha256:
        raise StoreError(f"{stored.uri} read back is not what was sent; the upload was removed")


def read(s3: Any, location: S3Location, name: str, version_id: str | None = None) -> Iterator[bytes]:
    """The object's bytes, streamed in 1 MiB chunks."""
    kwargs = {"VersionId": version_id} if version_id else {}
    uri = location.object_uri(name)
    try:
        body = s3.get_object(Bucket=location.bucket, Key=location.key(name), **kwargs)["Body"]
    except Exception as exc:
        if _missing(exc):
            raise ObjectMissing(f"no object {uri} in the store") from None
        raise describe(exc, uri, "reading") from None
    try:
        while chunk := body.read(READ_BYTES):
            yield chunk
    except Exception as exc:
        raise describe(exc, uri, "reading") from None
    finally:
        body.close()


def put_bytes(
    s3: Any, location: S3Location, name: str, data: bytes, encryption: dict[str, str] | None = None
) -> None:
    """A small object in one request (a manifest), sent with its sha256."""
    try:
        s3.put_object(
            Bucket=location.bucket,
            Key=location.key(name),
            Body=data,
            ChecksumSHA256=_b64(hashlib.sha256(data).digest()),
            **(encryption or {}),
        )
    except Exception as exc:
        raise describe(exc, location.object_uri(name), "writing") from None


@dataclass(frozen=True)
class Listed:
    """An object under a location: its name relative to the location, size and when it was written."""

    name: str
    bytes: int
    modified: datetime


def list_objects(
    s3: Any, location: S3Location, *, suffix: str = "", recursive: bool = False
) -> Iterator[Listed]:
    """The objects under ``location`` whose name ends with ``suffix``: its direct children, or every
    object below it with ``recursive`` (a fleet's ``PREFIX/<database>/…``)."""
    prefix = location.key("")  # "PREFIX/", or "" at the bucket's root
    kwargs: dict[str, Any] = {"Bucket": location.bucket, "Prefix": prefix}
    if not recursive:
        kwargs["Delimiter"] = "/"
    try:
        for page in s3.get_paginator("list_objects_v2").paginate(**kwargs):
            for item in page.get("Contents", []):
                name = item["Key"][len(prefix) :]
                if name and name.endswith(suffix):
                    yield Listed(name, int(item["Size"]), item["LastModified"])
    except Exception as exc:
        raise describe(exc, location, "listing") from None


@dataclass(frozen=True)
class Unfinished:
    """A multipart upload the store holds no object for: its name under the location, id, start."""

    name: str
    upload_id: str
    initiated: datetime


def list_unfinished(s3: Any, location: S3Location) -> Iterator[Unfinished]:
    """Every multipart upload under ``location`` (at any depth) that was neither completed nor aborted —
    what a backup leaves when the store went away before it could abort (or one still running)."""
    prefix = location.key("")  # "PREFIX/", or "" at the bucket's root
    try:
        for page in s3.get_paginator("list_multipart_uploads").paginate(
            Bucket=location.bucket, Prefix=prefix
        ):
            for upload in page.get("Uploads", []):
                yield Unfinished(upload["Key"][len(prefix) :], upload["UploadId"], upload["Initiated"])
    except Exception as exc:
        raise describe(exc, location, "listing the unfinished uploads of") from None


def abort_unfinished(s3: Any, location: S3Location, name: str, upload_id: str) -> None:
    """Abort the unfinished upload ``upload_id`` of ``location/name``: the store frees its parts.
    Raises StoreError."""
    try:
        s3.abort_multipart_upload(Bucket=location.bucket, Key=location.key(name), UploadId=upload_id)
    except Exception as exc:
        raise describe(exc, location.object_uri(name), "aborting the unfinished upload of") from None


def get_bytes(s3: Any, location: S3Location, name: str) -> bytes:
    return b"".join(read(s3, location, name))
