"""What each step found, and the run report that the CLI prints and the summary artifact shows."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel as _PydanticModel
from pydantic import ConfigDict, Field


class BaseModel(_PydanticModel):
    """A result model whose validator is built when first used, not at import (a plain ``safedrop
    plan`` builds only the models it fills in)."""

    model_config = ConfigDict(defer_build=True)


Status = Literal["ready", "succeeded", "already-applied", "stopped", "failed"]


class StepResult(BaseModel):
    """Common to every step: reasons stop the run, warnings are only reported."""

    reasons: list[str] = Field(default_factory=list)
    warnings: list[str] = Field(default_factory=list)


class TableStatus(BaseModel):
    name: str  # schema-qualified
    exists: bool
    oid: int | None = Field(None, exclude=True)
    owner: str | None = None
    can_drop: bool | None = None
    rows: int | None = None


class DatabaseIdentity(BaseModel):
    """Which database a run is connected to: where its URL came from, and what the server says it is."""

    source: str  # where the URL came from: "--database-url", "Secret block 'x'", "$EU_1_DATABASE_URL", …
    host: str  # as the URL names it
    port: int | None = None
    database: str  # current_database()
    system_identifier: str | None = None  # pg_control_system(): the cluster's identity (None: not readable)

    @property
    def line(self) -> str:
        """``credit_demo on 127.0.0.1:5432 (system 7716…) from --database-url``"""
        port = f":{self.port}" if self.port else ""
        system = (
            f"system {self.system_identifier}" if self.system_identifier else "system identifier unreadable"
        )
        return f"{self.database} on {self.host}{port} ({system}), from {self.source}"

    def differs_from(self, other: DatabaseIdentity) -> str | None:
        """Why ``other`` is not this database (None: the same, as far as both can tell)."""
        if self.database != other.database:
            return f"database {other.database!r}, not {self.database!r}"
        if (
            self.system_identifier
            and other.system_identifier
            and self.system_identifier != other.system_identifier
        ):
            return f"cluster {other.system_identifier}, not {self.system_identifier}"
        return None


class ConnectionResult(StepResult):
    server: str  # user@host:port/db
    server_version: str
    server_version_num: int
    current_user: str
    in_recovery: bool
    targets: list[TableStatus]
    keep: list[TableStatus]
    ledger: Literal["present", "creatable", "unavailable"] = "unavailable"
    already_dropped: list[str] = Field(default_factory=list)  # absent targets the ledger says we dropped
    identity: DatabaseIdentity | None = None

    @property
    def all_targets_absent(self) -> bool:
        return not any(t.exists for t in self.targets)


class ForeignKeyIn(BaseModel):
    constraint: str
    table: str  # the referencing (surviving) table
    target: str


class TableActivity(BaseModel):
    table: str
    scans: int  # sequential + index scans, cumulative since the statistics were reset
    inserts: int
    updates: int
    deletes: int
    scans_since: int | None = None  # since the previous run's reading (our own counting excluded)
    writes_since: int | None = None
    since: str | None = None  # when the previous reading was taken


class ActivityResult(StepResult):
    tables: list[TableActivity]
    previous_at: str | None = None
    stats_reset: str | None = None


class CleanupResult(StepResult):
    target_rows: dict[str, int]  # exact
    keep_rows: dict[str, int]  # exact, except those in keep_estimated
    keep_estimated: dict[str, str] = Field(default_factory=dict)  # table -> why its count is an estimate
    inbound_foreign_keys: list[ForeignKeyIn]


class CascadeObject(BaseModel):
    kind: str  # e.g. "view", "foreign key", "trigger"
    name: str  # schema-qualified, as the report prints it and --allow-cascade takes it
    identity: str  # PostgreSQL's own description (pg_describe_object)
    owner_table: str | None = None  # the surviving table it belongs to, where it has one
    loses_data: bool = False
    restorable: bool = True  # False: an archive cannot bring it back
    allowed: bool = False
    why: str = ""
    needs_cascade: bool = False  # the server announces it: DROP … RESTRICT would refuse to remove it


class UntrackedReference(BaseModel):
    kind: str  # function, procedure, trigger, event trigger, cron job
    name: str  # as the report prints it and --allow-cascade takes it
    owner_table: str | None = None  # a trigger's table
    mentions: str  # the target it mentions
    breaks: str  # what would fail after the drop
    allowed: bool = False

    @property
    def names(self) -> set[str]:
        """Every spelling --allow-cascade accepts for it."""
        out = {self.name, self.name.split("(", 1)[0]}
        if self.owner_table:
            out.add(f"{self.owner_table}.{self.name}")
        return out


class DependencyResult(StepResult):
    cascade: list[CascadeObject]
    untracked: list[UntrackedReference] = Field(default_factory=list)
    removed_total: int = 0  # every object the drop removes, the targets' own parts included
    digest: str = ""  # sha256 of the exact removal set, rechecked inside the drop transaction
    addresses: list[tuple[int, int, int]] = Field(default_factory=list, exclude=True)  # the removal set


class CodeReference(BaseModel):
    path: str  # relative to the scanned root
    root: str
    line: int
    column: int
    identifier: str
    text: str


class CodeSource(BaseModel):
    """One code source that was scanned: a local path, or a git repository at one commit."""

    root: str  # as references name it: the path, or the git URL (no credentials) with its #REF
    kind: Literal["path", "git"]
    url: str | None = None  # git: the URL without user info
    ref: str | None = None  # git: the branch, tag or commit asked for; None: the default branch
    commit: str | None = None  # git: the commit whose files were scanned
    fetch_s: float | None = None  # git: how long the shallow fetch took
    files_read: int | None = None  # files the scan read (after .gitignore, the excludes and includes)


class CodeScanResult(StepResult):
    status: Literal["done", "skipped"]
    roots: list[str]
    references: list[CodeReference]
    sources: list[CodeSource] = Field(default_factory=list)
    files_read: int | None = None  # over every source scanned; None: nothing was scanned


class TableChecksum(BaseModel):
    """A target's contents at backup time (in the dump's own snapshot), compared after a restore."""

    name: str  # schema-qualified, as the report prints it
    schema_name: str
    table_name: str
    relkind: str = "r"  # 'p' for a partitioned table (its rows live in its partitions)
    rows: int
    checksum: str  # sum of the first 64 bits of md5(row::text) over every row (order-independent)
    below: list[str] = Field(default_factory=list)  # partitions / inheritance children, any depth
    leaves: list[str] = Field(default_factory=list)  # a partitioned target's leaf partitions (hold its rows)
    # the sum of a hash of every row's xmin in the dump's snapshot (safedrop.pg.checksums.target_contents):
    # what the drop's recheck proves "no row written since" with; None in older manifests
    xmins: str | None = None


class SequenceState(BaseModel):
    name: str  # schema-qualified
    last_value: int
    is_called: bool


class RemovedObject(BaseModel):
    """One catalog object the drop removes (the targets' own parts included), as of the backup."""

    classid: int
    objid: int
    objsubid: int = 0
    description: str  # pg_describe_object(), the wording of the server's own notices
    type: str  # pg_identify_object_as_address(): how a restore asks whether it exists again
    names: list[str] = Field(default_factory=list)
    args: list[str] = Field(default_factory=list)


class BackupManifest(BaseModel):
    """``<archive>.manifest.json``: the proof of what an archive holds, and what a restore puts back."""

    manifest_version: int = 1
    archive: str  # file (custom) or directory (directory format) name, beside the manifest
    archive_format: Literal["custom", "directory"]
    bytes: int
    sha256: str  # custom: of the file; directory: of its sha256sum-style listing (see files)
    files: dict[str, str] = Field(default_factory=dict)  # directory format: sha256 of each file
    database: str  # current_database() when the backup was taken
    # pg_control_system() of the backed-up cluster (None: a manifest from before safedrop recorded it,
    # or a role that may not read it): with the name, which database a restore belongs in
    system_identifier: str | None = None
    server: str  # user@host:port/dbname, no password
    server_version: str
    server_version_num: int
    pg_dump_version: str
    pg_dump_version_num: int
    scope: Literal["database", "targets"]
    compression: int
    jobs: int = 1
    snapshot: str  # the exported snapshot pg_dump and the checksums shared
    txid_snapshot: str | None = None  # the same snapshot as txid_current_snapshot() printed it
    migration: str | None = None
    created_at: str
    duration_s: float
    flow_run_id: str | None = None
    targets: list[TableChecksum]
    sequences: list[SequenceState] = Field(default_factory=list)
    removed: list[RemovedObject] = Field(default_factory=list)
    cascade: list[CascadeObject] = Field(default_factory=list)
    checksum_method: str = ""
    verified_by_restore: bool = False
    # An archive in object storage: its URI, the object's version (a versioned bucket) and encryption as
    # the store reported them (the bucket's default when safedrop asked for none). None: a local file.
    uri: str | None = None
    version_id: str | None = None
    encryption: str | None = None
    kms_key_id: str | None = None


class BackupResult(StepResult):
    path: str
    bytes: int
    sha256: str
    pg_dump_version: str
    duration_s: float
    tables_in_archive: list[str]
    manifest_path: str = ""  # <archive>.manifest.json: what a restore checks and puts back
    scope: Literal["database", "targets"] = "database"
    archive_format: Literal["custom", "directory"] = "custom"
    compression: int = 1
    targets: list[TableChecksum] = Field(default_factory=list)  # rows and checksum, in the dump's snapshot
    verified_by_restore: bool = False  # restored into a scratch database and compared
    txid_snapshot: str | None = None  # the dump's snapshot: rows whose xmin it does not see came later


class DropResult(StepResult):
    dropped: list[str]
    removed_by_cascade: list[str]
    duration_s: float
    lock_timeout_ms: int  # the first attempt's; later attempts grow
    attempts: int = 1
    lock_timeouts: int = 0
    writes_blocked_ms: float | None = None  # the targets held EXCLUSIVE (reads go on): lock granted → commit
    all_blocked_ms: float | None = None  # the targets held ACCESS EXCLUSIVE: lock granted → commit
    guard: str = ""  # what proved, under ACCESS EXCLUSIVE, that nothing new depended on the targets
    content_check: str = ""  # what proved, under EXCLUSIVE, that the backup holds every row of the targets


class TablePart(BaseModel):
    """One column, constraint, index, trigger or policy of a table, as verification compares them."""

    kind: str
    name: str
    detail: str  # its definition: a change in it is a change of the table
    healthy: bool = True  # an index valid and ready, a constraint validated


class SurvivorCheck(BaseModel):
    table: str
    exists: bool
    rows_before: int | None  # a figure, never a verdict: the table takes writes while the run works
    rows_after: int | None
    rows_before_estimated: str = ""  # why rows_before is the planner's estimate ("" = exact count)
    rows_after_estimated: str = ""
    parts: int = 0  # columns, constraints, indexes, triggers and policies checked
    problems: list[str] = Field(default_factory=list)  # lost or broken since just before the drop
    notes: list[str] = Field(default_factory=list)  # added meanwhile, or unhealthy before the drop too


class VerificationResult(StepResult):
    targets_gone: list[str]
    targets_present: list[str]
    survivors: list[SurvivorCheck]


class SmokeCheck(BaseModel):
    kind: Literal["sql", "url"]
    check: str  # the query, or the URL without credentials or query string
    problem: str = ""  # "" = passed


class SmokeCheckResult(StepResult):
    checks: list[SmokeCheck] = Field(default_factory=list)


class BackupSummary(BaseModel):
    path: str
    bytes: int
    sha256: str


@dataclass(frozen=True)
class RunEnding:
    """How a runbook ended: what a Prefect flow run makes its final state of, and the command line its
    report and exit code. ``data``: the report (completed), or the ``RunEnded`` error carrying it."""

    completed: bool
    name: str  # the state's name: "Completed", "Ready", "Not ready", "Stopped", "Failed", …
    message: str
    data: Any


class RunReport(BaseModel):
    """The whole run, as `safedrop … --json` prints it."""

    status: Status
    reasons: list[str] = Field(default_factory=list)
    warnings: list[str] = Field(default_factory=list)
    migration: str
    dry_run: bool
    database: str | None = None
    # which database, as the server says it (name, system identifier), and where its URL came from
    database_identity: DatabaseIdentity | None = None
    server_version: str | None = None
    targets: list[TableStatus] = Field(default_factory=list)
    keep: list[TableStatus] = Field(default_factory=list)
    inbound_foreign_keys: list[ForeignKeyIn] = Field(default_factory=list)
    cascade: list[CascadeObject] = Field(default_factory=list)
    untracked: list[UntrackedReference] = Field(default_factory=list)
    activity: list[TableActivity] = Field(default_factory=list)
    code_scan: Literal["done", "skipped", "not-run"] = "not-run"
    code_references: list[CodeReference] = Field(default_factory=list)
    code_sources: list[CodeSource] = Field(default_factory=list)
    backup: BackupSummary | None = None
    dropped: list[str] = Field(default_factory=list)
    drop: DropResult | None = None  # how the drop went: attempts, how long the targets were locked
    verification: VerificationResult | None = None
    smoke_checks: SmokeCheckResult | None = None
    flow_run_id: str | None = None
    started_at: str | None = None
    duration_s: float | None = None
    # what a fleet approves for this database (safedrop/fleet/plandigest.py); None before the prechecks ran
    plan_digest: str | None = None

    @property
    def exit_code(self) -> int:
        return {"ready": 0, "succeeded": 0, "already-applied": 0, "stopped": 3, "failed": 1}[self.status]


# --------------------------------------------------------------------------------------------------
# Restore
# --------------------------------------------------------------------------------------------------

RestoreStatus = Literal["restored", "already-restored", "ready", "refused", "failed"]


class RestoreCheck(StepResult):
    """The restore precheck: the archive matches its manifest, and nothing to restore exists yet."""

    archive: str
    manifest: str
    scope: str
    backup_created_at: str
    targets: list[str]
    entries: list[str]  # the TOC entries that will be restored ("DESC schema tag")
    not_restorable: list[str] = Field(default_factory=list)  # removed, but the archive cannot bring back
    present: list[str] = Field(default_factory=list)  # of the objects to restore, those that exist now
    pg_restore_version: str = ""


class ForeignKeyOutcome(BaseModel):
    """A foreign key the restore put back: added NOT VALID (no scan), then validated on its own."""

    name: str  # "credit_usage_allocation_id_fkey on public.credit_usage"
    state: Literal["validated", "not valid", "missing", "not valid in the backup"]
    detail: str = ""  # why it is not validated (or not there), and what to do
    duration_s: float | None = None  # the validation


class RestoreResult(StepResult):
    entries: int
    duration_s: float
    tables_s: float | None = None  # pg_restore's transaction: the tables, their rows and indexes
    attempts: int = 1  # pg_restore runs: each lock timeout rolls one back and retries
    lock_timeouts: int = 0
    lock_timeout_ms: int | None = None  # of the first attempt
    foreign_keys: list[ForeignKeyOutcome] = Field(default_factory=list)


class RestoredTable(BaseModel):
    name: str
    rows_expected: int
    rows_found: int | None
    checksum_matches: bool


class RestoreVerification(StepResult):
    tables: list[RestoredTable]
    sequences: list[str] = Field(default_factory=list)  # "name = last_value (is_called)", as found
    objects_back: int = 0
    foreign_keys: list[str] = Field(default_factory=list)  # "name on table: validated", as found


class RestoreReport(BaseModel):
    """A restore run, as `safedrop restore … --json` prints it."""

    status: RestoreStatus
    reasons: list[str] = Field(default_factory=list)
    warnings: list[str] = Field(default_factory=list)
    backup: str
    database: str | None = None
    dry_run: bool = False
    check: RestoreCheck | None = None
    restore: RestoreResult | None = None
    verification: RestoreVerification | None = None
    flow_run_id: str | None = None
    duration_s: float | None = None

    @property
    def exit_code(self) -> int:
        return {"restored": 0, "already-restored": 0, "ready": 0, "refused": 3, "failed": 1}[self.status]
