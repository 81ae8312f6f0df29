"""The code scan itself: ripgrep over each code source, its ``--json`` output parsed as it streams.

A code source is a local path, or a git URL fetched shallow into a temporary directory for the scan
and removed afterwards (``safedrop.analysis.gitsource``); its references are relative to the repository root
and the result names the URL (never credentials) and the commit scanned. The search honours
``.gitignore`` even outside a git checkout and skips hidden, vendored and build directories,
migrations (they are supposed to name the tables), docs and lock files. No Prefect here.

The scan counts the files it read (``rg --files`` with the same filters, run beside the search): a
source of which it read none — an empty directory, a wrong mount, globs that exclude everything —
stops the run, since a scan that saw nothing cannot say the code is clean.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, Literal

from safedrop.analysis.gitauth import GitCredential
from safedrop.analysis.gitsource import checkout
from safedrop.analysis.identifiers import exact_spellings, is_other_quoted_table, search_pattern
from safedrop.errors import CodeSourceError, ConfigurationError, SafedropError, UsageError
from safedrop.migration import TableName
from safedrop.pg.processes import die_with_parent
from safedrop.results import CodeReference, CodeScanResult, CodeSource
from safedrop.sources import GitSource, is_git_source, parse_git_source

CodePolicy = Literal["fail", "warn", "skip"]
POLICIES = ("fail", "warn", "skip")

SKIPPED_WARNING = (
    "code-reference scan skipped: no code path given; pass --code-path PATH|GIT-URL (code_paths in the "
    "flow parameters) to check the application for references to the targets (a run without one stops)"
)
NO_SOURCE_REASON = (
    "no code source to scan: pass --code-path PATH|GIT-URL (code_paths), or --code-policy skip to drop "
    "without looking at the application's code"
)
SKIPPED_BY_POLICY = (
    "code-reference scan skipped (--code-policy skip): the application's code was not checked for "
    "references to the targets"
)

#: Vendored dependencies and build output: not our code, or generated from it.
VENDORED_AND_BUILD_DIRS = (
    "node_modules",
    "vendor",
    "bower_components",
    "dist",
    "build",
    "out",
    ".next",
    ".nuxt",
    "coverage",
    "target",
    ".turbo",
    ".cache",
)
#: Migrations are meant to name the tables (the drop itself is one). Covers knex, sequelize-cli,
#: typeorm (``src/migration``), prisma (``prisma/migrations``) and rails-style ``db/migrate``.
MIGRATION_GLOBS = ("migrations", "migration", "migrate", "*.migration.*")
#: Documentation may keep talking about the old tables.
DOC_GLOBS = (
    "*.md",
    "*.mdx",
    "*.markdown",
    "*.rst",
    "*.adoc",
    "*.txt",
    "docs/",
    "doc/",
    "CHANGELOG*",
    "changelog*",
)
LOCK_FILES = ("package-lock.json", "npm-shrinkwrap.json", "yarn.lock", "pnpm-lock.yaml", "bun.lock")

#: ripgrep globs (``-g !glob``) the scan always skips; no include glob or .gitignore rule brings them back.
DEFAULT_EXCLUDES: tuple[str, ...] = (
    ".git/",
    *(f"{d}/" for d in VENDORED_AND_BUILD_DIRS),
    *MIGRATION_GLOBS,
    *DOC_GLOBS,
    *LOCK_FILES,
)

#: Flags shared by the scan and the benchmark's plain-rg baseline.
RG_BASE_FLAGS: tuple[str, ...] = (
    "--no-config",  # an operator's RIPGREP_CONFIG_PATH must not change what the scan sees
    "--no-require-git",  # .gitignore counts even in an exported tree without .git
    "--case-sensitive",  # the variants carry the casing
)

TEXT_WIDTH = 200  # characters of the matching line kept per reference
ARTIFACT_ROWS = 50  # references shown in the markdown artifact


class CodeScanFailed(SafedropError):
    """ripgrep could not finish the scan (e.g. an unreadable file), so the code was not fully checked."""


# --------------------------------------------------------------------------------------------------
# identifier variants


def find_rg() -> str:
    """The ripgrep binary installed with this venv (the ``ripgrep`` wheel), else the one on PATH."""
    beside = Path(sys.executable).parent / "rg"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("rg")
    if found:
        return found
    raise ConfigurationError(
        "ripgrep (rg) not found next to the Python interpreter or on PATH; install it with "
        "`pip install ripgrep==14.1.0` (it is in requirements.lock), or skip the scan by passing no code path"
    )


def exclude_args(exclude: Sequence[str] = ()) -> list[str]:
    """``-g !glob`` flags: the default excludes, then the operator's. They beat any other ignore rule."""
    args: list[str] = []
    for glob in (*DEFAULT_EXCLUDES, *exclude):
        args += ["-g", f"!{glob}"]
    return args


