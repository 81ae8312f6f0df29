"""What the drop step does inside its transaction, as plain functions over an open connection.

The foreign keys the drop removes first (the targets' own, to their parents, and the inbound ones
the operator allowed) and the order it locks the other tables in; the rechecks under its lock — new
dependants, the targets' contents against the backup's checksums, the run lock still held; the
ledger it writes in the same transaction; and, when the connection is lost during COMMIT, reading
back from the catalog and the ledger what really happened. ``tasks/drop.py`` composes them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from psycopg2 import sql
from sqlalchemy.engine import Connection

from safedrop.errors import ChangedSinceBackup, ConnectionFailed, DropFailed, DropStopped
from safedrop.migration import TableName
from safedrop.pg import queries
from safedrop.pg.catalog import table_status
from safedrop.pg.checksums import checksum_methods, pin_text_settings, target_contents
from safedrop.pg.database import Database, connect
from safedrop.pg.rowcounts import count_rows
from safedrop.results import BackupResult, DependencyResult, TableChecksum


def unquote_qualified(text: str) -> TableName | None:
    """``schema.table`` as quote_ident() printed it, back into its parts."""
    return TableName.from_qualified(text)


# --------------------------------------------------------------------------------------------------
# The step
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ForeignKeyDrop:
    statement: sql.Composed
    label: str
    direction: str  # "outbound" (on a target) or "inbound" (on another table, allowed to go)
    constraint_name: str
    other_table: TableName | None  # the non-target table whose lock the drop needs


def foreign_keys_to_drop(
    conn: Connection, oids: dict[TableName, int], approved: DependencyResult
) -> list[ForeignKeyDrop]:
    """The targets' outbound FKs and the allowed inbound ones: dropped first, inside the drop transaction."""
    fks = queries.rows(conn, "foreign_keys_to_predrop", oids=list(oids.values()))
    allowed_inbound = {o.name for o in approved.cascade if o.kind == "foreign key" and o.allowed}
    out = []
    for fk in fks:
        if fk["direction"] == "inbound" and fk["constraint_name"] not in allowed_inbound:
            continue  # not approved: the in-lock recheck will stop the run
        out.append(
            ForeignKeyDrop(
                statement=sql.SQL("ALTER TABLE {} DROP CONSTRAINT IF EXISTS {}").format(
                    sql.Identifier(fk["schema_name"], fk["table_name"]), sql.Identifier(fk["constraint_name"])
                ),
                label=f"foreign key {fk['constraint_name']} on {fk['on_table']} "
                f"(references {fk['references_table']})",
                direction=fk["direction"],
                constraint_name=fk["constraint_name"],
                other_table=unquote_qualified(fk["references_table"])
                if fk["direction"] == "outbound"
                else TableName(fk["schema_name"], fk["table_name"]),
            )
        )
    return out


def parent_groups(fk_drops: list[ForeignKeyDrop], rotation: int) -> list[list[ForeignKeyDrop]]:
    """The foreign-key drops grouped by the other table they lock; the groups rotated by ``rotation``."""
    groups: dict[TableName | None, list[ForeignKeyDrop]] = {}
    for fk in fk_drops:
        groups.setdefault(fk.other_table, []).append(fk)
    ordered = list(groups.values())
    if ordered:
        k = rotation % len(ordered)
        ordered = ordered[k:] + ordered[:k]
    return ordered


def needs_no_cascade(now: DependencyResult, fk_drops: list[ForeignKeyDrop]) -> bool:
    """Whether, once the foreign keys are gone, ``DROP TABLE … RESTRICT`` removes exactly the approved set."""
    inbound = {fk.constraint_name for fk in fk_drops if fk.direction == "inbound"}
    return all(o.kind == "foreign key" and o.name in inbound for o in now.cascade if o.needs_cascade)


_RELATION_KINDS = {
    "table",
    "view",
    "materialized view",
    "partition",
    "inheritance child table",
    "foreign table",
}


def cascade_relations(now: DependencyResult) -> list[TableName]:
    """The relations outside the targets that DROP … CASCADE locks: those it removes, and the tables
    owning what it removes (a policy's, a rule's, a column's table)."""
    names = {o.owner_table for o in now.cascade if o.owner_table}
    names |= {o.name for o in now.cascade if o.kind in _RELATION_KINDS}
    return sorted({t for t in map(unquote_qualified, names) if t is not None})


