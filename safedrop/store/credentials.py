"""Where the object store's credentials come from: boto3's standard chain, or a prefect-aws block.

By default every client takes boto3's standard chain (environment, shared profile, instance or pod
role; ``AWS_ENDPOINT_URL`` for S3-compatible stores). A deployment may instead name a prefect-aws
``AwsCredentials`` or ``MinIOCredentials`` block (``backup_credentials_block``): ``from_block(name)``
reads it once from the Prefect server (its block document: every Prefect server knows these two block
types, and prefect-aws need not be installed on the worker) and, for the rest of the run, every client
of this process is built from it — its keys (or profile, or assumed role), region and endpoint. Only
the block's *name* travels in parameters; the secret stays in the block and in this process's memory,
never in argv, a log line, an artifact, a manifest or the ledger.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from safedrop.errors import UsageError

BLOCK_TYPES = ("aws-credentials", "minio-credentials")  # prefect-aws's block types (every server knows them)
_current: _Block | None = None  # the block a run uses (a worker's flow-run process runs one flow)


@dataclass(frozen=True)
class _Block:
    """What a credentials block holds, read once; ``repr`` shows no value."""

    name: str = field(repr=True)
    data: dict[str, Any] = field(repr=False)

    def session(self) -> Any:
        import boto3

        data = self.data
        if "minio_root_user" in data:  # a MinIOCredentials block
            return boto3.session.Session(
                aws_access_key_id=data.get("minio_root_user"),
                aws_secret_access_key=data.get("minio_root_password"),
                region_name=data.get("region_name"),
            )
        session = boto3.session.Session(
            aws_access_key_id=data.get("aws_access_key_id"),
            aws_secret_access_key=data.get("aws_secret_access_key"),
            aws_session_token=data.get("aws_session_token"),
            profile_name=data.get("profile_name"),
            region_name=data.get("region_name"),
        )
        if not data.get("assume_role_arn"):
            return session
        kwargs = {k: v for k, v in (data.get("assume_role_kwargs") or {}).items() if v is not None}
        kwargs.setdefault("RoleSessionName", "safedrop-backup")
        assumed = session.client("sts").assume_role(RoleArn=data["assume_role_arn"], **kwargs)["Credentials"]
        return boto3.session.Session(
            aws_access_key_id=assumed["AccessKeyId"],
            aws_secret_access_key=assumed["SecretAccessKey"],
            aws_session_token=assumed["SessionToken"],
            region_name=data.get("region_name"),
        )

    def client_options(self) -> dict[str, Any]:
        """The block's AwsClientParameters that reach the S3 client (our own retry settings stay)."""
        given = self.data.get("aws_client_parameters") or {}
        options: dict[str, Any] = {}
        if given.get("endpoint_url"):
            options["endpoint_url"] = given["endpoint_url"]
        if given.get("use_ssl") is False:
            options["use_ssl"] = False
        if given.get("verify") is False:
            options["verify"] = False
        elif given.get("verify_cert_path"):
            options["verify"] = given["verify_cert_path"]
        return options


@contextmanager
def from_block(name: str | None) -> Iterator[None]:
    """Within the block, clients use the credentials block ``name`` (``TYPE/NAME`` or a bare NAME,
    looked up as an AWS Credentials block, then a MinIO Credentials block); no name: the standard
    chain. Raises UsageError (before anything else runs) when the block cannot be read."""
    global _current
    if not name or not name.strip():
        yield
        return
    previous, _current = _current, load(name.strip())
    try:
        yield
    finally:
        _current = previous


def load(name: str) -> _Block:
    """The credentials block called ``name`` (see ``from_block``), read from the Prefect server as a
    block document — prefect-aws itself need not be installed on the worker."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    kind, _, block = name.rpartition("/")
    if kind and kind not in BLOCK_TYPES:
        raise UsageError(
            f"backup_credentials_block {name!r}: the block type must be one of {', '.join(BLOCK_TYPES)}"
        )
    try:
        with get_client(sync_client=True) as client:
            for slug in [kind] if kind else BLOCK_TYPES:
                try:
                    document = client.read_block_document_by_name(
                        name=block, block_type_slug=slug, include_secrets=True
                    )
                except ObjectNotFound:
                    continue
                return _Block(f"{slug}/{block}", dict(document.data))
    except UsageError:
        raise
    except Exception as exc:  # the server unreachable, say: named by its type, never the block's data
        raise UsageError(
            f"backup_credentials_block {name!r} could not be read from the Prefect server "
            f"({type(exc).__name__}); check PREFECT_API_URL and that the server is up"
        ) from None
    raise UsageError(
        f"backup_credentials_block {name!r}: the Prefect server has no AWS Credentials or MinIO Credentials "
        "block of that name; create it (Blocks in the UI, or prefect block create aws-credentials) or leave "
        "the parameter empty for the standard AWS credential chain"
    )


def session_and_options() -> tuple[Any, dict[str, Any]]:
    """A boto3 session and the S3 client's extra arguments (endpoint, TLS) for the current source of
    credentials: the run's block, else boto3's standard chain."""
    import boto3

    if _current is None:
        return boto3.session.Session(), {}
    return _current.session(), _current.client_options()