def include_rules(include: Sequence[str]) -> str:
    """An ignore file (gitignore syntax, matched from the root) that limits the scan to ``include``.

    Not ``-g glob``: ripgrep lets a matching ``-g`` glob override ``.gitignore``, so ``-g 'src/**/*.ts'``
    would pull in a gitignored ``src/config/secrets.local.ts``. An ``--ignore-file`` ranks below
    ``.gitignore`` and only narrows. Directories stay open (``!*/``) and hidden files stay hidden.
    """
    for glob in include:
        if glob.startswith("!"):
            raise UsageError(
                f"code scan include glob {glob!r} starts with '!'; pass it without '!' to --code-exclude"
            )
    return "\n".join(["*", "!*/", *(f"!{glob}" for glob in include), ".*"]) + "\n"


def _check_roots(roots: Sequence[str]) -> list[tuple[str, Path | GitSource]]:
    """Each code source once: an existing local path, or a parsed git URL (not fetched yet)."""
    checked: list[tuple[str, Path | GitSource]] = []
    for root in dict.fromkeys(roots):  # the same path twice would count every reference twice
        if is_git_source(root):
            source = parse_git_source(root)  # refuses credentials in the URL, in one secret-free line
            checked.append((source.display, source))
            continue
        path = Path(root).expanduser()
        if not root.strip() or not (path.is_dir() or path.is_file()):
            raise UsageError(f"code path {root} does not exist")
        checked.append((root, path))
    return list({display: (display, where) for display, where in checked}.values())


def _text(field: dict) -> str:
    """A ripgrep JSON string field: ``{"text": …}``, or ``{"bytes": base64}`` when not valid UTF-8."""
    if "text" in field:
        return field["text"]
    return base64.b64decode(field["bytes"]).decode("utf-8", errors="replace")


def _raw(field: dict) -> bytes:
    if "text" in field:
        return field["text"].encode("utf-8")
    return base64.b64decode(field["bytes"])


def _path(field: dict) -> str:
    if "text" in field:
        return field["text"]
    return os.fsdecode(base64.b64decode(field["bytes"]))


