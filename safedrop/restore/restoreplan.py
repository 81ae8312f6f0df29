"""What a restore will do, and what the database already holds of it — read before anything changes.

This module provides:

- ``RestorePlan``: the archive, its manifest, the tools, the entries to replay, the objects that must
  exist afterwards and the foreign keys to add or validate (what the restore precheck hands on);
- ``Existing`` / ``read_existing(db, manifest, objects, keys)``: in one read-only snapshot, which of
  the objects and targets exist, the targets' contents, surviving tables that are gone, the ledger's
  record of the drop and each foreign key's state;
- ``object_exists`` / ``compare_tables`` / ``manifest_targets``: the questions behind it, also asked
  by the verification afterwards;
- ``repair_note``: what a repair (tables intact, some of the rest missing) puts back.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from safedrop.backup.archive import TocEntry
from safedrop.migration import TableName
from safedrop.pg import queries
from safedrop.pg.checksums import checksum_methods, pin_text_settings, table_checksums
from safedrop.pg.database import Database, reading
from safedrop.pg.pgtools import PgTools
from safedrop.restore.foreignkeys import ForeignKey, foreign_key_states
from safedrop.results import BackupManifest, RemovedObject, RestoreCheck, RestoredTable

# SQLSTATE classes pg_get_object_address raises for "no such object" (undefined_*, invalid_schema_name).
_ABSENT_CLASSES = ("42", "3F")
WRONG_OBJECT_TYPE = "42809"


@dataclass
class RestorePlan:
    """What the precheck found: the archive, the entries to replay, and what must exist afterwards."""

    archive: Path
    manifest: BackupManifest
    tools: PgTools
    entries: list[TocEntry]
    objects: list[RemovedObject]
    check: RestoreCheck
    already_restored: bool = False
    repair: bool = False  # the tables are there, intact: only objects the drop removed first go back
    warnings: list[str] = field(default_factory=list)
    server_version_num: int = 0
    foreign_keys: list[ForeignKey] = field(default_factory=list)  # to add NOT VALID (or only to validate)


def manifest_targets(manifest: BackupManifest) -> list[TableName]:
    return [TableName(t.schema_name, t.table_name) for t in manifest.targets]


def object_exists(conn: Connection, obj: RemovedObject) -> bool:
    """Whether an object with this (portable) address exists now; asked inside a savepoint."""
    savepoint = conn.begin_nested()
    try:
        queries.rows(conn, "object_exists", type=obj.type, names=obj.names, args=obj.args)
    except sa.exc.DBAPIError as exc:
        savepoint.rollback()
        code = getattr(exc.orig, "pgcode", None) or ""
        if code == WRONG_OBJECT_TYPE:  # the name is taken by an object of another kind: it collides
            return True
        if code.startswith(_ABSENT_CLASSES):
            return False
        raise
    savepoint.commit()
    return True


def compare_tables(conn: Connection, manifest: BackupManifest) -> list[RestoredTable]:
    """Each target's rows and checksum now, against the manifest's (computed the way the backup did)."""
    found = table_checksums(conn, manifest_targets(manifest), methods=checksum_methods(manifest.targets))
    out = []
    for t in manifest.targets:
        rows, checksum = found.get(TableName(t.schema_name, t.table_name), (None, None))
        out.append(
            RestoredTable(
                name=t.name, rows_expected=t.rows, rows_found=rows, checksum_matches=checksum == t.checksum
            )
        )
    return out


def _quoted(*parts: str) -> str:
    return ".".join('"' + p.replace('"', '""') + '"' for p in parts)


def _ledger_entries(conn: Connection, manifest: BackupManifest) -> list[dict]:
    if not queries.one(conn, "relation_exists", name="safedrop.dropped_tables")["present"]:
        return []
    targets = manifest_targets(manifest)
    return queries.rows(
        conn, "ledger_restore_lookup", schemas=[t.schema for t in targets], names=[t.name for t in targets]
    )


def _exists(conn: Connection, name: str) -> bool:
    return queries.one(conn, "relation_exists", name=name)["present"]


@dataclass
class Existing:
    """What the database holds now of what the restore would put back."""

    present: list[RemovedObject]  # objects to restore that exist already
    present_targets: list  # the manifest's targets (TableChecksum) that exist
    missing_survivors: list[str]  # tables the drop removed things from, now gone themselves
    compared: list[RestoredTable]  # the targets' contents, when every target exists
    ledger: list[dict]  # safedrop's record of dropping the targets
    keys: list[ForeignKey]  # the foreign keys, with their state now

    @property
    def tables_intact(self) -> bool:
        """Every target is there with exactly the backup's rows."""
        return bool(self.compared) and all(
            t.rows_found == t.rows_expected and t.checksum_matches for t in self.compared
        )


def read_existing(
    db: Database, manifest: BackupManifest, objects: list[RemovedObject], keys: list[ForeignKey]
) -> Existing:
    """In one REPEATABLE READ, READ ONLY transaction: what of the restore's objects exists now."""
    with reading(db, snapshot=True) as conn:
        pin_text_settings(conn)
        present = [o for o in objects if object_exists(conn, o)]
        present_targets = [t for t in manifest.targets if _exists(conn, _quoted(t.schema_name, t.table_name))]
        survivors = sorted({c.owner_table for c in manifest.cascade if c.owner_table})
        return Existing(
            present=present,
            present_targets=present_targets,
            missing_survivors=[s for s in survivors if not _exists(conn, s)],
            compared=compare_tables(conn, manifest) if len(present_targets) == len(manifest.targets) else [],
            ledger=_ledger_entries(conn, manifest),
            keys=foreign_key_states(conn, keys),
        )


def repair_note(missing: list[RemovedObject], unvalidated: list[ForeignKey]) -> str:
    parts = []
    if missing:
        parts.append("putting back only what is missing: " + ", ".join(o.description for o in missing))
    if unvalidated:
        parts.append("validating the foreign keys left NOT VALID: " + ", ".join(k.label for k in unvalidated))
    return "the tables are there with exactly the backup's contents; " + "; ".join(parts)
