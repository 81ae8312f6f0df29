"""Code sources that are git repositories, against real git: bare repositories over ``file://``, and
git's own smart-HTTP backend over ``http://`` and ``https://`` behind basic auth.

Covers parsing ``URL#REF`` (and refusing credentials in it), the shallow fetch of a branch, a tag,
a commit sha and an abbreviated sha, every failure as one secret-free line, the temporary clone
removed however the scan ends, the minimal environment git runs in, and the scan of a fetched source.
"""

from __future__ import annotations

import base64
import os
import socket
import stat
import subprocess
import time
from pathlib import Path

import pytest

from safedrop.analysis import gitsource
from safedrop.analysis.codescan import NO_SOURCE_REASON, SKIPPED_BY_POLICY, SKIPPED_WARNING, scan_code
from safedrop.analysis.gitauth import GitCredential, credential_from_secret, git_environment
from safedrop.analysis.gitsource import checkout
from safedrop.errors import CodeSourceError, UsageError
from safedrop.migration import TableName
from safedrop.sources import is_git_source, parse_git_source
from tests.gitrepos import (
    CLEAN_FILES,
    MAIN_FILES,
    MAIN_FOUND,
    TAG_FILES,
    TAG_FOUND,
    AppRepo,
    GitHttpServer,
    cmdlines,
    git,
    leftovers,
    make_app_repo,
    private_tempdir,
    self_signed_cert,
)

TARGETS = [TableName("public", "credit_allocation_transactions"), TableName("public", "credit_allocations")]
TOKEN = "ghp_Recognisable0Token0Qx7"


@pytest.fixture
def temp_root(tmp_path, monkeypatch) -> Path:
    return private_tempdir(monkeypatch, tmp_path)


@pytest.fixture
def repo(tmp_path) -> AppRepo:
    (tmp_path / "remote").mkdir()
    return make_app_repo(tmp_path / "remote")


def files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and ".git" not in p.parts}


def found(result) -> set[tuple[str, int, str]]:
    return {(r.path, r.line, r.identifier) for r in result.references}


def token(value: str = TOKEN, block: str = "app-repo-token") -> GitCredential:
    return credential_from_secret(value, block)


# --------------------------------------------------------------------------------------------------
# the source spec


@pytest.mark.parametrize(
    ("spec", "display", "ref", "scheme"),
    [
        ("https://github.com/acme/billing.git", "https://github.com/acme/billing.git", None, "https"),
        (
            "https://github.com/acme/billing.git#release/2024.06",
            "https://github.com/acme/billing.git#release/2024.06",
            "release/2024.06",
            "https",
        ),
        (
            "ssh://git@gitlab.example.com:2222/acme/billing.git#v1.4.0",
            "ssh://gitlab.example.com:2222/acme/billing.git#v1.4.0",
            "v1.4.0",
            "ssh",
        ),
        ("git@github.com:acme/billing.git#main", "github.com:acme/billing.git#main", "main", "ssh"),
        ("file:///srv/git/billing.git#0123abcd", "file:///srv/git/billing.git#0123abcd", "0123abcd", "file"),
    ],
)
def test_a_source_spec_is_a_url_and_an_optional_ref(spec, display, ref, scheme):
    assert is_git_source(spec)
    source = parse_git_source(spec)
    assert (source.display, source.ref, source.scheme) == (display, ref, scheme)


@pytest.mark.parametrize("path", ["../backend", "/srv/app", "src", "./odd@name:dir", "C:code"])
def test_local_paths_are_not_git_sources(path):
    assert not is_git_source(path)


