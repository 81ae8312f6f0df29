"""Code sources that are git repositories: ``URL#REF`` fetched shallow into a temporary directory.

A worker on another machine has no checkout of the application, so a code path may be a git URL —
``https://``, ``http://``, ``ssh://``, scp-like ``git@host:org/repo.git`` or ``file://`` — with an
optional ``#REF`` (a branch, a tag or a commit sha). ``checkout()`` fetches exactly that one commit
(``--depth 1``; a commit the server will not hand out by sha falls back to fetching every branch and
tag), yields its path and sha, and removes the directory afterwards, on failure and interrupt too.

git runs with a timeout, a minimal environment (no system or global git config, no credential
helper, no terminal or askpass prompt, ssh in batch mode), and never sees a secret in its argv:
an HTTPS token travels as an ``http.<url>.extraHeader`` set through ``GIT_CONFIG_*`` environment
variables, an SSH private key as a 0600 file in the temporary directory. Credentials never come from
the URL itself: a URL that carries them is refused, because a Prefect parameter is stored in plain text.

Every failure is one secret-free line, raised as ``CodeSourceError``.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from safedrop.analysis.gitauth import GitCredential, git_environment, is_loopback
from safedrop.errors import CodeSourceError
from safedrop.pg.processes import die_with_parent
from safedrop.sources import GitSource

TIMEOUT_ENV = "SAFEDROP_GIT_TIMEOUT_S"
DEFAULT_TIMEOUT_S = 300.0  # the whole fetch of one source, retries included
RETRY_DELAYS_S = (2.0, 5.0)  # transient network failures only

_HEX = re.compile(r"^[0-9a-fA-F]{4,64}$")

# stderr of git (LC_ALL=C) that a second attempt may get past
_TRANSIENT = (
    "connection timed out",
    "operation timed out",
    "connection reset",
    "temporary failure in name resolution",
    "early eof",
    "rpc failed",
    "the remote end hung up unexpectedly",
    "returned error: 500",
    "returned error: 502",
    "returned error: 503",
    "returned error: 504",
    "gnutls_handshake() failed",
    "ssl_read",
    "failed to connect",
    "connection refused",
)
_NOT_FOUND = ("does not appear to be a git repository", "repository not found", "returned error: 404")
_AUTH = (
    "could not read username",
    "could not read password",
    "authentication failed",
    "returned error: 401",
    "returned error: 403",
    "permission denied (publickey",
    "permission denied, please try again",
    "access denied",
)
_NO_SUCH_REF = ("couldn't find remote ref", "not our ref", "unadvertised object", "no such remote ref")


# --------------------------------------------------------------------------------------------------
# the source spec


class _Timeout(Exception):
    pass


def _git(git: str, args: Sequence[str], env: dict[str, str], deadline: float) -> tuple[int, str, str]:
    """Run git; (returncode, stdout, stderr). The process group is killed on timeout or interrupt."""
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise _Timeout
    proc = subprocess.Popen(
        [git, *args],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,  # its own process group: ssh and git-remote-http go with it
        preexec_fn=die_with_parent,
    )
    try:
        out, err = proc.communicate(timeout=remaining)
    except BaseException as exc:  # timeout, KeyboardInterrupt, Prefect's termination signal
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.communicate()
        if isinstance(exc, subprocess.TimeoutExpired):
            raise _Timeout from None
        raise
    return proc.returncode, out.decode("utf-8", "replace"), err.decode("utf-8", "replace")


def _first_line(stderr: str) -> str:
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    fatal = [line for line in lines if line.startswith(("fatal:", "error:"))]
    line = (fatal or lines or ["git failed without a message"])[0]
    return re.sub(r"^(fatal|error):\s*", "", line)


def _failure(source: GitSource, stderr: str, credential: GitCredential | None) -> CodeSourceError:
    """One instructive, secret-free line for a failed fetch."""
    where = f"cannot fetch the code at {source.safe_url}"
    text = stderr.lower()
    host = source.host or "the server"
    if any(s in text for s in _NO_SUCH_REF):
        if source.ref is None:
            return CodeSourceError(
                f"{where}: the repository has no default branch (its HEAD names no branch); "
                f"name a branch, tag or commit: {source.safe_url}#REF"
            )
        return CodeSourceError(
            f"{where}: no branch, tag or commit {source.ref!r} in the repository; "
            "fix the #REF of --code-path (code_paths)"
        )
    if "load key" in text or "invalid format" in text:
        return CodeSourceError(
            f"{where}: {credential.description if credential else 'the SSH key'} does not load "
            "(passphrase-protected or malformed); store an unencrypted deploy key"
        )
    if "host key verification failed" in text:
        return CodeSourceError(
            f"{where}: the SSH host key of {host} is not known on this machine; add it to the "
            f"known_hosts of the user running the flow (ssh-keyscan {host}, after checking its fingerprint)"
        )
    if any(s in text for s in _NOT_FOUND):
        hint = (
            ""
            if not source.needs_network
            else f", or {credential.description} may not read it"
            if credential
            else "; a private repository also needs --code-secret-block NAME (code_secret_block)"
        )
        return CodeSourceError(
            f"{where}: no such repository; check the URL in --code-path (code_paths){hint}"
        )
    if any(s in text for s in _AUTH):
        if credential:
            return CodeSourceError(
                f"{where}: the server refused {credential.description}; check that it is valid and "
                "may read the repository"
            )
        return CodeSourceError(
            f"{where}: the server asks for credentials; store an HTTPS token or an SSH private key in a "
            "Prefect Secret block and pass --code-secret-block NAME (code_secret_block)"
        )
    if "certificate" in text and ("verif" in text or "problem" in text):
        return CodeSourceError(
            f"{where}: the server's TLS certificate is not trusted on this machine; install its CA, or "
            "point GIT_SSL_CAINFO at a CA bundle that holds it"
        )
    if "could not resolve host" in text or "could not resolve hostname" in text:
        return CodeSourceError(f"{where}: host {host} not found; check the URL in --code-path (code_paths)")
    line = _first_line(stderr)
    if credential:
        line = credential.scrub(line)
    return CodeSourceError(f"{where}: {line}")


@dataclass(frozen=True)
class Checkout:
    """A fetched source: the directory holding its files, and the commit they are."""

    source: GitSource
    path: Path
    commit: str
    duration_s: float


def _timeout_s() -> float:
    try:
        return float(os.environ.get(TIMEOUT_ENV, "") or DEFAULT_TIMEOUT_S)
    except ValueError:
        return DEFAULT_TIMEOUT_S


@contextmanager
def checkout(
    source: GitSource, *, credential: GitCredential | None = None, timeout_s: float | None = None
) -> Iterator[Checkout]:
    """Fetch ``source`` (one commit, shallow) into a new temporary directory and yield it.

    The directory (``safedrop-git-*`` under the system temp dir) is removed when the block ends,
    however it ends. Raises CodeSourceError with one secret-free line when the fetch fails.
    """
    timeout = timeout_s or _timeout_s()
    credential = _fitting(source, credential)
    git = shutil.which("git")
    if git is None:
        raise CodeSourceError(
            f"cannot fetch the code at {source.safe_url}: git is not installed on this machine (not on "
            "PATH); install git, or pass a local checkout as --code-path"
        )
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="safedrop-git-"))
    try:
        fetch = _Fetch(
            git, source, credential, git_environment(source.url, credential, work), started + timeout
        )
        try:
            commit = fetch.into(work / "repo")
        except _Timeout:
            raise CodeSourceError(
                f"cannot fetch the code at {source.safe_url}: git took longer than {timeout:g} s; check "
                f"the network, raise {TIMEOUT_ENV}, or pass a local checkout as --code-path"
            ) from None
        except OSError as exc:
            raise CodeSourceError(
                f"cannot fetch the code at {source.safe_url}: cannot run git ({exc.strerror or exc}); "
                "install git, or pass a local checkout as --code-path"
            ) from None
        yield Checkout(source, work / "repo", commit, round(time.monotonic() - started, 2))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _fitting(source: GitSource, credential: GitCredential | None) -> GitCredential | None:
    """The credential, if the source should get it: a token for https, a key for ssh, none for file://."""
    if credential is None or not source.needs_network:
        return None  # a local repository needs none
    wants = "ssh-key" if source.scheme == "ssh" else "token"
    if credential.kind != wants:
        other = "an https:// URL" if credential.kind == "token" else "an ssh:// or git@host: URL"
        raise CodeSourceError(
            f"cannot fetch the code at {source.safe_url}: {credential.description} does not fit an "
            f"{source.scheme} URL; give the repository as {other}, or store the other kind of credential"
        )
    if source.scheme == "http" and not is_loopback(source.host):
        raise CodeSourceError(
            f"cannot fetch the code at {source.safe_url}: will not send {credential.description} over "
            "plain http; use the https:// URL"
        )
    return credential


