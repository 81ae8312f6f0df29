"""The flow's one parameter model: it becomes the run form in the Prefect UI."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from safedrop.checkinput import (
    NO_SECRET_URL_PATTERN,
    display_url,
    is_http_url,
    sql_check_problem,
    url_secret_problem,
)
from safedrop.migration import Migration

# Both flows find the database the same way: the URL itself is never a parameter.
DATABASE_SECRET_BLOCK = Field(
    "safedrop-database-url",
    description="Name of a Prefect Secret block holding the database URL: then the only source — a block "
    "that does not exist, cannot be read or holds no PostgreSQL URL stops the run, never falling back to "
    "another database. Empty (null) with no database_url_env: DATABASE_URL from the worker's environment, "
    "then from a .env file. The URL itself is never a parameter.",
)
# ... or from an environment variable of the machine that runs the flow, named by a parameter (a fleet's
# databases whose fleet entry says url_env).
DATABASE_URL_ENV = Field(
    None,
    description="Name of an environment variable, on the machine that runs the flow (the worker), "
    "holding the database URL. When given it is the only place the URL is taken from (no Secret block, "
    "no DATABASE_URL fallback): a missing variable stops the run. The URL itself is never a parameter.",
    pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
    max_length=128,
)


class DropParameters(BaseModel):
    """What to drop, what must survive, and how carefully."""

    # an error never repeats the value: a refused check URL may hold a token
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)

    migration: str = Field(
        description="Migration to apply: a name in sql/ (without .sql) or a path to a .sql file holding "
        "only DROP TABLE statements. The targets are read from this file.",
        min_length=1,
    )
    target_schema: str = Field(
        "public",
        description="Schema for table names the migration does not qualify.",
        min_length=1,
        max_length=63,
    )
    keep: list[str] | None = Field(
        None,
        description="Tables that must survive the drop (schema.table or table). Each must exist before "
        "the drop and keep its row count after it; a typo here stops the run. Not given (null): the "
        "migration's own list, `keep` in its [safedrop] settings; an empty list checks none.",
    )
    code_paths: list[str] | None = Field(
        None,
        description="The application's code to scan for references to the targets: local paths, or git "
        "URLs (https://, ssh://, git@host:org/repo.git, file://) with an optional #BRANCH, #TAG or "
        "#COMMIT, fetched shallow for the run. Never put credentials in a URL: use code_secret_block. "
        "Not given (null): the migration's own code source, `code_paths` and `code_secret_block` in its "
        "[safedrop] settings. Empty list: a dry run warns; a run that would drop stops, unless "
        "code_policy is 'skip'.",
    )
    code_policy: Literal["fail", "warn", "skip"] = Field(
        "fail",
        description="What code references do: 'fail' stops the run, 'warn' only reports them. 'skip': "
        "do not look at the code at all (the summary warns that it was not scanned).",
    )
    code_secret_block: str | None = Field(
        None,
        description="Name of a Prefect Secret block holding the credential for private git code sources: "
        "an HTTPS token (or USER:TOKEN) or an SSH private key. The credential itself is never a parameter. "
        "When code_paths is not given, the migration's own (with its code_paths).",
    )
    code_include: list[str] = Field(
        default_factory=list,
        description="Globs (ripgrep syntax) limiting the code scan to matching files; empty: every file.",
    )
    code_exclude: list[str] = Field(
        default_factory=list,
        description="Extra globs the code scan skips, on top of the defaults (migrations, docs, "
        "vendored and build directories, and whatever .gitignore says).",
    )
    allow_cascade: list[str] = Field(
        default_factory=list,
        description="Objects outside the targets that CASCADE may remove, by the name the report prints "
        "(e.g. a view public.orders_overview, or a foreign key order_lines_order_id_fkey).",
    )
    allow_nonempty: bool = Field(
        False,
        description="Operator's consent to drop targets that still hold rows (the backup is then "
        "mandatory and verified). Off: any row in a target stops the run.",
    )
    rehearse: bool = Field(
        False,
        description="Also prove the CASCADE prediction: copy the schema into a scratch database, run the "
        "migration there in a rolled-back transaction, and compare object for object (needs a superuser).",
    )
    dry_run: bool = Field(
        False, description="Run every precheck and report; take no backup and drop nothing."
    )
    backup_dir: str | None = Field(
        None,
        description="Where pg_dump archives go: s3://BUCKET/PREFIX (object storage, the standard AWS "
        "credential chain; AWS_ENDPOINT_URL for MinIO, Ceph, R2 …) — the backup outlives the worker and "
        "any machine restores it — or a directory on the machine that runs the flow (created 0700; files "
        "0600). Empty: $SAFEDROP_BACKUP_DIR of the worker's environment, else "
        "~/.local/share/safedrop/backups — never inside the code checkout.",
    )
    backup_credentials_block: str = Field(
        "",
        description="The name of a prefect-aws AwsCredentials (or MinIOCredentials: minio-credentials/NAME) "
        "block whose keys, role, region and endpoint reach an s3:// backup_dir. Empty: the worker's "
        "standard AWS credential chain (environment, profile, instance or pod role).",
    )
    backup_encryption: str = Field(
        "",
        description="Server-side encryption of an archive in object storage: empty (the bucket's default), "
        "'AES256' (SSE-S3), 'aws:kms' or 'aws:kms:KEY_ID'. Recorded in the manifest.",
    )
    backup_timeout_s: int = Field(
        3600,
        ge=10,
        le=7 * 24 * 3600,
        description="pg_dump (and the optional scratch restore) is stopped after this long, and the run "
        "stops with nothing dropped.",
    )
    backup_scope: Literal["database", "targets"] = Field(
        "database",
        description="'database': the whole database. 'targets': every definition of the database (so "
        "views and foreign keys CASCADE removes can come back) but only the targets' rows (partitions "
        "included) — far faster on a large database. Either can be restored by restore-dropped-tables.",
    )
    backup_format: Literal["custom", "directory"] = Field(
        "custom",
        description="pg_dump archive format: 'custom' (one file) or 'directory' (one file per table; "
        "allows parallel dumps with backup_jobs).",
    )
    backup_jobs: int = Field(
        1, ge=1, le=16, description="Parallel pg_dump workers (directory format only; 1 = no parallelism)."
    )
    backup_compression: int = Field(
        1,
        ge=0,
        le=9,
        description="gzip level of the archive. 1 (the default) measured ~2.5x faster than pg_dump's "
        "default level for ~7% more bytes on realistic data; 0 = uncompressed.",
    )
    verify_restore: bool = Field(
        False,
        description="Also restore the definitions and the targets' rows into a scratch database "
        "(safedrop_verify_<random>, dropped afterwards) and compare row counts and checksums with the "
        "manifest before the drop. Needs CREATEDB.",
    )
    database_secret_block: str | None = DATABASE_SECRET_BLOCK
    database_url_env: str | None = DATABASE_URL_ENV
    lock_timeout_ms: int = Field(
        500,
        ge=50,
        le=60_000,
        description="lock_timeout of the first drop attempt, in milliseconds. On a lock timeout the "
        "attempt rolls back (holding nothing) and retries with a longer timeout, backoff and jitter. "
        "Short, so queries queued behind a waiting DROP never wait long.",
    )
    max_lock_timeout_ms: int = Field(
        3000,
        ge=50,
        le=60_000,
        description="The largest lock_timeout the retries grow to: the longest any query can queue "
        "behind the drop. Keep it above deadlock_timeout (1 s) so a running autovacuum yields.",
    )
    lock_wait_budget_s: float = Field(
        120,
        gt=0,
        le=3600,
        description="Total time the drop may spend retrying for its locks before it gives up with "
        "nothing dropped and names the blocking sessions; also the longest the cleanup check waits to "
        "count a table someone holds exclusively.",
    )
    statement_timeout_s: int = Field(
        60, ge=1, le=3600, description="statement_timeout for the drop transaction, in seconds."
    )
    approval: Literal["required", "skip"] = Field(
        "required",
        description="'required': after the prechecks and the backup the run pauses and shows the plan "
        "until an operator approves it in the Prefect UI. 'skip': no pause (the local CLI, or a "
        "scheduled deployment that explicitly says so).",
    )
    approval_timeout_s: int = Field(
        3600,
        ge=10,
        le=7 * 24 * 3600,
        description="How long to wait for approval; then the run stops with nothing dropped.",
    )
    expected_plan_digest: str | None = Field(
        None,
        description="Set by the fleet flow: the plan digest the operator approved for this database (the "
        "database, its targets' row counts, what CASCADE removes, the untracked references). Right after "
        "the prechecks, under the run lock and before the backup, a different digest stops the run with "
        "nothing changed. Empty: no such check.",
        pattern=r"^[0-9a-f]{64}$",
    )
    expected_system_identifier: str | None = Field(
        None,
        description="Set by the fleet flow: the system identifier (pg_control_system()) of the database "
        "its plan approved. Right after connecting, a run that finds itself connected to another cluster "
        "stops before the backup with nothing changed. Empty: no such check.",
        pattern=r"^[0-9]+$",
    )
    check_sql: list[str] = Field(
        default_factory=list,
        description="Smoke checks after the drop: SQL queries that must return true, or no rows. Each is "
        "exactly one statement (a second one, or COMMIT/BEGIN/ROLLBACK, is refused), run in a read-only "
        "session and transaction with check_timeout_s, and rolled back. One failing ends the run Failed "
        "with the restore command.",
    )
    check_urls: list[str] = Field(
        default_factory=list,
        description="Smoke checks after the drop: HTTP(S) URLs (e.g. the application's health endpoint) "
        "that must answer 2xx. One failing ends the run Failed with the restore command. Never a URL with "
        "a secret (user:password@, or a token such as ?token= or ?api_key=): it is refused — name it with "
        "check_url_envs or check_url_secret_blocks instead.",
        json_schema_extra={"items": {"type": "string", "pattern": NO_SECRET_URL_PATTERN}},
    )
    check_url_envs: list[str] = Field(
        default_factory=list,
        description="Smoke checks after the drop: names of environment variables, on the machine that runs "
        "the flow, each holding an HTTP(S) URL that must answer 2xx — for a URL that carries a secret. Read "
        "at check time; reports show only the variable's name and the URL's scheme and host.",
        max_length=20,
    )
    check_url_secret_blocks: list[str] = Field(
        default_factory=list,
        description="Smoke checks after the drop: names of Prefect Secret blocks, each holding an HTTP(S) "
        "URL that must answer 2xx — for a URL that carries a secret. Read at check time; reports show only "
        "the block's name and the URL's scheme and host.",
        max_length=20,
    )
    check_timeout_s: float = Field(
        30, gt=0, le=600, description="How long each smoke check may take before it counts as failed."
    )

    @field_validator("check_sql")
    @classmethod
    def _one_statement_each(cls, queries: list[str]) -> list[str]:
        for query in queries:
            problem = sql_check_problem(query)
            if problem:
                raise ValueError(f"check_sql: {problem}: give each its own entry")
        return queries

    @field_validator("check_urls")
    @classmethod
    def _no_secret_in_urls(cls, urls: list[str]) -> list[str]:
        for url in urls:
            if not is_http_url(url):
                raise ValueError(f"check_urls: {display_url(url)!r} is not an http(s) URL")
            secret = url_secret_problem(url)
            if secret:
                raise ValueError(
                    f"check_urls: {display_url(url)} {secret}; a URL holding a secret is never a parameter: "
                    "name an environment variable holding it in check_url_envs, or a Prefect Secret block "
                    "in check_url_secret_blocks"
                )
        return urls

    @field_validator("check_url_envs")
    @classmethod
    def _variable_names(cls, names: list[str]) -> list[str]:
        for name in names:
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,127}", name):
                raise ValueError(f"check_url_envs: {name[:40]!r} is not an environment variable name")
        return names

    @field_validator("check_url_secret_blocks")
    @classmethod
    def _block_names(cls, names: list[str]) -> list[str]:
        for name in names:
            if not name.strip() or len(name) > 200:
                raise ValueError("check_url_secret_blocks: each is the name of a Prefect Secret block")
        return names

    @model_validator(mode="after")
    def _jobs_need_directory_format(self) -> DropParameters:
        if self.backup_jobs > 1 and self.backup_format != "directory":
            raise ValueError("backup_jobs > 1 needs backup_format 'directory'")
        return self

    def for_migration(self, migration: Migration) -> DropParameters:
        """These parameters with what the run did not give taken from the migration's own settings: the
        tables to keep, and the code source (code_paths with its code_secret_block). A migration file
        without settings has neither: no table to keep, no code source."""
        settings = migration.settings
        update: dict[str, object] = {}
        if self.keep is None:
            update["keep"] = list(settings.keep) if settings else []
        if self.code_paths is None:
            update["code_paths"] = list(settings.code_paths) if settings else []
            if self.code_secret_block is None and settings:
                update["code_secret_block"] = settings.code_secret_block
        return self.model_copy(update=update)


class RestoreParameters(BaseModel):
    """Which backup to restore the dropped tables from, into which database."""

    model_config = ConfigDict(extra="forbid")

    backup_path: str = Field(
        ...,
        description="Which backup to restore from: the archive the drop's backup step wrote (an "
        "s3://BUCKET/PREFIX/NAME.dump object, a .dump file or a .dumpdir directory), its file name in the "
        "worker's backup directory ($SAFEDROP_BACKUP_DIR, else ~/.local/share/safedrop/backups), or the id "
        "of the flow run that dropped the tables (its archive is found there — in a bucket, anywhere below "
        "the prefix — by its manifest). The manifest <archive>.manifest.json must be beside it: it says "
        "what to restore and proves the archive is intact.",
        min_length=1,
    )
    backup_credentials_block: str = Field(
        "",
        description="The name of a prefect-aws AwsCredentials (or minio-credentials/NAME) block to read an "
        "s3:// backup with. Empty: the worker's standard AWS credential chain.",
    )
    database_secret_block: str | None = DATABASE_SECRET_BLOCK
    database_url_env: str | None = DATABASE_URL_ENV
    no_owner: bool = Field(
        False,
        description="Restore without setting each object's owner (for a role that may not take the "
        "original owners' role); the restoring role then owns what it creates.",
    )
    dry_run: bool = Field(
        False,
        description="Check the archive, its manifest and the database, and list what would be restored; "
        "change nothing.",
    )
    into_other_database: bool = Field(
        False,
        description="Restore into a database other than the one the backup was taken of (another name, or "
        "the same name on another cluster). Off: such a restore is refused with nothing changed.",
    )
    timeout_s: int = Field(
        3600, ge=10, le=24 * 3600, description="pg_restore is stopped (and rolled back) after this long."
    )
    lock_timeout_ms: int = Field(
        500,
        ge=50,
        le=60_000,
        description="How long, in milliseconds, the restore's first attempt may wait for any one lock (on "
        "a surviving table, such as one the restored foreign keys point at) before it rolls back, holding "
        "nothing, and retries with a longer wait, backoff and jitter. Short, so queries queued behind a "
        "waiting restore never wait long. Also the first lock_timeout of adding and of validating each "
        "foreign key.",
    )
    max_lock_timeout_ms: int = Field(
        3000,
        ge=50,
        le=60_000,
        description="The longest lock wait the retries grow to: the longest any query can queue behind the "
        "restore. Keep it above deadlock_timeout (1 s) so a running autovacuum yields.",
    )
    lock_wait_budget_s: float = Field(
        120,
        gt=0,
        le=3600,
        description="Total time to keep retrying for locks: for the tables (then it stops with nothing "
        "restored and names the blocking sessions), for adding the foreign keys, and for validating each.",
    )
