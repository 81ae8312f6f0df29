"""A fleet file: one migration, many databases, and how to roll it out across them.

    migration: drop_credit_allocation_tables
    keep: [credits, credit_transactions, credit_purchases, credit_usage, credit_configurations]
    code_paths: ["https://github.com/acme/wrapper-backend.git#main"]
    rollout: {canary: [eu-staging], max_parallel: 4, on_error: stop}
    databases:
      - {name: eu-staging, url_env: EU_STAGING_DATABASE_URL}
      - {name: eu-1, secret_block: eu-1-database-url}

Each database says where a worker finds its URL — a Prefect Secret block by name, or the name of an
environment variable on the worker — never the URL itself: the file is meant for review and version
control, and its contents become the fleet run's parameters, which Prefect stores in plain text. A URL
or a password where a name belongs is refused without being repeated.

Read strictly, like a migration's ``[safedrop]`` settings: an unknown, missing, misspelt or mistyped
key, a key written twice, a canary that is not one of the databases, two databases with one name or
one URL source — each is one ``FleetFileError`` line (exit 2), nothing started. YAML reads ``no``,
``on`` or ``1.5`` as a boolean or a number; such a value where text belongs is refused with a hint to
quote it, never coerced.

This module also holds the fleet flow's parameter model (its run form in the UI) and the name of the
deployment every database's child run goes to.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from safedrop.errors import MigrationFileError, UsageError
from safedrop.migration import Migration, checked_code_paths, checked_table_names
from safedrop.parameters import DropParameters
from safedrop.store.location import is_s3, parse_s3

FLOW_NAME = "drop-deprecated-tables"  # the single-database flow every child runs
FLEET_FLOW_NAME = "drop-deprecated-tables-fleet"
CHILD_SUFFIX = "-fleet-child"
FLEET_DEPLOYMENT = "fleet"  # drop-deprecated-tables-fleet/fleet

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_BLOCK_NAME = re.compile(r"[a-z0-9]+(-[a-z0-9]+)*")  # what Prefect accepts as a block document name
_DATABASE_NAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?")
_LOOKS_SECRET = ("://", "@")  # a URL (with its password) where a name belongs


class FleetFileError(UsageError):
    """The fleet file is missing, does not parse, or says something it may not. Nothing was started."""


class _Strict(BaseModel):
    # strict: YAML already has types, so `no` is not a name and "4" is not a number
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class RolloutSettings(_Strict):
    """How the databases are taken: canaries first and alone, then the rest a few at a time."""

    canary: list[str] = Field(
        default_factory=list,
        description="Databases (by name) that go first, one at a time and alone, in this order. Nothing "
        "else starts until every canary has succeeded (or was already done); a canary that stops or "
        "fails ends the rollout whatever on_error says. Empty: no canary.",
    )
    max_parallel: int = Field(
        ge=1,
        le=64,
        description="At most this many databases are worked on at once after the canaries (and while "
        "planning).",
    )
    on_error: Literal["stop", "continue"] = Field(
        description="'stop': after a database stops or fails, no further database is started (those "
        "running finish); the rest stay untouched and are reported as not started. 'continue': every "
        "database is attempted and the failures are reported.",
    )


class FleetDatabase(_Strict):
    """One database of the fleet, and where a worker finds its URL."""

    name: str = Field(
        description="A short name for the database (eu-1, us-staging): letters, digits, '.', '_', '-'. "
        "It names the child flow runs and the rows of the fleet's report."
    )
    secret_block: str | None = Field(
        None, description="The Prefect Secret block holding this database's URL (on the server)."
    )
    url_env: str | None = Field(
        None,
        description="The name of an environment variable, on every worker of the pool, holding this "
        "database's URL. The name only: never the URL.",
    )

    @field_validator("name")
    @classmethod
    def _name(cls, name: str) -> str:
        if not _DATABASE_NAME.fullmatch(name):
            raise ValueError(
                f"{name!r} is not a database name: use letters, digits, '.', '_' and '-' (at most 63, "
                "starting and ending with a letter or digit)"
            )
        return name

    @field_validator("url_env")
    @classmethod
    def _env_name(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if any(mark in value for mark in _LOOKS_SECRET):
            raise ValueError(
                "this looks like a database URL, not the name of an environment variable; the fleet "
                "file only names where a worker finds the URL (e.g. url_env: EU_1_DATABASE_URL) — remove "
                "the URL from the file (and from its history: it holds a password)"
            )
        if not _ENV_NAME.fullmatch(value):
            raise ValueError(  # the value is not repeated: it might be a password
                "not an environment variable name: letters, digits and '_', not starting with a digit "
                "(e.g. EU_1_DATABASE_URL)"
            )
        return value

    @field_validator("secret_block")
    @classmethod
    def _block_name(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if any(mark in value for mark in _LOOKS_SECRET):
            raise ValueError(
                "this looks like a database URL, not the name of a Prefect Secret block; put the URL in "
                "a Secret block and name the block here (e.g. secret_block: eu-1-database-url) — remove "
                "the URL from the file (and from its history: it holds a password)"
            )
        if not _BLOCK_NAME.fullmatch(value):
            raise ValueError(  # the value is not repeated: it might be a password
                "not a Prefect block name: lowercase letters, digits and single hyphens "
                "(e.g. eu-1-database-url)"
            )
        return value

    @model_validator(mode="after")
    def _one_source(self) -> FleetDatabase:
        given = [key for key in ("secret_block", "url_env") if getattr(self, key) is not None]
        if len(given) != 1:
            raise ValueError(
                "give exactly one of secret_block (a Prefect Secret block's name) or url_env (the name "
                f"of an environment variable on the workers); found {' and '.join(given) or 'neither'}"
            )
        return self

    @property
    def source(self) -> str:
        """Where the URL comes from, as the report says it (a name, never the URL)."""
        return f"Secret block {self.secret_block}" if self.secret_block else f"${self.url_env}"


class FleetSpec(_Strict):
    """The fleet file: the migration, what must survive, the code to scan, the rollout, the databases."""

    migration: str = Field(
        min_length=1,
        description="The migration every database gets: its name in sql/ (the workers' copy). It must "
        "have [safedrop] settings: its deployments carry the child deployment the fleet runs.",
    )
    keep: list[str] | None = Field(
        None,
        description="Tables that must survive (table or schema.table). Not given: the migration's own "
        "keep list.",
    )
    code_paths: list[str] | None = Field(
        None,
        description="The application's code to scan for references: git URLs (#BRANCH, #TAG, #COMMIT) "
        "each worker fetches, without credentials. Not given: the migration's own code_paths.",
    )
    code_secret_block: str | None = Field(
        None, description="Prefect Secret block with the token or SSH key for a private repository."
    )
    code_policy: Literal["fail", "warn", "skip"] = Field(
        "fail",
        description="What code references do: 'fail' stops a database's run, 'warn' only reports them, "
        "'skip' does not look at the code (the reports say it was not scanned).",
    )
    allow_cascade: list[str] = Field(
        default_factory=list,
        description="Objects outside the targets that CASCADE may remove, in any database of the fleet, by "
        "the name the plan prints (e.g. a view public.orders_overview). A name a database does not have "
        "is only a warning there.",
    )
    backup_dir: str | None = Field(
        None,
        description="Where the fleet's backups go: s3://BUCKET/PREFIX keeps them together — each "
        "database's under PREFIX/<database>/, restorable from any worker. Not given: each worker's own "
        "$SAFEDROP_BACKUP_DIR (a directory there is per machine: prefer a bucket).",
    )
    backup_credentials_block: str | None = Field(
        None,
        description="The prefect-aws credentials block every child reaches an s3:// backup_dir with "
        "(see the drop flow's backup_credentials_block). Not given: each worker's standard AWS chain.",
    )
    rollout: RolloutSettings = Field(description="Canaries, parallelism and what an error does.")
    databases: list[FleetDatabase] = Field(
        min_length=1, description="Every database, in the order the rollout takes them after the canaries."
    )

    @field_validator("keep")
    @classmethod
    def _table_names(cls, names: list[str] | None) -> list[str] | None:
        return checked_table_names(names)

    @field_validator("backup_dir")
    @classmethod
    def _backup_location(cls, value: str | None) -> str | None:
        if value is None or not is_s3(value):
            return value
        try:
            return parse_s3(value, "backup_dir").uri
        except UsageError as exc:
            raise ValueError(str(exc)) from None

    @field_validator("code_paths")
    @classmethod
    def _code_sources(cls, paths: list[str] | None) -> list[str] | None:
        return checked_code_paths(paths)

    @model_validator(mode="after")
    def _consistent(self) -> FleetSpec:
        problems: list[str] = []
        names = [d.name for d in self.databases]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            problems.append(f"database name {', '.join(twice)} is used twice; give each database its own")
        for key in ("secret_block", "url_env"):
            values = [getattr(d, key) for d in self.databases if getattr(d, key)]
            for value in sorted({v for v in values if values.count(v) > 1}):
                owners = [d.name for d in self.databases if getattr(d, key) == value]
                problems.append(
                    f"databases {' and '.join(owners)} both take their URL from {key} {value}; each "
                    "database needs its own"
                )
        if self.code_paths == [] and self.code_policy != "skip":
            problems.append(
                "code_paths is empty, so every database's run would stop with no code to scan; name the "
                "application's repository (a git URL each worker fetches), or say code_policy: skip"
            )
        unknown = [c for c in self.rollout.canary if c not in names]
        if unknown:
            problems.append(f"canary {', '.join(unknown)} is not one of the databases ({', '.join(names)})")
        repeated = sorted({c for c in self.rollout.canary if self.rollout.canary.count(c) > 1})
        if repeated:
            problems.append(f"canary {', '.join(repeated)} is listed twice")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def order(self) -> list[str]:
        """The databases in the order the rollout takes them: the canaries (as listed), then the rest."""
        canary = list(self.rollout.canary)
        return canary + [d.name for d in self.databases if d.name not in canary]

    def database(self, name: str) -> FleetDatabase:
        return next(d for d in self.databases if d.name == name)

    def child_parameters(
        self,
        name: str,
        *,
        dry_run: bool,
        expected_plan_digest: str | None = None,
        expected_system_identifier: str | None = None,
    ) -> dict[str, Any]:
        """The parameters of database ``name``'s child run: the whole ``params`` object (a run's
        parameters replace the deployment's), checked against the single-database flow's model.

        No approval of its own (the fleet's is the approval); a destructive run carries the plan digest
        approved for its database. The URL's source is the only thing that differs between databases:
        a Secret block's name, or an environment variable's name with no Secret block to fall back on.
        """
        database = self.database(name)
        fields: dict[str, Any] = {
            "migration": self.migration,
            "database_secret_block": database.secret_block,
            "database_url_env": database.url_env,
            "approval": "skip",
            "dry_run": dry_run,
            "code_policy": self.code_policy,
        }
        if self.keep is not None:
            fields["keep"] = list(self.keep)
        if self.code_paths is not None:
            fields["code_paths"] = list(self.code_paths)
        if self.code_secret_block is not None:
            fields["code_secret_block"] = self.code_secret_block
        if self.allow_cascade:
            fields["allow_cascade"] = list(self.allow_cascade)
        if self.backup_dir:  # each database's backups in a place of their own
            fields["backup_dir"] = (
                parse_s3(self.backup_dir).child(name).uri
                if is_s3(self.backup_dir)
                else str(Path(self.backup_dir) / name)
            )
        if self.backup_credentials_block:
            fields["backup_credentials_block"] = self.backup_credentials_block
        if expected_plan_digest:
            fields["expected_plan_digest"] = expected_plan_digest
        if expected_system_identifier:
            fields["expected_system_identifier"] = expected_system_identifier
        DropParameters(**fields)  # what the server and the flow will check: fail here, before any run
        return {"params": fields}


class FleetParameters(BaseModel):
    """The fleet flow's one parameter: the fleet file's contents, and how the run goes."""

    model_config = ConfigDict(extra="forbid")

    fleet: FleetSpec = Field(
        description="The fleet file's contents (safedrop fleet run --fleet FILE sends it): migration, "
        "keep, code_paths, rollout and databases. Names only — where each database's URL is, never a URL."
    )
    dry_run: bool = Field(
        False,
        description="Plan only: every database's prechecks (its own dry-run child run), the fleet plan "
        "published; nothing is backed up or dropped.",
    )
    approval: Literal["required", "skip"] = Field(
        "required",
        description="'required': after the plan, the fleet run is suspended until an operator approves "
        "the whole fleet plan once (Resume on its flow run page); each database is then held to the plan "
        "approved for it. 'skip': no approval (safedrop fleet run at a terminal: running it approves).",
    )
    approval_timeout_s: int = Field(
        3600,
        ge=10,
        le=7 * 24 * 3600,
        description="How long to wait for the approval; then the fleet stops with nothing started.",
    )
    poll_interval_s: float = Field(
        1.0,
        ge=0.2,
        le=60,
        description="How often the fleet run looks at its children (and at itself, to pass a cancellation "
        "on to them).",
    )
    child_silence_s: int = Field(
        120,
        ge=60,
        le=3600,
        description="A running database's run sends a heartbeat every 30 s; silent this long, its worker or "
        "machine is taken for gone: the run is marked Crashed and counts as failed (on_error decides what "
        "follows; a re-run finds out from the database what was done).",
    )


def child_deployment(migration: Migration) -> str:
    """``drop-deprecated-tables/<deployment>-fleet-child``: the deployment each database's run goes to.

    A deployment of its own (deployments/deploy.py makes one per migration) because the migration's
    other deployments allow one active run each (a second is cancelled), which would cancel parallel
    children; one database at a time is safedrop's run lock's job (safedrop/pg/runlock.py).
    """
    if migration.settings is None:
        raise MigrationFileError(
            f"migration {migration.path} has no [safedrop] settings, so it has no fleet-child deployment "
            "for a fleet to run; open the file with them (see the README's 'To retire another table')"
        )
    return f"{FLOW_NAME}/{migration.settings.deployment}{CHILD_SUFFIX}"


# --------------------------------------------------------------------------------------------------
# Reading the file
# --------------------------------------------------------------------------------------------------


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a key written twice is an error, not a silent overwrite."""


def _mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)  # type: ignore[no-untyped-call]
        if key in seen:
            raise FleetFileError(f"line {key_node.start_mark.line + 1}: key {key!r} is written twice")
        seen.add(key)
    return loader.construct_mapping(node)  # type: ignore[no-untyped-call]


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


