"""What each step found, and the run report that the CLI prints and the summary artifact shows."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

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
    target_rows: dict[str, int]
    keep_rows: dict[str, int]
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


class CodeReference(BaseModel):
    path: str  # relative to the scanned root
    root: str
    line: int
    column: int
    identifier: str
    text: str


class CodeScanResult(StepResult):
    status: Literal["done", "skipped"]
    roots: list[str]
    references: list[CodeReference]
    files_scanned: int | None = None


class BackupResult(StepResult):
    path: str
    bytes: int
    sha256: str
    pg_dump_version: str
    duration_s: float
    tables_in_archive: list[str]


class DropResult(StepResult):
    dropped: list[str]
    removed_by_cascade: list[str]
    duration_s: float
    lock_timeout_ms: int  # the first attempt's; later attempts grow
    attempts: int = 1
    lock_timeouts: int = 0


class SurvivorCheck(BaseModel):
    table: str
    exists: bool
    rows_before: int | None
    rows_after: int | None


class VerificationResult(StepResult):
    targets_gone: list[str]
    targets_present: list[str]
    survivors: list[SurvivorCheck]


class BackupSummary(BaseModel):
    path: str
    bytes: int
    sha256: str


class RunReport(BaseModel):
    """The whole run, as `safedrop … --json` prints it."""

    status: Status
    reasons: list[str] = Field(default_factory=list)
    warnings: list[str] = Field(default_factory=list)
    migration: str
    dry_run: bool
    database: str | None = None
    server_version: str | None = None
    targets: list[TableStatus] = Field(default_factory=list)
    keep: list[TableStatus] = Field(default_factory=list)
    inbound_foreign_keys: list[ForeignKeyIn] = Field(default_factory=list)
    cascade: list[CascadeObject] = Field(default_factory=list)
    untracked: list[UntrackedReference] = Field(default_factory=list)
    activity: list[TableActivity] = Field(default_factory=list)
    code_scan: Literal["done", "skipped", "not-run"] = "not-run"
    code_references: list[CodeReference] = Field(default_factory=list)
    backup: BackupSummary | None = None
    dropped: list[str] = Field(default_factory=list)
    verification: VerificationResult | None = None
    flow_run_id: str | None = None
    started_at: str | None = None
    duration_s: float | None = None

    @property
    def exit_code(self) -> int:
        return {"ready": 0, "succeeded": 0, "already-applied": 0, "stopped": 3, "failed": 1}[self.status]