def _snippet(line: str, start: int) -> str:
    """The line trimmed; a long line (minified code) cut to a window around the match."""
    stripped = line.strip()
    if len(stripped) <= TEXT_WIDTH:
        return stripped
    start -= len(line) - len(line.lstrip())
    lead = max(0, min(start - TEXT_WIDTH // 3, len(stripped) - TEXT_WIDTH))
    window = stripped[lead : lead + TEXT_WIDTH]
    return ("…" if lead else "") + window + ("…" if lead + TEXT_WIDTH < len(stripped) else "")


def _references(data: dict, root: str, prefix: str, exact: set[str] | None = None) -> Iterator[CodeReference]:
    path = _path(data["path"])
    path = path[len(prefix) :] if path.startswith(prefix) else path
    lines = data["lines"]
    line_text = _text(lines).rstrip("\r\n")
    raw = None if line_text.isascii() else _raw(lines)
    for sub in data["submatches"]:
        start = sub["start"]
        if raw is not None:  # ripgrep's offsets count bytes; columns count characters
            start = len(raw[:start].decode("utf-8", errors="replace"))
        identifier = _text(sub["match"])
        if exact is not None and is_other_quoted_table(line_text, start, identifier, exact):
            continue  # "Credit_Allocations": a quoted identifier, another table
        yield CodeReference(
            path=path,
            root=root,
            line=data["line_number"],
            column=start + 1,
            identifier=identifier,
            text=_snippet(line_text, start),
        )


def _bad_glob(stderr: str, include: Sequence[str], exclude: Sequence[str]) -> UsageError | None:
    match = re.search(r"error parsing glob '!?(.*?)': (.*)", stderr)
    if not match:
        return None
    glob, why = match.group(1), match.group(2).strip()
    flag = "--code-include" if glob in include else "--code-exclude" if glob in exclude else None
    where = f"; fix it in {flag} ({flag[2:].replace('-', '_')})" if flag else ""
    return UsageError(f"code scan glob {glob!r} is not a valid ripgrep glob ({why}){where}")


def _count_files(listing: IO[bytes]) -> int:
    listing.seek(0)
    count = 0
    while chunk := listing.read(1 << 20):
        count += chunk.count(b"\0")
    return count


def _run_rg(
    root: str, path: Path, argv: list[str], files_argv: list[str], exact: set[str] | None = None
) -> tuple[list[CodeReference], int, str, int]:
    """One ripgrep run over one root, its JSON output parsed as it streams; beside it, ``rg --files``
    with the same filters counts the files the search reads. (references, status, stderr, files)"""
    # ripgrep matches globs relative to its working directory, so it runs inside the root and
    # searches "./": `src/legacy/**` then means <root>/src/legacy/**, whatever our own cwd is.
    if path.is_dir():
        cwd, target = path, "./"
    else:
        cwd, target = path.parent, f"./{path.name}"
    references: list[CodeReference] = []
    # files, not pipes: a full pipe would deadlock rg
    with tempfile.TemporaryFile() as stderr_file, tempfile.TemporaryFile() as listing:
        try:
            lister = subprocess.Popen(
                [*files_argv, "--", target],
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=listing,
                stderr=subprocess.DEVNULL,  # the search itself reports what it could not read
                preexec_fn=die_with_parent,
            )
        except OSError as exc:
            raise ConfigurationError(f"cannot run ripgrep at {argv[0]}: {exc.strerror or exc}") from None
        try:
            proc = subprocess.Popen(
                [*argv, "--", target],
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=stderr_file,
                bufsize=1 << 18,  # few large reads: a minified line can be hundreds of KB of JSON
                preexec_fn=die_with_parent,
            )
        except OSError as exc:
            lister.kill()
            lister.wait()
            raise ConfigurationError(f"cannot run ripgrep at {argv[0]}: {exc.strerror or exc}") from None
        try:
            assert proc.stdout is not None
            with proc.stdout:
                for raw_line in proc.stdout:
                    # Only matches are parsed. The summary is not used: in ripgrep 14.1 its `searches`
                    # counts only files with a match, so it cannot say how many files were searched.
                    if raw_line.startswith(b'{"type":"match"'):
                        references += _references(json.loads(raw_line)["data"], root, "./", exact)
            returncode = proc.wait()
            lister.wait()
        finally:
            for process in (proc, lister):
                if process.poll() is None:
                    process.kill()
                    process.wait()
        files = _count_files(listing)
        stderr_file.seek(0)
        stderr = stderr_file.read().decode("utf-8", errors="replace").strip()
    return references, returncode, stderr, files


def _rg_failure(root: str, returncode: int, stderr: str) -> CodeScanFailed:
    lines = stderr.splitlines()
    first = lines[0].removeprefix("rg: ") if lines else f"ripgrep exited with status {returncode}"
    more = f" (and {len(lines) - 1:,} more errors)" if len(lines) > 1 else ""
    return CodeScanFailed(
        f"code scan of {root} did not complete: {first}{more}; make the code path readable, "
        "or skip the unreadable paths with --code-exclude"
    )


def _plural_s(n: int, word: str) -> str:
    return f"{n:,} {word}{'' if n == 1 else 's'}"


def _scan_one(
    root: str, path: Path, scan: _Scan, include: Sequence[str], exclude: Sequence[str]
) -> tuple[list[CodeReference], int]:
    """The references under one root, and how many files the scan read there."""
    found, returncode, stderr, files = _run_rg(root, path, scan.search_argv, scan.files_argv, scan.exact)
    bad_glob = _bad_glob(stderr, include, exclude)  # an --ignore-file glob errs with status 0/1
    if bad_glob is not None:
        raise bad_glob
    if returncode not in (0, 1):  # 1: no match
        raise _rg_failure(root, returncode, stderr)
    return found, files


def scan_code(
    roots: Sequence[str],
    targets: Sequence[TableName],
    *,
    policy: CodePolicy = "fail",
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    dry_run: bool = False,
    credential: Callable[[], GitCredential] | None = None,
) -> CodeScanResult:
    """Find every reference to the targets' names in the code under ``roots`` (paths or git URLs).

    Policy ``fail`` turns references into a reason (the run stops), ``warn`` into a warning, ``skip``
    does not look at the code at all (a warning says so). No code source is a reason for a
    destructive run and a warning for a dry run. A git source that cannot be fetched is a reason.
    ``credential`` is called once, when the first https or ssh source needs it.
    Globs use ripgrep's (gitignore) syntax, matched from each root. Include globs only narrow the
    scan: ``.gitignore`` and the default excludes still apply. Exclude globs add to the defaults.
    """
    if policy not in POLICIES:
        raise UsageError(f"code policy {policy!r} is not one of 'fail', 'warn', 'skip'")
    if policy == "skip":
        given = "; the code paths given were not scanned" if roots else ""
        return CodeScanResult(status="skipped", roots=[], references=[], warnings=[SKIPPED_BY_POLICY + given])
    if not roots:
        if dry_run:
            return CodeScanResult(status="skipped", roots=[], references=[], warnings=[SKIPPED_WARNING])
        return CodeScanResult(status="skipped", roots=[], references=[], reasons=[NO_SOURCE_REASON])
    checked = _check_roots(roots)
    if not targets:
        return CodeScanResult(status="done", roots=[root for root, _ in checked], references=[])
    scan = _Scan(include, exclude, credential)
    with tempfile.TemporaryDirectory(prefix="safedrop-scan-") as tmp:
        scan.prepare(targets, Path(tmp))
        for root, where in checked:
            scan.source(root, where)
    return _result(scan, [root for root, _ in checked], policy)


class _Scan:
    """What the scan of several code sources gathers: references, the sources scanned, failures."""

    def __init__(
        self, include: Sequence[str], exclude: Sequence[str], credential: Callable[[], GitCredential] | None
    ) -> None:
        self.include, self.exclude, self._credential = include, exclude, credential
        self._loaded: GitCredential | None = None
        self.references: list[CodeReference] = []
        self.sources: list[CodeSource] = []
        self.failed: list[str] = []
        self.search_argv: list[str] = []
        self.files_argv: list[str] = []
        self.exact: set[str] = set()

    def prepare(self, targets: Sequence[TableName], tmp: Path) -> None:
        """ripgrep's command lines, the search's and the file count's (the same filters); include globs
        go through an ignore file in ``tmp``."""
        filters = [*RG_BASE_FLAGS, *exclude_args(self.exclude)]
        if self.include:
            rules = tmp / "include.ignore"
            rules.write_text(include_rules(self.include))
            filters[:0] = ["--ignore-file", str(rules)]
        rg = find_rg()
        self.search_argv = [rg, *filters, "--json", "-e", search_pattern(targets)]
        self.files_argv = [rg, *filters, "--files", "--null"]
        self.exact = exact_spellings(targets)

    def credential(self, source: GitSource) -> GitCredential | None:
        """The credential, read once, when the first source over the network needs it."""
        if self._credential is not None and source.needs_network and self._loaded is None:
            self._loaded = self._credential()
        return self._loaded

    def source(self, root: str, where: Path | GitSource) -> None:
        if isinstance(where, Path):
            found, files = _scan_one(root, where, self, self.include, self.exclude)
            self.references += found
            self.sources.append(CodeSource(root=root, kind="path", files_read=files))
            return
        try:
            with checkout(where, credential=self.credential(where)) as fetched:
                found, files = _scan_one(root, fetched.path, self, self.include, self.exclude)
                self.references += found
        except CodeSourceError as exc:
            self.failed.append(str(exc))
            return
        self.sources.append(
            CodeSource(
                root=root,
                kind="git",
                url=where.safe_url,
                ref=where.ref,
                commit=fetched.commit,
                fetch_s=fetched.duration_s,
                files_read=files,
            )
        )


def _result(scan: _Scan, roots: list[str], policy: CodePolicy) -> CodeScanResult:
    """The references in root order; under policy ``fail`` a reason, under ``warn`` a warning."""
    order = {root: index for index, root in enumerate(roots)}
    references = sorted(scan.references, key=lambda r: (order[r.root], r.path, r.line, r.column))
    scanned = {s.root for s in scan.sources}
    result = CodeScanResult(
        status="done" if scan.sources else "skipped",
        roots=[root for root in roots if root in scanned],
        references=references,
        sources=scan.sources,
        reasons=scan.failed,
        files_read=sum(s.files_read or 0 for s in scan.sources) if scan.sources else None,
    )
    globs = " and the --code-include/--code-exclude globs" if scan.include or scan.exclude else ""
    result.reasons += [
        f"the code scan read no files under {s.root}; check --code-path{globs}"
        for s in scan.sources
        if s.files_read == 0
    ]
    if references:
        files = len({(r.root, r.path) for r in references})
        first = references[0]
        where = first.path if len(result.roots) == 1 else os.path.join(first.root, first.path)
        found_text = (
            f"code still references the targets: {_plural_s(len(references), 'reference')} in "
            f"{_plural_s(files, 'file')} (first: {where}:{first.line} {first.identifier})"
        )
        if policy == "fail":
            result.reasons.append(f"{found_text}; remove them, or pass --code-policy warn")
        else:
            result.warnings.append(f"{found_text}; remove them before the tables are gone for good")
    return result
