"""A code source as the operator writes it: a local path, or a git ``URL[#REF]``, parsed and checked.

``is_git_source`` tells a git URL (``scheme://``, ``transport::`` or scp-like ``user@host:path``) from a
path; ``parse_git_source`` reads ``URL[#REF]`` into a ``GitSource`` — refusing, in one secret-free line,
an unsupported scheme, a URL that carries a password or token (a Prefect parameter is stored in plain
text), and a ``#REF`` that is no branch, tag or commit name. Nothing is fetched here:
``safedrop.analysis.gitsource`` does that.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit

from safedrop.errors import UsageError

SCHEMES = ("file", "http", "https", "ssh")  # the transports git may use for a code source
_URL = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://")
_TRANSPORT = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*::")  # git's <transport>::<address>, e.g. ext::
# scp-like: user@host:path, no slash before the colon (git's own rule); the user part may hold a
# password by mistake, so it is matched loosely here and refused below
_SCP = re.compile(r"^(?P<user>[^@/\s]+)@(?P<host>\[[^\]/]+\]|[^:/\s]+):(?P<path>.+)$")
_REF = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_./@+-]*$")
_HEX = re.compile(r"^[0-9a-fA-F]{4,64}$")

# stderr of git (LC_ALL=C) that a second attempt may get past


@dataclass(frozen=True)
class GitSource:
    """One ``URL[#REF]`` code path. ``url`` is as given (it may name an SSH user, never a password)."""

    url: str
    ref: str | None
    scheme: Literal["file", "http", "https", "ssh"]
    host: str | None  # None for file://
    safe_url: str  # the URL without any user info: what reports and logs show

    @property
    def display(self) -> str:
        """How references and reports name the source: the URL without user info, and the #REF."""
        return f"{self.safe_url}#{self.ref}" if self.ref else self.safe_url

    @property
    def needs_network(self) -> bool:
        return self.scheme != "file"


def is_git_source(text: str) -> bool:
    """Whether a code path is meant as a git URL (``scheme://``, ``transport::``, or ``user@host:path``)."""
    text = text.strip()
    return bool(_URL.match(text) or _TRANSPORT.match(text) or _SCP.match(text))


def _refuse_credentials(safe: str) -> UsageError:
    return UsageError(
        f"code path {safe} carries credentials in its URL, and Prefect stores parameters in plain text; "
        "put the token or key in a Prefect Secret block and pass --code-secret-block NAME "
        "(code_secret_block) with the URL alone"
    )


def parse_git_source(text: str) -> GitSource:
    """Parse ``URL[#REF]``. Refuses (UsageError, secret-free) an unsupported scheme, a URL carrying a
    password or token, and a #REF that is no branch, tag or commit name."""
    text = text.strip()
    url, _, ref = text.partition("#")
    scp = _SCP.match(url) if not _URL.match(url) else None
    if scp:
        user, host = scp.group("user"), scp.group("host")
        safe = f"{host}:{scp.group('path')}"
        if ":" in user:  # user:password@host:path
            raise _refuse_credentials(safe)
        scheme: str = "ssh"
    else:
        match = _URL.match(url)
        if not match:
            transport = url.split("::", 1)[0] if _TRANSPORT.match(url) else url
            raise UsageError(
                f"code path {transport}::… is not a supported git URL; use https://, ssh://, "
                "git@host:org/repo.git or file://"
            )
        scheme = match.group("scheme").lower()
        if scheme not in SCHEMES:
            raise UsageError(
                f"code path {scheme}://… is not a supported git URL; use https://, ssh://, "
                "git@host:org/repo.git or file://"
            )
        try:
            parts = urlsplit(url)
            parts.port  # noqa: B018 - raises ValueError for a bad port
        except ValueError:
            raise UsageError(f"code path {scheme}://… is not a valid URL") from None
        netloc = parts.netloc.rpartition("@")[2]
        safe = f"{scheme}://{netloc}{parts.path}"
        has_userinfo = "@" in parts.netloc
        # over http(s) a user name alone can be the token (https://TOKEN@github.com/…); over ssh it is
        # the account (ssh://git@host/…) and only a password is a secret
        if has_userinfo and (scheme != "ssh" or parts.password is not None):
            raise _refuse_credentials(safe)
        if parts.query:
            raise UsageError(f"code path {safe}?… has a query string; pass the repository URL alone")
        host = parts.hostname
        if scheme != "file" and not host:
            raise UsageError(f"code path {safe} names no host")
        if scheme == "file" and not parts.path:
            raise UsageError(f"code path {safe} names no repository path")
    if "#" in text and not ref:
        raise UsageError(f"code path {safe}# has an empty #REF; name a branch, tag or commit, or drop the #")
    if ref and (not _REF.match(ref) or ".." in ref or ref.endswith((".", "/", ".lock"))):
        raise UsageError(
            f"#REF {ref!r} of code path {safe} is not a branch, tag or commit name; "
            "use e.g. #main, #v1.4.0 or a commit sha"
        )
    return GitSource(url=url, ref=ref or None, scheme=scheme, host=host, safe_url=safe)  # type: ignore[arg-type]