class _Fetch:
    """The git commands of one shallow fetch, all within one deadline."""

    def __init__(
        self,
        git: str,
        source: GitSource,
        credential: GitCredential | None,
        env: dict[str, str],
        deadline: float,
    ) -> None:
        self.git, self.source, self.credential, self.env, self.deadline = (
            git,
            source,
            credential,
            env,
            deadline,
        )

    def run(self, *args: str) -> tuple[int, str, str]:
        return _git(self.git, args, self.env, self.deadline)

    def network(self, *args: str) -> tuple[int, str]:
        """A fetch, retried (bounded) when the failure looks like the network's."""
        for delay in (*RETRY_DELAYS_S, None):
            code, _, err = self.run(*args)
            if code == 0 or delay is None or not any(s in err.lower() for s in _TRANSIENT):
                return code, err
            if time.monotonic() + delay >= self.deadline:
                return code, err
            time.sleep(delay)
        raise AssertionError("unreachable")

    def ok(self, *args: str) -> str:
        """Run git; its stdout, or CodeSourceError from its stderr."""
        code, out, err = self.run(*args)
        if code != 0:
            raise _failure(self.source, err, self.credential)
        return out

    def into(self, repo: Path) -> str:
        """``git init`` + a shallow fetch of the ref + a detached checkout; the commit's sha."""
        source, at = self.source, ("-C", str(repo))
        self.ok("init", "--quiet", "--template=", str(repo))
        code, err = self.network(
            *at, "fetch", "--quiet", "--depth", "1", "--no-tags", "--", source.url, source.ref or "HEAD"
        )
        if code == 0:
            commit = self.ok(*at, "rev-parse", "--verify", "FETCH_HEAD^{commit}").strip()
        elif source.ref and _HEX.match(source.ref) and any(s in err.lower() for s in _NO_SUCH_REF):
            commit = self.by_sha(repo)
        else:
            raise _failure(source, err, self.credential)
        self.ok(*at, "checkout", "--quiet", "--detach", commit)
        return commit

    def by_sha(self, repo: Path) -> str:
        """A commit sha the server will not hand out by itself (an abbreviated sha, or a server without
        allowAnySHA1InWant): fetch every branch and tag, then look for it."""
        source, at = self.source, ("-C", str(repo))
        heads, tags = "+refs/heads/*:refs/remotes/origin/*", "+refs/tags/*:refs/tags/*"
        code, err = self.network(*at, "fetch", "--quiet", "--no-tags", "--", source.url, heads, tags)
        if code != 0:
            raise _failure(source, err, self.credential)
        found, sha, _ = self.run(*at, "rev-parse", "--verify", "--quiet", f"{source.ref}^{{commit}}")
        if found != 0:
            raise _failure(source, "couldn't find remote ref", self.credential)
        return sha.strip()
