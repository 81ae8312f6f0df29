"""A pg_dump archive: its table of contents, whether it holds the targets, and its digest.

This module provides:

- ``TocEntry`` / ``parse_toc`` / ``read_toc``: ``pg_restore --list --verbose`` as entries with their
  catalog identity and dependencies (``read_toc`` raises a one-line failure when it does not read);
- ``archive_toc``: the entries as ``'DESC schema name owner'`` lines;
- ``verify_archive``: every target (or each leaf partition of a partitioned one) has its TABLE and
  TABLE DATA entries, else ``BackupFailed`` naming what is missing;
- ``sha256_file`` / ``archive_digest``: the size and sha256 of a custom-format file or of a
  directory-format archive (and of each of its files).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from safedrop.errors import DID_NOT_RUN, BackupFailed
from safedrop.migration import TableName
from safedrop.pg.pgtools import PgTools
from safedrop.pg.processes import ToolFailed, first_error, run, tool_env

CHUNK = 1024 * 1024

# Every entry description pg_dump writes (pg_dump.c, pg_backup_archiver.c); the longest match wins.
TOC_DESCS = sorted(
    """ACCESS METHOD|ACL|AGGREGATE|BLOB|BLOB METADATA|BLOBS|CAST|CHECK CONSTRAINT|COLLATION|COMMENT|
    CONSTRAINT|CONVERSION|DATABASE|DATABASE PROPERTIES|DEFAULT|DEFAULT ACL|DOMAIN|ENCODING|EVENT TRIGGER|
    EXTENSION|FK CONSTRAINT|FOREIGN DATA WRAPPER|FOREIGN SERVER|FOREIGN TABLE|FUNCTION|INDEX|INDEX ATTACH|
    LARGE OBJECT|MATERIALIZED VIEW|MATERIALIZED VIEW DATA|OPERATOR|OPERATOR CLASS|OPERATOR FAMILY|POLICY|
    PROCEDURAL LANGUAGE|PROCEDURE|PUBLICATION|PUBLICATION TABLE|PUBLICATION TABLES IN SCHEMA|ROW SECURITY|
    RULE|SCHEMA|SEARCHPATH|SECURITY LABEL|SEQUENCE|SEQUENCE OWNED BY|SEQUENCE SET|SERVER|SHELL TYPE|
    STATISTICS|STDSTRINGS|SUBSCRIPTION|SUBSCRIPTION TABLE|TABLE|TABLE ATTACH|TABLE DATA|
    TEXT SEARCH CONFIGURATION|TEXT SEARCH DICTIONARY|TEXT SEARCH PARSER|TEXT SEARCH TEMPLATE|TRANSFORM|
    TRIGGER|TYPE|USER MAPPING|VIEW""".replace("\n", "").split("|"),
    key=len,
    reverse=True,
)
TOC_DESCS = [d.strip() for d in TOC_DESCS]
_TOC_LINE = re.compile(r"^\s*(?P<id>\d+);\s+(?P<catalog>\d+)\s+(?P<oid>\d+)\s+(?P<rest>.*)$")
_TOC_DEPS = re.compile(r"^;\s+depends on:(?P<deps>[\d ]*)$")


@dataclass
class TocEntry:
    """One line of ``pg_restore --list`` (with ``--verbose``: its dependencies too)."""

    dump_id: int
    catalog_oid: int  # the pg_catalog table of the object (pg_class 1259, pg_constraint 2606, …), or 0
    oid: int  # the object's oid in the dumped database (TABLE DATA / ROW SECURITY: the table's), or 0
    desc: str  # TABLE, TABLE DATA, FK CONSTRAINT, …
    rest: str  # "schema tag owner" as printed
    line: str  # the whole line, as -L takes it back
    deps: list[int] = field(default_factory=list)

    @property
    def schema(self) -> str:
        return self.rest.split(" ", 1)[0]

    @property
    def label(self) -> str:
        """'DESC schema tag owner' (the form ``archive_toc`` returns)."""
        return f"{self.desc} {self.rest}".rstrip()


def parse_toc(text: str) -> list[TocEntry]:
    entries: list[TocEntry] = []
    for line in text.splitlines():
        deps = _TOC_DEPS.match(line)
        if deps and entries:
            entries[-1].deps = [int(d) for d in deps.group("deps").split()]
            continue
        match = _TOC_LINE.match(line)
        if not match:
            continue
        after = match.group("rest")
        desc = next((d for d in TOC_DESCS if after == d or after.startswith(d + " ")), after.split(" ", 1)[0])
        entries.append(
            TocEntry(
                dump_id=int(match.group("id")),
                catalog_oid=int(match.group("catalog")),
                oid=int(match.group("oid")),
                desc=desc,
                rest=after[len(desc) :].strip(),
                line=line,
            )
        )
    return entries


def read_toc(
    path: Path | str,
    tools: PgTools,
    *,
    timeout_s: float = 300,
    failure: type = BackupFailed,
    suffix: str = DID_NOT_RUN,
    stdin: Iterable[bytes] | None = None,
) -> list[TocEntry]:
    """The archive's table of contents with dependencies (``pg_restore --list --verbose``).

    ``stdin``: the archive's bytes streamed (an object in the store, ``path`` its URI): pg_restore reads
    its header and table of contents, then stops."""
    args = ["--list", "--verbose"] if stdin is not None else ["--list", "--verbose", str(path)]
    try:
        text = run(tools.pg_restore, args, env=tool_env(), timeout_s=timeout_s, stdin=stdin)
    except ToolFailed as exc:
        if exc.kind == "timeout":
            raise failure(
                f"pg_restore --list {path} did not finish within {timeout_s:g} s; {suffix}"
            ) from None
        if exc.kind == "not-started":
            raise
        first = first_error(exc.stderr, exc.exit_code)
        raise failure(f"the archive {path} does not read back (pg_restore: {first}); {suffix}") from None
    return parse_toc(text)


def archive_toc(path: Path, tools: PgTools, *, timeout_s: float = 300) -> list[str]:
    """The archive's table of contents (``pg_restore --list``), each entry as 'DESC schema name owner'."""
    return [e.label for e in read_toc(path, tools, timeout_s=timeout_s)]