REFUSED_CREDENTIALS = (
    "carries credentials in its URL, and Prefect stores parameters in plain text; put the token or key "
    "in a Prefect Secret block and pass --code-secret-block NAME (code_secret_block) with the URL alone"
)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            f"https://ci:{TOKEN}@github.com/acme/billing.git#main",
            f"code path https://github.com/acme/billing.git {REFUSED_CREDENTIALS}",
        ),
        (  # a token alone in the user name is how GitHub takes it: a secret too
            f"https://{TOKEN}@github.com/acme/billing.git",
            f"code path https://github.com/acme/billing.git {REFUSED_CREDENTIALS}",
        ),
        (
            f"ssh://git:{TOKEN}@github.com/acme/billing.git",
            f"code path ssh://github.com/acme/billing.git {REFUSED_CREDENTIALS}",
        ),
        (
            f"git:{TOKEN}@github.com:acme/billing.git",
            f"code path github.com:acme/billing.git {REFUSED_CREDENTIALS}",
        ),
        (
            "git://github.com/acme/billing.git",
            "code path git://… is not a supported git URL; use https://, ssh://, git@host:org/repo.git or file://",
        ),
        (
            "ext::sh -c touch% /tmp/pwned",
            "code path ext::… is not a supported git URL; use https://, ssh://, git@host:org/repo.git or file://",
        ),
        (
            "https://github.com/acme/billing.git#",
            "code path https://github.com/acme/billing.git# has an empty #REF; name a branch, tag or commit, "
            "or drop the #",
        ),
        (
            "https://github.com/acme/billing.git#--upload-pack=touch",
            "#REF '--upload-pack=touch' of code path https://github.com/acme/billing.git is not a branch, tag "
            "or commit name; use e.g. #main, #v1.4.0 or a commit sha",
        ),
    ],
)
def test_bad_source_specs_are_refused_in_one_secret_free_line(spec, message):
    with pytest.raises(UsageError) as exc:
        parse_git_source(spec)
    assert str(exc.value) == message
    assert TOKEN not in str(exc.value)


# --------------------------------------------------------------------------------------------------
# fetching


@pytest.mark.parametrize(
    ("ref", "commit", "content"),
    [
        (None, "main", MAIN_FILES),
        ("main", "main", MAIN_FILES),
        ("cleanup", "cleanup", CLEAN_FILES),
        ("v1.0", "tag", TAG_FILES),
        ("sha", "tag", TAG_FILES),
        ("short-sha", "tag", TAG_FILES),  # not fetchable by itself: falls back to fetching every branch
    ],
)
def test_each_ref_checks_out_its_own_commit(repo, temp_root, ref, commit, content):
    expected = getattr(repo, commit)
    ref = {"sha": repo.tag, "short-sha": repo.tag[:10]}.get(ref, ref)
    source = parse_git_source(f"{repo.url}#{ref}" if ref else repo.url)

    with checkout(source) as fetched:
        assert fetched.commit == expected
        assert files(fetched.path) == set(content)
        assert git("rev-parse", "HEAD", cwd=fetched.path) == expected
        if ref != repo.tag[:10]:
            assert git("rev-list", "--count", "HEAD", cwd=fetched.path) == "1"  # shallow: one commit
        where = fetched.path

    assert not where.exists()
    assert leftovers(temp_root) == []


def test_an_unknown_ref_is_one_line_and_leaves_nothing(repo, temp_root):
    for ref in ("no-such-branch", "0123456789abcdef"):
        with pytest.raises(CodeSourceError) as exc:
            with checkout(parse_git_source(f"{repo.url}#{ref}")):
                pass
        assert str(exc.value) == (
            f"cannot fetch the code at {repo.url}: no branch, tag or commit {ref!r} in the repository; "
            "fix the #REF of --code-path (code_paths)"
        )
        assert exc.value.exit_code == 3 and exc.value.status == "stopped"
    assert leftovers(temp_root) == []


def test_a_missing_repository_is_one_line_and_leaves_nothing(tmp_path, temp_root):
    url = (tmp_path / "nowhere.git").as_uri()
    with pytest.raises(CodeSourceError) as exc:
        with checkout(parse_git_source(url)):
            pass
    assert str(exc.value) == (
        f"cannot fetch the code at {url}: no such repository; check the URL in --code-path (code_paths)"
    )
    assert leftovers(temp_root) == []


def test_a_repository_without_a_default_branch_asks_for_a_ref(repo, temp_root):
    git("symbolic-ref", "HEAD", "refs/heads/trunk", cwd=repo.bare)  # HEAD names a branch that is not there
    with pytest.raises(CodeSourceError) as exc:
        with checkout(parse_git_source(repo.url)):
            pass
    assert str(exc.value) == (
        f"cannot fetch the code at {repo.url}: the repository has no default branch (its HEAD names no "
        f"branch); name a branch, tag or commit: {repo.url}#REF"
    )


