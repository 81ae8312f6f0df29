"""Where backups go: a local directory or an S3 bucket and prefix, read from one string.

``--backup-dir``, the ``backup_dir`` parameter and ``$SAFEDROP_BACKUP_DIR`` take either a path or
``s3://BUCKET/PREFIX``; this module tells them apart and refuses a malformed URI in one line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import PurePosixPath

from safedrop.errors import UsageError

# S3's bucket naming rules (the general-purpose ones): 3-63 characters, lower case, digits, dots, hyphens
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
SCHEME = "s3://"


@dataclass(frozen=True)
class S3Location:
    """A bucket and a key prefix (no leading or trailing slash; may be empty)."""

    bucket: str
    prefix: str = ""

    @property
    def uri(self) -> str:
        return f"{SCHEME}{self.bucket}/{self.prefix}" if self.prefix else f"{SCHEME}{self.bucket}"

    def key(self, name: str) -> str:
        """The key of ``name`` under the prefix."""
        return f"{self.prefix}/{name}" if self.prefix else name

    def child(self, name: str) -> S3Location:
        """The location one level down (a fleet's ``PREFIX/<database>``)."""
        return S3Location(self.bucket, self.key(name))

    def object_uri(self, name: str) -> str:
        return f"{SCHEME}{self.bucket}/{self.key(name)}"

    def __str__(self) -> str:
        return self.uri


def is_s3(value: str | None) -> bool:
    return bool(value) and str(value).strip().lower().startswith(SCHEME)


def parse_s3(value: str, what: str = "--backup-dir") -> S3Location:
    """``s3://BUCKET[/PREFIX]`` as a location; a UsageError naming ``what`` when it is not one."""
    text = value.strip()
    if not text.lower().startswith(SCHEME):
        raise UsageError(f"{what} {value!r} is not an s3:// URI (s3://BUCKET/PREFIX)")
    rest = text[len(SCHEME) :]
    bucket, _, prefix = rest.partition("/")
    if not _BUCKET.fullmatch(bucket) or ".." in bucket:
        raise UsageError(
            f"{what} {value!r} names no valid bucket: expected s3://BUCKET/PREFIX, the bucket 3-63 "
            "lower-case letters, digits, dots or hyphens"
        )
    if "?" in prefix or "#" in prefix or "@" in bucket:
        raise UsageError(f"{what} {value!r}: a bucket URI takes no query, fragment or credentials")
    parts = [p for p in prefix.split("/") if p]
    if any(p in (".", "..") for p in parts):
        raise UsageError(f"{what} {value!r}: the prefix may not hold '.' or '..'")
    return S3Location(bucket, str(PurePosixPath(*parts)) if parts else "")


def parse_object_uri(value: str, what: str = "--backup") -> tuple[S3Location, str]:
    """``s3://BUCKET/PREFIX/NAME`` as (its location, NAME); a UsageError when it names no object."""
    location = parse_s3(value, what)
    if not location.prefix:
        raise UsageError(f"{what} {value!r} names a bucket, not a backup (s3://BUCKET/PREFIX/NAME.dump)")
    head, _, name = location.prefix.rpartition("/")
    return S3Location(location.bucket, head), name
