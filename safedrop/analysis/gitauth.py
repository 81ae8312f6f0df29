"""Credentials for private git repositories, and the environment git runs with.

A Prefect Secret block holds an HTTPS token (``TOKEN`` or ``USER:TOKEN``) or an SSH private key. git
never sees it in its argv: a token travels as an ``http.<url>.extraHeader`` set through
``GIT_CONFIG_*`` environment variables (sent to that scheme://host[:port] only), a key as a 0600 file
in the clone's temporary directory. Nothing else of the worker's environment is inherited but PATH,
HOME, proxies and CA bundles.
"""

from __future__ import annotations

import base64
import ipaddress
import os
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import SecretStr

from safedrop.errors import CodeSourceError
from safedrop.sources import SCHEMES

TOKEN_USER = "x-access-token"  # the user name sent with a bare token (GitHub's; GitLab, Gitea take any)


@dataclass(frozen=True)
class GitCredential:
    """What a Prefect Secret block holds for private repositories: an HTTPS token or an SSH key."""

    kind: Literal["token", "ssh-key"]
    secret: SecretStr
    block: str  # the Secret block's name, for messages
    username: str = TOKEN_USER

    @property
    def description(self) -> str:
        what = "HTTPS token" if self.kind == "token" else "SSH private key"
        return f"the {what} in Prefect Secret block {self.block!r}"

    def scrub(self, text: str) -> str:
        """``text`` with the secret (and its basic-auth encoding) replaced by ``***``."""
        value = self.secret.get_secret_value()
        for secret in (value, basic_auth(self.username, value)) if self.kind == "token" else (value,):
            if secret:
                text = text.replace(secret, "***")
        return text


def credential_from_secret(value: object, block: str) -> GitCredential:
    """Read a Secret block's value: ``TOKEN``, ``USER:TOKEN`` or an OpenSSH/PEM private key."""
    if not isinstance(value, str) or not value.strip():
        raise CodeSourceError(
            f"Prefect Secret block {block!r} (code_secret_block) holds no text; store an HTTPS token "
            "(or USER:TOKEN) or an SSH private key in it"
        )
    text = value.strip()
    if text.startswith("-----BEGIN") and "PRIVATE KEY-----" in text:
        return GitCredential("ssh-key", SecretStr(text + "\n"), block)
    if any(c.isspace() for c in text):
        raise CodeSourceError(
            f"Prefect Secret block {block!r} (code_secret_block) holds neither a token nor an SSH "
            "private key; store an HTTPS token (or USER:TOKEN) or a key beginning -----BEGIN"
        )
    user, sep, token = text.partition(":")
    if sep and user and token:
        return GitCredential("token", SecretStr(token), block, username=user)
    return GitCredential("token", SecretStr(text), block)


def basic_auth(user: str, token: str) -> str:
    return base64.b64encode(f"{user}:{token}".encode()).decode("ascii")


def is_loopback(host: str | None) -> bool:
    if host is None or host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


# Passed through from our environment: proxies and CA bundles the network may need.
_PASSTHROUGH = (
    "http_proxy",
    "https_proxy",
    "no_proxy",
    "all_proxy",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "ALL_PROXY",
    "GIT_SSL_CAINFO",
    "GIT_SSL_CAPATH",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "CURL_CA_BUNDLE",
)


def git_environment(url: str, credential: GitCredential | None, work: Path) -> dict[str, str]:
    """The whole environment git runs with: nothing inherited but PATH, HOME, proxies and CA bundles."""
    env = {k: os.environ[k] for k in _PASSTHROUGH if k in os.environ}
    env.update(
        PATH=os.environ.get("PATH", os.defpath),
        HOME=os.environ.get("HOME") or str(Path.home()),  # ssh reads ~/.ssh/known_hosts and config
        LC_ALL="C",  # messages in English: they are read below
        GIT_TERMINAL_PROMPT="0",  # never ask for a user name or password
        GIT_CONFIG_NOSYSTEM="1",  # no credential helper or url rewrite from the machine's config
        GIT_CONFIG_GLOBAL=os.devnull,
        GIT_ALLOW_PROTOCOL=":".join(SCHEMES),
    )
    config = [("advice.detachedHead", "false"), ("init.defaultBranch", "main"), ("credential.helper", "")]
    ssh = ["ssh", "-o", "BatchMode=yes"]  # no passphrase, password or host-key prompt
    if credential is not None and credential.kind == "token":
        parts = urlsplit(url)
        prefix = f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"
        header = (
            f"Authorization: Basic {basic_auth(credential.username, credential.secret.get_secret_value())}"
        )
        config.append((f"http.{prefix}/.extraHeader", header))  # sent to this scheme://host[:port] only
    elif credential is not None and credential.kind == "ssh-key":
        keydir = work / "ssh"
        keydir.mkdir(mode=0o700)
        key = keydir / "id"
        fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(credential.secret.get_secret_value())
        ssh += ["-i", str(key), "-o", "IdentitiesOnly=yes"]
    elif "SSH_AUTH_SOCK" in os.environ:
        env["SSH_AUTH_SOCK"] = os.environ["SSH_AUTH_SOCK"]  # no key given: the worker's agent may hold one
    env["GIT_SSH_COMMAND"] = shlex.join(ssh)
    env["GIT_CONFIG_COUNT"] = str(len(config))
    for i, (key_name, value) in enumerate(config):
        env[f"GIT_CONFIG_KEY_{i}"] = key_name
        env[f"GIT_CONFIG_VALUE_{i}"] = value
    return env