def test_missing_git_is_one_line(repo, temp_root, tmp_path, monkeypatch):
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    with pytest.raises(CodeSourceError) as exc:
        with checkout(parse_git_source(repo.url)):
            pass
    assert str(exc.value) == (
        f"cannot fetch the code at {repo.url}: git is not installed on this machine (not on PATH); "
        "install git, or pass a local checkout as --code-path"
    )
    assert leftovers(temp_root) == []


@pytest.mark.parametrize("how", ["exception", "interrupt"])
def test_the_clone_is_removed_however_the_block_ends(repo, temp_root, how):
    error = RuntimeError("scan failed") if how == "exception" else KeyboardInterrupt()
    seen = []
    with pytest.raises(type(error)):
        with checkout(parse_git_source(repo.url)) as fetched:
            seen.append(fetched.path)
            assert fetched.path.is_dir()
            raise error
    assert seen and not seen[0].exists()
    assert leftovers(temp_root) == []


def test_a_server_that_never_answers_times_out_and_git_is_gone(temp_root):
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # accepts connections (the kernel does), never answers a byte
    port = silent.getsockname()[1]
    url = f"http://127.0.0.1:{port}/app.git"
    try:
        started = time.monotonic()
        with pytest.raises(CodeSourceError) as exc:
            with checkout(parse_git_source(url), timeout_s=2):
                pass
        took = time.monotonic() - started
    finally:
        silent.close()
    assert str(exc.value) == (
        f"cannot fetch the code at {url}: git took longer than 2 s; check the network, raise "
        "SAFEDROP_GIT_TIMEOUT_S, or pass a local checkout as --code-path"
    )
    assert took < 10
    assert not [c for c in cmdlines().values() if f"127.0.0.1:{port}" in c]  # its process group was killed
    assert leftovers(temp_root) == []


def test_git_runs_in_a_minimal_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("GIT_DIR", "/somewhere/else")  # inherited, it would point git at another repo
    monkeypatch.setenv("GIT_ASKPASS", "/usr/bin/some-askpass")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-for-git")
    source = parse_git_source("https://git.example.com:8443/acme/billing.git#main")

    env = git_environment(source.url, token("ci-bot:" + TOKEN), tmp_path)

    assert not {"GIT_DIR", "GIT_ASKPASS", "AWS_SECRET_ACCESS_KEY"} & set(env)
    assert env["GIT_TERMINAL_PROMPT"] == "0" and env["GIT_CONFIG_NOSYSTEM"] == "1"
    assert env["GIT_CONFIG_GLOBAL"] == os.devnull
    assert env["GIT_SSH_COMMAND"] == "ssh -o BatchMode=yes"
    config = {
        env[f"GIT_CONFIG_KEY_{i}"]: env[f"GIT_CONFIG_VALUE_{i}"] for i in range(int(env["GIT_CONFIG_COUNT"]))
    }
    header = config.pop("http.https://git.example.com:8443/.extraHeader")  # this host only
    assert header == "Authorization: Basic " + base64.b64encode(f"ci-bot:{TOKEN}".encode()).decode()
    assert config["credential.helper"] == ""
    assert TOKEN not in " ".join(f"{k}={v}" for k, v in env.items() if not k.startswith("GIT_CONFIG_VALUE"))


def test_a_token_is_never_sent_over_plain_http_to_another_machine(temp_root):
    url = "http://git.example.com/acme/billing.git"
    with pytest.raises(CodeSourceError) as exc:
        with checkout(parse_git_source(url), credential=token()):
            pass
    assert str(exc.value) == (
        f"cannot fetch the code at {url}: will not send the HTTPS token in Prefect Secret block "
        "'app-repo-token' over plain http; use the https:// URL"
    )


def test_a_credential_of_the_wrong_kind_is_named(temp_root):
    with pytest.raises(CodeSourceError) as exc:
        with checkout(parse_git_source("git@github.com:acme/billing.git"), credential=token()):
            pass
    assert str(exc.value) == (
        "cannot fetch the code at github.com:acme/billing.git: the HTTPS token in Prefect Secret block "
        "'app-repo-token' does not fit an ssh URL; give the repository as an https:// URL, or store the "
        "other kind of credential"
    )