def deadlock_timeout_s(conn: Connection) -> float:
    value = conn.exec_driver_sql(
        "SELECT extract(epoch FROM current_setting('deadlock_timeout')::interval)"
    ).scalar()
    return float(value or 1.0)


def oids_of(conn: Connection, tables: list[TableName]) -> list[int]:
    return list(oids_by_table(conn, tables).values())


def oids_by_table(conn: Connection, tables: list[TableName]) -> dict[TableName, int]:
    """The oid of each table that exists (those that do not are left out)."""
    if not tables:
        return {}
    return {t: r["oid"] for t, r in zip(tables, table_status(conn, tables), strict=True) if r["oid"]}


def stop_if_changed(changes: list[str]) -> None:
    """Anything not approved appeared since the prechecks: stop with nothing dropped."""
    if changes:
        raise DropFailed(
            f"the database changed since the prechecks ({'; '.join(changes)}); nothing was dropped — "
            "re-run so the checks and the backup see it"
        )


def changed_while_waiting(detail: str) -> DropFailed:
    return DropFailed(
        f"the database changed while the drop waited for its lock ({detail}); nothing was dropped — "
        "re-run so the checks and the backup see it"
    )


def stop_if_run_lock_lost(conn: Connection, run_lock_pid: int | None) -> None:
    """The run lock lives in another session of this run; if that session ended, so did the lock."""
    if run_lock_pid is None:
        return
    if not queries.one(conn, "advisory_lock_held", pid=run_lock_pid)["held"]:
        raise DropStopped(
            f"safedrop's run lock was lost: its session (pid {run_lock_pid}) has ended "
            "(idle_session_timeout, a DBA, or the network), so another run may be working on this "
            "database; nothing was dropped — re-run"
        )


def _plural(n: int, word: str = "row") -> str:
    return f"{n:,} {word}{'' if n == 1 else 's'}"


def content_changes(conn: Connection, backed_up: list[TableChecksum], txid_snapshot: str | None) -> list[str]:
    """What was written to the targets since the backup's snapshot (empty: every row is in the archive).

    The proof, per target and in one scan: the same row count and the same hash of every row's xmin as
    in the dump's snapshot — every row written since, by any transaction or subtransaction, carries an
    xid no backed-up row carries — and, as a second proof, the same content checksum. Whatever the
    column types (numeric 1.0 → 1.00 and citext case changes hash equal), a committed write shows in the
    xmins. How many rows were written since is then counted by xmin against the snapshot (64-bit).
    """
    if not txid_snapshot or any(t.xmins is None for t in backed_up):
        return [
            "the backup records no row xmins to prove later writes against (a manifest from an older "
            "safedrop); nothing was dropped — re-run to take a new backup"
        ]
    pin_text_settings(conn)
    tables = [TableName(t.schema_name, t.table_name) for t in backed_up]
    now = target_contents(conn, tables, methods=checksum_methods(backed_up))
    changed = [
        (t, table, now[table])
        for t, table in zip(backed_up, tables, strict=True)
        if table in now
        and (now[table].rows, now[table].xmins, now[table].checksum) != (t.rows, t.xmins, t.checksum)
    ]
    if not changed:
        return []
    rows = queries.rows(
        conn,
        "rows_written_since",
        schemas=[table.schema for _, table, _ in changed],
        names=[table.name for _, table, _ in changed],
        snapshot=txid_snapshot,
    )
    written_since = {TableName(r["schema_name"], r["table_name"]): int(r["written"]) for r in rows}
    out = []
    for t, table, seen in changed:
        written = written_since.get(table, 0)
        deleted = max(t.rows - seen.rows, 0)
        if written:
            line = (
                f"{_plural(written)} of {t.name} {'was' if written == 1 else 'were'} written after the backup"
            )
            out.append(line + (f" (and {_plural(deleted)} deleted)" if deleted else ""))
        elif deleted:
            out.append(
                f"{_plural(deleted)} of {t.name} {'was' if deleted == 1 else 'were'} deleted after the backup"
            )
        elif seen.xmins != t.xmins or seen.rows != t.rows:
            out.append(
                f"rows of {t.name} were written after the backup (their row versions are not those the "
                "backup saw)"
            )
        else:
            out.append(
                f"the content checksum of {t.name} differs from the backup's although its row versions are "
                "the backup's"
            )
    return out


