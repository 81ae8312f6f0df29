"""Real git repositories for the code-source tests: a bare repository with branches and tags, served
by ``file://`` or by git's own smart-HTTP CGI (``git http-backend``) behind HTTP basic auth.
"""

from __future__ import annotations

import base64
import os
import shutil
import ssl
import subprocess
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

# The application at each point of its history: (path, line, identifier) the scan must find.
MAIN_FILES = {
    "src/services/billing.js": "const rows = await db.query('SELECT * FROM credit_allocations');\n",
    "src/index.js": "require('./services/billing');\n",
    "docs/history.md": "credit_allocations was retired.\n",  # docs are not scanned
}
MAIN_FOUND = {("src/services/billing.js", 1, "credit_allocations")}
TAG_FILES = {  # the older release v1.0: a TypeScript model that is gone on main
    "src/models/CreditAllocation.ts": "export interface CreditAllocation { id: number }\n",
    "src/index.js": "require('./models');\n",
}
TAG_FOUND = {("src/models/CreditAllocation.ts", 1, "CreditAllocation")}
CLEAN_FILES = {"src/index.js": "require('./services/credits');\n"}  # branch `cleanup`: no references

_GIT_ENV = {
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_AUTHOR_NAME": "test",
    "GIT_AUTHOR_EMAIL": "test@example.invalid",
    "GIT_COMMITTER_NAME": "test",
    "GIT_COMMITTER_EMAIL": "test@example.invalid",
}