@pytest.mark.parametrize(
    ("value", "kind", "username"),
    [
        (TOKEN, "token", "x-access-token"),
        (f"  {TOKEN}\n", "token", "x-access-token"),
        (f"oauth2:{TOKEN}", "token", "oauth2"),
        ("-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA\n-----END OPENSSH PRIVATE KEY-----", "ssh-key", None),
    ],
)
def test_a_secret_block_holds_a_token_or_a_key(value, kind, username):
    credential = credential_from_secret(value, "blk")
    assert credential.kind == kind
    if username:
        assert credential.username == username and credential.secret.get_secret_value() == TOKEN
    assert TOKEN not in repr(credential)


def test_a_secret_block_holding_something_else_is_one_line():
    with pytest.raises(CodeSourceError) as exc:
        credential_from_secret(f"my token is {TOKEN}", "blk")
    assert str(exc.value) == (
        "Prefect Secret block 'blk' (code_secret_block) holds neither a token nor an SSH private key; "
        "store an HTTPS token (or USER:TOKEN) or a key beginning -----BEGIN"
    )


# --------------------------------------------------------------------------------------------------
# HTTPS token auth against git's own smart-HTTP backend


@pytest.fixture
def http_server(repo):
    with GitHttpServer(repo.bare.parent, "x-access-token", TOKEN) as server:
        yield server


def test_a_token_from_the_secret_block_opens_a_private_repository(repo, http_server, temp_root):
    url = http_server.url()
    with checkout(parse_git_source(f"{url}#v1.0"), credential=token()) as fetched:
        assert fetched.commit == repo.tag and files(fetched.path) == set(TAG_FILES)
    assert [status for *_, status in http_server.requests] == [200] * len(http_server.requests)
    # git's client processes were alive while the server answered them: the token was in none's argv
    assert http_server.argv_seen and any("git" in argv for argv in http_server.argv_seen)
    assert not [argv for argv in http_server.argv_seen if TOKEN in argv]
    assert leftovers(temp_root) == []


def test_no_token_or_a_wrong_one_is_one_secret_free_line(repo, http_server, temp_root):
    url = http_server.url()
    with pytest.raises(CodeSourceError) as exc:
        with checkout(parse_git_source(url)):
            pass
    assert str(exc.value) == (
        f"cannot fetch the code at {url}: the server asks for credentials; store an HTTPS token or an SSH "
        "private key in a Prefect Secret block and pass --code-secret-block NAME (code_secret_block)"
    )
    wrong = "ghp_Wrong0Token0Recognisable"
    with pytest.raises(CodeSourceError) as exc:
        with checkout(parse_git_source(url), credential=token(wrong)):
            pass
    assert str(exc.value) == (
        f"cannot fetch the code at {url}: the server refused the HTTPS token in Prefect Secret block "
        "'app-repo-token'; check that it is valid and may read the repository"
    )
    assert {status for *_, status in http_server.requests} == {401}
    assert not [argv for argv in http_server.argv_seen if wrong in argv]
    assert leftovers(temp_root) == []


def test_https_with_user_and_token(repo, tmp_path, temp_root, monkeypatch):
    pem = self_signed_cert(tmp_path)
    with GitHttpServer(repo.bare.parent, "ci-bot", TOKEN, cert=pem) as server:
        url = server.url()
        assert url.startswith("https://")
        monkeypatch.delenv("GIT_SSL_CAINFO", raising=False)
        monkeypatch.delenv("SSL_CERT_FILE", raising=False)
        with pytest.raises(CodeSourceError) as exc:  # the certificate is checked
            with checkout(parse_git_source(url), credential=token(f"ci-bot:{TOKEN}")):
                pass
        assert str(exc.value) == (
            f"cannot fetch the code at {url}: the server's TLS certificate is not trusted on this machine; "
            "install its CA, or point GIT_SSL_CAINFO at a CA bundle that holds it"
        )
        monkeypatch.setenv("GIT_SSL_CAINFO", str(tmp_path / "cert.pem"))
        with checkout(parse_git_source(f"{url}#cleanup"), credential=token(f"ci-bot:{TOKEN}")) as fetched:
            assert fetched.commit == repo.cleanup
    assert not [argv for argv in server.argv_seen if TOKEN in argv]
    assert leftovers(temp_root) == []