def ensure_ledger(conn: Connection) -> None:
    """safedrop's ledger, created on first use (in the drop's transaction: gone again if it rolls back)."""
    if not queries.one(conn, "ledger_status")["ledger_exists"]:
        conn.exec_driver_sql(queries.load("ledger_setup").text)


def write_ledger(conn: Connection, tables: list[TableName], **entry) -> None:
    """One ledger row per dropped table, in the drop's own transaction."""
    for table in tables:
        queries.rows(
            conn,
            "ledger_record",
            schema_name=table.schema,
            table_name=table.name,
            **{**entry, "row_count": entry["row_count"].get(table.qualified, 0)},
        )


def outcome_after_lost_commit(
    db: Database,
    present: list[TableName],
    *,
    backend_pid: int | None,
    flow_run_id: str | None,
    record_in_ledger: bool,
    patience_s: float = 60,
) -> bool:
    """Whether a drop whose COMMIT lost its connection committed: read back from the catalog and ledger.

    Waits (within ``patience_s``) until the drop's old session has ended, so a COMMIT still under way
    cannot be mistaken for a rollback. Raises DropFailed when the truth cannot be read.
    """
    deadline = time.monotonic() + patience_s
    while True:
        try:
            with connect(db) as conn:
                if backend_pid is None or not queries.one(conn, "backend_alive", pid=backend_pid)["alive"]:
                    status = table_status(conn, present)
                    ledger = ledger_rows_of(conn, present, flow_run_id) if record_in_ledger else None
                    break
        except ConnectionFailed:
            pass
        if time.monotonic() > deadline:
            names = ", ".join(t.qualified for t in present)
            raise DropFailed(
                "the connection was lost during the drop's COMMIT and the database could not be read "
                f"again within {patience_s:g} s to tell whether it committed; check whether {names} still "
                "exist (safedrop plan tells) before anything else"
            )
        time.sleep(0.1)  # a cancelled session usually ends within milliseconds
    gone = [r["qualified"] for r in status if r["oid"] is None]
    if not gone:
        return False
    if len(gone) == len(present) and (ledger is None or ledger == len(present)):
        return True
    raise DropFailed(
        "the connection was lost during the drop's COMMIT and the database now disagrees with itself: "
        f"{', '.join(gone)} gone, {len(present) - len(gone)} target(s) still there, "
        f"{ledger if ledger is not None else 'no'} ledger entries of this run; inspect it before "
        "anything else"
    )


def ledger_rows_of(conn: Connection, tables: list[TableName], flow_run_id: str | None) -> int:
    if not queries.one(conn, "ledger_status")["ledger_exists"]:
        return 0
    rows = queries.rows(
        conn, "ledger_lookup", schemas=[t.schema for t in tables], names=[t.name for t in tables]
    )
    return sum(1 for r in rows if flow_run_id is None or r["flow_run_id"] == flow_run_id)


def recheck_contents(
    conn: Connection,
    present: list[TableName],
    backed_up: list[TableChecksum],
    backup: BackupResult | None,
    expected_rows: dict[str, int],
) -> str:
    """Under EXCLUSIVE: the targets hold what the backup holds (else: what the prechecks counted)."""
    if backup is not None:
        in_archive = {TableName(t.schema_name, t.table_name) for t in backup.targets}
        missing = [t.qualified for t in present if t not in in_archive]
        if missing:
            raise DropStopped(
                f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not in the backup "
                f"{backup.path}; nothing was dropped — re-run to take a backup of every target"
            )
    if backed_up:
        changes = content_changes(conn, backed_up, backup.txid_snapshot if backup else None)
        if changes:
            raise ChangedSinceBackup(
                f"{'; '.join(changes)}; nothing was dropped — re-run so the backup holds every row "
                "(stop the application's writes to the targets first)"
            )
        return (
            f"no row of {len(backed_up)} target(s) was written after the backup's snapshot (xmin), "
            "row counts and content checksums match the backup"
        )
    rows_now = count_rows(conn, present)
    changed = {t: (expected_rows.get(t), n) for t, n in rows_now.items() if expected_rows.get(t) != n}
    if changed:
        detail = ", ".join(f"{t} had {a} rows, now {b}" for t, (a, b) in changed.items())
        raise DropFailed(
            f"rows changed since the prechecks ({detail}); nothing was dropped — re-run so the "
            "backup and checks see them"
        )
    return f"row counts of {len(present)} target(s) match the prechecks"