def _where(loc: tuple[Any, ...], data: Any) -> str:
    """``databases[2] (eu-1).url_env`` for pydantic's ``('databases', 1, 'url_env')``."""
    parts: list[str] = []
    node = data
    for part in loc:
        if isinstance(part, int):
            name = node[part].get("name") if isinstance(node, list) and isinstance(node[part], dict) else None
            parts[-1] += f"[{part + 1}]" + (f" ({name})" if isinstance(name, str) else "")
            node = node[part] if isinstance(node, list) else None
        else:
            parts.append(str(part))
            node = node.get(part) if isinstance(node, dict) else None
    return ".".join(parts)


def _problem(error: Any, data: Any) -> str:
    loc = tuple(p for p in error["loc"] if p not in ("function-after",))
    where = _where(loc, data) if loc else ""
    kind = error["type"]
    if kind == "missing":
        return f"{where} is missing"
    if kind == "extra_forbidden":
        return f"unknown key {where}"
    message = error["msg"].removeprefix("Value error, ")
    got = error.get("input")
    if kind in ("string_type", "literal_error") and isinstance(got, bool | int | float):
        message += f" (YAML read {got!r} here: quote it)"  # `name: no`, `on_error: off`
    return f"{where}: {message}" if where else message


def parse_fleet(text: str, source: str) -> FleetSpec:
    """The fleet file's text, read strictly; ``source`` names it in messages."""
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except FleetFileError as exc:
        raise FleetFileError(f"fleet file {source} {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" (line {mark.line + 1})" if mark is not None else ""
        what = getattr(exc, "problem", None) or type(exc).__name__
        raise FleetFileError(f"fleet file {source} does not parse: {what}{line}") from None
    if not isinstance(data, dict):
        raise FleetFileError(
            f"fleet file {source} holds no mapping; expected migration, rollout and databases (see the "
            "README's 'Running a fleet')"
        )
    try:
        return FleetSpec.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(dict.fromkeys(_problem(e, data) for e in exc.errors()))
        raise FleetFileError(f"fleet file {source}: {problems}") from None


def load_fleet(path: str | Path) -> FleetSpec:
    """Read and check a fleet file."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise FleetFileError(f"fleet file {path} does not exist")
    try:
        text = file.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise FleetFileError(f"cannot read fleet file {path}: {exc.__class__.__name__}") from None
    return parse_fleet(text, str(path))