def test_a_flaky_server_is_retried(repo, temp_root, monkeypatch):
    monkeypatch.setattr(gitsource, "RETRY_DELAYS_S", (0.2, 0.2))
    with GitHttpServer(repo.bare.parent, "x-access-token", TOKEN, fail_first=2) as server:
        with checkout(parse_git_source(server.url()), credential=token()) as fetched:
            assert fetched.commit == repo.main
    assert [status for *_, status in server.requests][:3] == [503, 503, 200]


# --------------------------------------------------------------------------------------------------
# SSH: real git, a stand-in ssh client that records how git called it and refuses the key


FAKE_SSH = """#!/bin/sh
printf '%s\\n' "$@" > "{record}"
while [ $# -gt 0 ]; do
  if [ "$1" = "-i" ]; then stat -c %a "$2" > "{record}.mode"; cp "$2" "{record}.key"; fi
  shift
done
echo "{message}" >&2
exit 255
"""


@pytest.fixture
def fake_ssh(tmp_path, monkeypatch):
    bindir = tmp_path / "ssh-bin"
    bindir.mkdir()
    record = tmp_path / "ssh-argv"

    def install(message: str) -> Path:
        script = bindir / "ssh"
        script.write_text(FAKE_SSH.format(record=record, message=message))
        script.chmod(0o755)
        return record

    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    return install


def test_an_ssh_key_goes_to_ssh_as_a_0600_file_in_batch_mode(fake_ssh, tmp_path, temp_root):
    record = fake_ssh("git@github.com: Permission denied (publickey).")
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "deploy")], check=True
    )
    key = (tmp_path / "deploy").read_text()
    source = parse_git_source("git@github.com:acme/billing.git#main")

    with pytest.raises(CodeSourceError) as exc:
        with checkout(source, credential=credential_from_secret(key, "deploy-key")):
            pass

    assert str(exc.value) == (
        "cannot fetch the code at github.com:acme/billing.git: the server refused the SSH private key in "
        "Prefect Secret block 'deploy-key'; check that it is valid and may read the repository"
    )
    argv = record.read_text().splitlines()
    assert argv[:2] == ["-o", "BatchMode=yes"] and "IdentitiesOnly=yes" in argv
    keyfile = Path(argv[argv.index("-i") + 1])
    assert (Path(f"{record}.mode").read_text().strip(), Path(f"{record}.key").read_text()) == ("600", key)
    assert not keyfile.exists() and leftovers(temp_root) == []
    assert "git@github.com" in argv and not [a for a in argv if "PRIVATE KEY" in a]


def test_an_unknown_ssh_host_key_says_what_to_do(fake_ssh, temp_root):
    record = fake_ssh("Host key verification failed.")
    with pytest.raises(CodeSourceError) as exc:
        with checkout(parse_git_source("ssh://git@git.example.com/acme/billing.git")):
            pass
    assert str(exc.value) == (
        "cannot fetch the code at ssh://git.example.com/acme/billing.git: the SSH host key of "
        "git.example.com is not known on this machine; add it to the known_hosts of the user running the "
        "flow (ssh-keyscan git.example.com, after checking its fingerprint)"
    )
    assert "-i" not in record.read_text().splitlines()


# --------------------------------------------------------------------------------------------------
# the scan of a git source


def test_scan_of_a_git_url_finds_the_live_references(repo, temp_root):
    result = scan_code([repo.url], TARGETS)

    assert found(result) == MAIN_FOUND
    assert {r.root for r in result.references} == {repo.url}
    assert result.roots == [repo.url]
    [source] = result.sources
    assert (source.kind, source.url, source.ref, source.commit) == ("git", repo.url, None, repo.main)
    assert result.reasons == [
        "code still references the targets: 1 reference in 1 file (first: src/services/billing.js:1 "
        "credit_allocations); remove them, or pass --code-policy warn"
    ]
    assert leftovers(temp_root) == []