def git(*args: str, cwd: Path | None = None) -> str:
    env = {**os.environ, **_GIT_ENV}
    return subprocess.run(
        ["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True
    ).stdout.strip()


def _commit(work: Path, files: dict[str, str], message: str) -> str:
    for tracked in git("ls-files", cwd=work).splitlines():
        (work / tracked).unlink()
    for name, text in files.items():
        path = work / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    git("add", "--all", cwd=work)
    git("commit", "--quiet", "--allow-empty", "-m", message, cwd=work)
    return git("rev-parse", "HEAD", cwd=work)


@dataclass
class AppRepo:
    """A bare repository: main (live references), tag v1.0 (older ones), branch cleanup (none)."""

    bare: Path
    main: str
    tag: str  # the commit v1.0 (an annotated tag) points at
    cleanup: str

    @property
    def url(self) -> str:
        return self.bare.as_uri()


def make_app_repo(root: Path, name: str = "app.git") -> AppRepo:
    bare = root / name
    git("init", "--quiet", "--bare", "--initial-branch=main", str(bare))
    work = root / f"{name}-work"
    git("init", "--quiet", "--initial-branch=main", str(work))
    tag = _commit(work, TAG_FILES, "release 1.0")
    git("tag", "--annotate", "v1.0", "-m", "v1.0", cwd=work)
    main = _commit(work, MAIN_FILES, "billing reads allocations")
    git("checkout", "--quiet", "-b", "cleanup", cwd=work)
    cleanup = _commit(work, CLEAN_FILES, "drop the allocations code")
    git("push", "--quiet", str(bare), "main", "cleanup", "v1.0", cwd=work)
    shutil.rmtree(work)
    return AppRepo(bare, main, tag, cleanup)


def cmdlines() -> dict[int, str]:
    """Every live process's argv, joined with spaces."""
    out = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                raw = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            out[int(entry.name)] = raw.replace(b"\0", b" ").decode("utf-8", "replace")
    return out


# --------------------------------------------------------------------------------------------------
# smart HTTP: git http-backend behind basic auth


@dataclass
class GitHttpServer:
    """``http://127.0.0.1:PORT/<name>.git`` for the bare repositories under ``root``; every request
    needs ``Authorization: Basic base64(user:token)`` (else 401). While each request is served, the
    argv of every process on the machine is recorded (git's own client processes are alive then)."""

    root: Path
    user: str
    token: str
    cert: Path | None = None  # serve https with this self-signed certificate (PEM, key included)
    fail_first: int = 0  # answer this many requests 503 first (a flaky proxy)
    requests: list[tuple[str, str, int]] = field(default_factory=list)  # (method, path, status)
    argv_seen: list[str] = field(default_factory=list)
    authorization_seen: list[str] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = None

    def url(self, name: str = "app.git") -> str:
        assert self._server is not None
        scheme = "https" if self.cert else "http"
        return f"{scheme}://127.0.0.1:{self._server.server_address[1]}/{name}"

    def __enter__(self) -> GitHttpServer:
        backend = Path(git("--exec-path")) / "git-http-backend"
        expected = "Basic " + base64.b64encode(f"{self.user}:{self.token}".encode()).decode()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # quiet
                pass

            def _serve(self) -> None:
                owner.argv_seen.extend(cmdlines().values())
                if len(owner.requests) < owner.fail_first:
                    owner.requests.append((self.command, self.path, 503))
                    self.send_response(503)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                auth = self.headers.get("Authorization")
                if auth:
                    owner.authorization_seen.append(auth)
                if auth != expected:
                    owner.requests.append((self.command, self.path, 401))
                    self.send_response(401)
                    self.send_header("WWW-Authenticate", 'Basic realm="git"')
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                path, _, query = self.path.partition("?")
                env = {
                    "PATH": os.environ.get("PATH", os.defpath),
                    "GIT_PROJECT_ROOT": str(owner.root),
                    "GIT_HTTP_EXPORT_ALL": "1",
                    "GIT_CONFIG_NOSYSTEM": "1",
                    "GIT_CONFIG_GLOBAL": os.devnull,
                    "REQUEST_METHOD": self.command,
                    "PATH_INFO": path,
                    "QUERY_STRING": query,
                    "CONTENT_TYPE": self.headers.get("Content-Type", ""),
                    "CONTENT_LENGTH": str(len(body)),
                    "REMOTE_USER": owner.user,
                    "REMOTE_ADDR": "127.0.0.1",
                    "GIT_PROTOCOL": self.headers.get("Git-Protocol", ""),
                }
                if self.headers.get("Content-Encoding"):
                    env["HTTP_CONTENT_ENCODING"] = self.headers["Content-Encoding"]
                out = subprocess.run([str(backend)], input=body, env=env, capture_output=True).stdout
                head, _, payload = out.partition(b"\r\n\r\n")
                if not _:
                    head, _, payload = out.partition(b"\n\n")
                status, headers = 200, []
                for line in head.decode("latin-1").splitlines():
                    key, _, value = line.partition(":")
                    if key.lower() == "status":
                        status = int(value.split()[0])
                    elif key:
                        headers.append((key, value.strip()))
                owner.requests.append((self.command, self.path, status))
                self.send_response(status)
                for key, value in headers:
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = _serve

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        if self.cert:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(self.cert)
            self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        assert self._server is not None
        self._server.shutdown()
        self._server.server_close()


def self_signed_cert(directory: Path) -> Path:
    """A certificate for 127.0.0.1 with its key, in one PEM file (also the CA file git trusts)."""
    pem = directory / "server.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
            "-keyout", str(pem), "-out", str(directory / "cert.pem"),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    pem.write_text(pem.read_text() + (directory / "cert.pem").read_text())
    return pem


def private_tempdir(monkeypatch, tmp_path: Path) -> Path:
    """Make a fresh directory the system temp dir for one test: what is left in it is what leaked."""
    import tempfile

    root = tmp_path / "tmp"
    root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(root))
    return root


def leftovers(root: Path) -> list[str]:
    """Temporary clones still there."""
    return sorted(p.name for p in root.iterdir() if p.name.startswith("safedrop-git-"))


# git that records its argv (one line per argument, a blank line after each call), then is git
RECORDING_GIT = """#!/bin/sh
printf '%s\\n' "$@" "" >> "{log}"
exec "{real}" "$@"
"""


def recording_git(bindir: Path, log: Path) -> Path:
    real = shutil.which("git")
    assert real is not None
    bindir.mkdir(parents=True, exist_ok=True)
    script = bindir / "git"
    script.write_text(RECORDING_GIT.format(log=log, real=real))
    script.chmod(0o755)
    return script
