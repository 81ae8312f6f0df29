"""Which entries of an archive go back: exactly what the drop removed, by the oids the archive records.

This module provides:

- ``select_entries(entries, manifest)``: the entries for every object in the manifest's removal set,
  plus the comments, grants, sequence values and partition attachments that depend on them;
- ``only_entries_for(entries, objects)``: the entries creating just these objects (a repair);
- ``restored_objects`` / ``not_restorable``: what the chosen entries create, and what CASCADE removed
  that no entry brings back;
- ``split_foreign_keys(entries)``: (what pg_restore replays, the foreign keys that go back after it);
- ``entry_names(entries)``: the entries as a person reads them, without pg_restore's session entries.
"""

from __future__ import annotations

from safedrop.backup.archive import TocEntry
from safedrop.pg.catalog import PG_CLASS
from safedrop.results import BackupManifest, RemovedObject

# Entries pg_restore needs for any restore: the archive's encoding, string and search_path settings.
SESSION_ENTRIES = {"ENCODING", "STDSTRINGS", "SEARCHPATH"}


def _loose(entry: TocEntry) -> bool:
    """An entry without a catalog identity of its own (COMMENT, ACL, SEQUENCE SET, …)."""
    return not entry.catalog_oid and not entry.oid and entry.desc not in SESSION_ENTRIES


def select_entries(entries: list[TocEntry], manifest: BackupManifest) -> list[TocEntry]:
    """The archive's entries for exactly what the drop removed, in archive order.

    An entry with a catalog identity (TABLE, SEQUENCE, INDEX, CONSTRAINT, FK CONSTRAINT — inbound
    ones live on the surviving table —, TRIGGER, POLICY, RULE, DEFAULT, VIEW, FUNCTION, …) goes back
    when that object is in the manifest's removal set. TABLE DATA and ROW SECURITY name their table by
    oid. Entries without an identity (COMMENT, ACL, SEQUENCE SET, SEQUENCE OWNED BY, TABLE ATTACH,
    INDEX ATTACH, …) go back with any chosen entry they depend on.
    """
    removed = {(o.classid, o.objid) for o in manifest.removed if o.objsubid == 0}
    relations = {o.objid for o in manifest.removed if o.classid == PG_CLASS and o.objsubid == 0}
    chosen: set[int] = set()
    for e in entries:
        if e.desc in SESSION_ENTRIES:
            chosen.add(e.dump_id)
        elif e.catalog_oid and (e.catalog_oid, e.oid) in removed:
            chosen.add(e.dump_id)
        elif not e.catalog_oid and e.oid and e.oid in relations:
            chosen.add(e.dump_id)
    loose = [e for e in entries if _loose(e)]
    grew = True
    while grew:
        grew = False
        for e in loose:
            if e.dump_id not in chosen and any(d in chosen for d in e.deps):
                chosen.add(e.dump_id)
                grew = True
    return [e for e in entries if e.dump_id in chosen]


def only_entries_for(entries: list[TocEntry], objects: list[RemovedObject]) -> list[TocEntry]:
    """The entries creating ``objects``, with the comments and grants that depend on them."""
    wanted = {(o.classid, o.objid) for o in objects}
    chosen = {e.dump_id for e in entries if e.desc in SESSION_ENTRIES or (e.catalog_oid, e.oid) in wanted}
    creating = {e.dump_id for e in entries if (e.catalog_oid, e.oid) in wanted}
    chosen |= {
        e.dump_id for e in entries if not e.catalog_oid and not e.oid and any(d in creating for d in e.deps)
    }
    return [e for e in entries if e.dump_id in chosen]


def restored_objects(entries: list[TocEntry], manifest: BackupManifest) -> list[RemovedObject]:
    """The removal-set objects the chosen entries create (one per entry with a catalog identity)."""
    by_address = {(o.classid, o.objid): o for o in manifest.removed if o.objsubid == 0}
    out = []
    for e in entries:
        obj = by_address.get((e.catalog_oid, e.oid)) if e.catalog_oid else None
        if obj is not None:
            out.append(obj)
    return out


def not_restorable(entries: list[TocEntry], manifest: BackupManifest) -> list[str]:
    """What CASCADE removed that no chosen entry brings back (e.g. a column typed by a target's row)."""
    covered = {(e.catalog_oid, e.oid) for e in entries if e.catalog_oid}
    covered |= {(PG_CLASS, e.oid) for e in entries if not e.catalog_oid and e.oid}
    by_description = {o.description: o for o in manifest.removed}
    missing = []
    for c in manifest.cascade:
        obj = by_description.get(c.identity)
        if obj is None or (obj.classid, obj.objid) not in covered:
            where = f" on {c.owner_table}" if c.owner_table else ""
            missing.append(f"{c.kind} {c.name}{where}")
    return missing


def split_foreign_keys(entries: list[TocEntry]) -> tuple[list[TocEntry], list[TocEntry]]:
    """(what pg_restore replays, the FK CONSTRAINT entries and the comments on them).

    Adding a foreign key with validation holds SHARE ROW EXCLUSIVE on both tables while it scans the
    referencing one: writes to ``credits`` would wait for the whole scan. So the keys go back after
    pg_restore's transaction, NOT VALID (no scan), and are validated one by one (writes go on).
    """
    keys = {e.dump_id for e in entries if e.desc == "FK CONSTRAINT"}
    later = {e.dump_id for e in entries if e.dump_id in keys or (not e.catalog_oid and set(e.deps) & keys)}
    return [e for e in entries if e.dump_id not in later], [e for e in entries if e.dump_id in later]


def entry_names(entries: list[TocEntry]) -> list[str]:
    """'DESC schema name' of each entry but pg_restore's session settings, as the reports show them."""
    return [f"{e.desc} {e.rest.rsplit(' ', 1)[0]}" for e in entries if e.desc not in SESSION_ENTRIES]