def _has_entry(entries: Iterable[str], desc: str, table: TableName) -> bool:
    prefix = f"{desc} {table.schema} {table.name}"
    return any(e == prefix or e.startswith(prefix + " ") for e in entries)


def _problems(labels: list[str], table: TableName, relkind: str, leaves: list[TableName]) -> list[str]:
    """What the archive lacks of one target (a partitioned one: of each of its leaf partitions)."""
    wanted = ("TABLE",) if relkind == "p" else ("TABLE", "TABLE DATA")
    lacks = [desc for desc in wanted if not _has_entry(labels, desc, table)]
    problems = [f"{table.qualified} (no {' or '.join(lacks)} entry)"] if lacks else []
    for leaf in leaves:
        leaf_lacks = [d for d in ("TABLE", "TABLE DATA") if not _has_entry(labels, d, leaf)]
        if leaf_lacks:
            problems.append(
                f"{leaf.qualified} (partition of {table.qualified}; no {' or '.join(leaf_lacks)} entry)"
            )
    return problems


def verify_archive(
    path: Path,
    targets: Sequence[TableName],
    tools: PgTools,
    *,
    layout: dict[TableName, tuple[str, list[TableName]]] | None = None,
    entries: list[TocEntry] | None = None,
) -> list[str]:
    """Check that every target has a TABLE entry and its rows a TABLE DATA entry; return their names.

    ``layout`` maps a target to (relkind, the leaf tables below it): a partitioned target (relkind
    'p') holds no rows itself — each of its leaf partitions must have TABLE and TABLE DATA instead.
    Raises BackupFailed naming what is missing (the archive file is left in place).
    """
    labels = [e.label for e in (entries if entries is not None else read_toc(Path(path), tools))]
    found, missing = [], []
    for table in targets:
        relkind, leaves = (layout or {}).get(table, ("r", []))
        problems = _problems(labels, table, relkind, leaves)
        if problems:
            missing += problems
        else:
            found.append(table.qualified)
    if missing:
        raise BackupFailed(
            f"the archive {path} lacks {', '.join(missing)}; it is kept for inspection but is not a backup "
            f"of the targets; {DID_NOT_RUN}"
        )
    return found


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def archive_digest(path: Path) -> tuple[int, str, dict[str, str]]:
    """(bytes, sha256, per-file sha256) of an archive.

    A custom-format file: its own sha256. A directory-format archive: the sha256 of its listing in
    ``sha256sum`` form (``<sha256>  <name>`` per file, sorted by name), and each file's sha256.
    """
    path = Path(path)
    if not path.is_dir():
        return path.stat().st_size, sha256_file(path), {}
    files = {p.name: sha256_file(p) for p in sorted(path.iterdir()) if p.is_file()}
    listing = "".join(f"{digest}  {name}\n" for name, digest in files.items())
    size = sum((path / name).stat().st_size for name in files)
    return size, hashlib.sha256(listing.encode()).hexdigest(), files