@pytest.mark.parametrize(("ref", "expected"), [("v1.0", TAG_FOUND), ("cleanup", set()), ("sha", TAG_FOUND)])
def test_scan_of_a_ref_sees_that_ref(repo, temp_root, ref, expected):
    ref = repo.tag if ref == "sha" else ref
    result = scan_code([f"{repo.url}#{ref}"], TARGETS)

    assert found(result) == expected
    assert result.sources[0].root == f"{repo.url}#{ref}"
    assert result.sources[0].commit == (repo.cleanup if ref == "cleanup" else repo.tag)
    assert result.status == "done" and (result.reasons == []) == (not expected)


def test_scan_of_a_local_path_and_a_git_url(repo, tmp_path, temp_root):
    local = tmp_path / "worker"
    (local / "jobs").mkdir(parents=True)
    (local / "jobs" / "expire.ts").write_text("import { CreditAllocation } from '@app/types';\n")

    result = scan_code([str(local), f"{repo.url}#v1.0"], TARGETS, policy="warn")

    assert [(r.root, r.path) for r in result.references] == [
        (str(local), "jobs/expire.ts"),
        (f"{repo.url}#v1.0", "src/models/CreditAllocation.ts"),
    ]
    assert [(s.kind, s.commit) for s in result.sources] == [("path", None), ("git", repo.tag)]


def test_a_source_that_cannot_be_fetched_is_a_reason(repo, tmp_path, temp_root):
    missing = (tmp_path / "gone.git").as_uri()

    result = scan_code([f"{repo.url}#cleanup", missing], TARGETS, policy="warn", dry_run=True)

    assert result.reasons == [
        f"cannot fetch the code at {missing}: no such repository; check the URL in --code-path (code_paths)"
    ]
    assert [s.root for s in result.sources] == [f"{repo.url}#cleanup"]
    assert leftovers(temp_root) == []


def test_the_secret_block_is_read_only_for_a_network_source(repo, temp_root):
    def must_not_be_called() -> GitCredential:
        raise AssertionError("a file:// source needs no credential")

    result = scan_code([repo.url], TARGETS, credential=must_not_be_called)
    assert result.sources[0].commit == repo.main

    def missing_block() -> GitCredential:
        raise CodeSourceError("no Prefect Secret block named 'nope' (code_secret_block); …")

    result = scan_code(["https://127.0.0.1:9/acme/billing.git"], TARGETS, credential=missing_block)
    assert result.reasons == ["no Prefect Secret block named 'nope' (code_secret_block); …"]


def test_no_code_source_stops_a_run_that_drops_and_warns_a_dry_run():
    destructive = scan_code([], TARGETS, dry_run=False)
    assert destructive.reasons == [NO_SOURCE_REASON] and destructive.warnings == []
    assert NO_SOURCE_REASON == (
        "no code source to scan: pass --code-path PATH|GIT-URL (code_paths), or --code-policy skip to "
        "drop without looking at the application's code"
    )
    dry = scan_code([], TARGETS, dry_run=True)
    assert dry.reasons == [] and dry.warnings == [SKIPPED_WARNING]


def test_policy_skip_looks_at_nothing_and_says_so(tmp_path, temp_root):
    missing = (tmp_path / "gone.git").as_uri()

    assert scan_code([], TARGETS, policy="skip").warnings == [SKIPPED_BY_POLICY]
    result = scan_code([missing], TARGETS, policy="skip")

    assert result.status == "skipped" and result.reasons == [] and result.sources == []
    assert result.warnings == [
        "code-reference scan skipped (--code-policy skip): the application's code was not checked for "
        "references to the targets; the code paths given were not scanned"
    ]
    assert leftovers(temp_root) == []


def test_the_clone_directory_is_private(repo, temp_root):
    with checkout(parse_git_source(repo.url)) as fetched:
        mode = stat.S_IMODE(fetched.path.parent.stat().st_mode)
    assert mode == 0o700  # mkdtemp: other users on the worker cannot read the code


def test_clone_time_of_a_small_repository(repo, temp_root, capsys):
    """Not a benchmark: a guard that a small fetch stays well under a second or two."""
    took = []
    for _ in range(3):
        started = time.monotonic()
        with checkout(parse_git_source(f"{repo.url}#main")):
            pass
        took.append(time.monotonic() - started)
    with capsys.disabled():
        print(f"\nfile:// shallow fetch of a small repository: {sorted(took)[1] * 1000:.0f} ms (median of 3)")
    assert sorted(took)[1] < 5
