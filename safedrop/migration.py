"""A migration file: the DROP TABLE statements it holds, read with PostgreSQL's own parser, and the
``[safedrop]`` settings at its top.

The flow learns its targets from the file; the settings say the rest of what the migration is — the
tables that must survive, the application's code source, its maintenance window, its nightly readiness
report, whether a person approves — so the next deprecated-table migration is one new file in sql/,
and its deployments follow from it (deployments/deploy.py). The settings are TOML in the file's
opening comment, from a ``-- [safedrop]`` line to the first line that is not a ``--`` comment::

    -- Retire legacy_invoice_exports (replaced by invoice_exports).
    -- [safedrop]
    -- deployment = "legacy-invoice-exports"
    -- keep = ["invoices", "invoice_exports"]
    -- code_paths = ["https://github.com/acme/billing-service.git#main"]
    -- approval = "required"
    -- schedule = { cron = "0 4 * * SAT", timezone = "UTC", active = false }
    -- readiness = { cron = "30 2 * * *", timezone = "UTC", active = true }
    DROP TABLE legacy_invoice_exports;

They are read strictly (unknown, missing or mistyped settings are one ``MigrationFileError`` line). A
file without them is still a migration for the command line (``--migration PATH``); it just has no
tables to keep by default and no deployments.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pglast import ast, enums, parse_sql
from pglast.parser import ParseError
from psycopg2 import sql
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from safedrop import SQL_DIR
from safedrop.errors import MigrationFileError, UsageError
from safedrop.sources import is_git_source, parse_git_source

_QUALIFIED = re.compile(r'^("(?:[^"]|"")*"|[^".]+)\.("(?:[^"]|"")*"|[^".]+)$')


@dataclass(frozen=True, order=True)
class TableName:
    schema: str
    name: str

    @property
    def qualified(self) -> str:
        """schema.name as PostgreSQL prints it (quoted only where needed)."""
        return f"{_quote_if_needed(self.schema)}.{_quote_if_needed(self.name)}"

    def __str__(self) -> str:
        return self.qualified

    @classmethod
    def from_qualified(cls, text: str) -> TableName | None:
        """``schema.table`` as quote_ident() printed it (``qualified``), back into its parts."""
        match = _QUALIFIED.match(text)
        if not match:
            return None
        schema, name = (p[1:-1].replace('""', '"') if p.startswith('"') else p for p in match.groups())
        return cls(schema, name)

    @classmethod
    def parse(cls, raw: str, default_schema: str) -> TableName:
        """``table`` or ``schema.table`` as the operator writes it."""
        parts = [p.strip() for p in raw.split(".")]
        if not all(parts) or len(parts) > 2:
            raise UsageError(f"table name {raw!r} is empty or malformed; use table or schema.table")
        return cls(default_schema, parts[0]) if len(parts) == 1 else cls(*parts)


@dataclass(frozen=True)
class DropStatement:
    tables: tuple[TableName, ...]
    if_exists: bool
    cascade: bool


Approval = Literal["required", "skip"]


# cron's five fields: minute, hour, day of month, month, day of week (names as cron spells them)
_CRON_FIELDS = (
    (0, 59, ()),
    (0, 23, ()),
    (1, 31, ()),
    (1, 12, ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")),
    (0, 7, ("sun", "mon", "tue", "wed", "thu", "fri", "sat")),
)
_CRON_PART = re.compile(r"^(?:\*|(?P<a>\w+)(?:-(?P<b>\w+))?)(?:/(?P<step>\d+))?$")


def _cron_value(text: str, low: int, high: int, names: tuple[str, ...]) -> bool:
    if text.lower() in names:
        return True
    return text.isdigit() and low <= int(text) <= high


def _check_cron(cron: str, timezone: str) -> None:
    """The schedule's cron (five fields: lists, ranges, steps, month and day names) and time zone,
    checked without Prefect so that every command reads a migration at the same cost; deploying builds
    Prefect's own CronSchedule from it too."""
    fields = cron.split()
    valid = len(fields) == 5
    for text, (low, high, names) in zip(fields, _CRON_FIELDS, strict=False):
        for piece in text.split(","):
            m = _CRON_PART.match(piece)
            if not m or (m["step"] is not None and int(m["step"]) == 0):
                valid = False
            elif m["a"] and not (
                _cron_value(m["a"], low, high, names)
                and (m["b"] is None or _cron_value(m["b"], low, high, names))
            ):
                valid = False
    if not valid:
        raise ValueError(f'Invalid cron string: "{cron}"')
    try:
        ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f'Invalid timezone: "{timezone}"') from None


class _Settings(BaseModel):
    # strict: TOML already has types, so "false" is not a boolean and 3 is not a string
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class WindowSettings(_Settings):
    """``schedule``: the maintenance window in which the scheduled deployment drops the tables."""

    cron: str
    timezone: str = "UTC"
    active: bool  # whether the schedule is on once deployed: say it, it decides whether tables go
    approval: Approval | None = None  # the window's own approval, else the migration's

    @model_validator(mode="after")
    def _valid_cron(self) -> WindowSettings:
        _check_cron(self.cron, self.timezone)
        return self


class ReadinessSettings(_Settings):
    """``readiness``: when the nightly dry run reports whether the drop would go ahead."""

    cron: str
    timezone: str = "UTC"
    active: bool

    @model_validator(mode="after")
    def _valid_cron(self) -> ReadinessSettings:
        _check_cron(self.cron, self.timezone)
        return self


class MigrationSettings(_Settings):
    """The ``[safedrop]`` settings of a migration file: what the SQL alone does not say."""

    deployment: str
    keep: list[str]
    code_paths: list[str] = Field(min_length=1)
    code_secret_block: str | None = Field(None, min_length=1)
    approval: Approval = "required"
    schedule: WindowSettings
    readiness: ReadinessSettings

    @field_validator("deployment")
    @classmethod
    def _deployment_name(cls, name: str) -> str:
        if not re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", name) or len(name) > 60:
            raise ValueError(
                f"{name!r} is not a deployment name: use lowercase letters, digits and single hyphens "
                '(at most 60), e.g. "legacy-invoice-exports"'
            )
        return name

    @field_validator("keep")
    @classmethod
    def _table_names(cls, names: list[str] | None) -> list[str] | None:
        return checked_table_names(names)

    @field_validator("code_paths")
    @classmethod
    def _code_sources(cls, paths: list[str] | None) -> list[str] | None:
        return checked_code_paths(paths)


def checked_table_names(names: list[str] | None) -> list[str] | None:
    """The tables a settings block names, each a valid (schema.)table; a ValueError for pydantic."""
    for name in names or []:
        try:
            TableName.parse(name, "public")
        except UsageError as exc:
            raise ValueError(str(exc)) from None
    return names


def checked_code_paths(paths: list[str] | None) -> list[str] | None:
    """Code sources: none empty, and no git URL carrying credentials (refused secret-free)."""
    for path in paths or []:
        if not path.strip():
            raise ValueError("a code path is empty")
        if is_git_source(path):
            try:
                parse_git_source(path)
            except UsageError as exc:
                raise ValueError(str(exc)) from None
    return paths


SETTINGS_MARKER = "[safedrop]"


def _uncomment(line: str) -> str | None:
    """The text of a ``--`` comment line, else None."""
    stripped = line.strip()
    return stripped[2:] if stripped.startswith("--") else None


def _settings_text(text: str, path: Path) -> tuple[str, int] | None:
    """The TOML of the file's settings and the 0-based file line it starts on, or None."""
    lines = text.splitlines()
    opening = 0  # lines[:opening]: the comments (and blank lines) before the first statement
    while opening < len(lines) and (not lines[opening].strip() or _uncomment(lines[opening]) is not None):
        opening += 1
    markers = [i for i, line in enumerate(lines) if (_uncomment(line) or "").strip() == SETTINGS_MARKER]
    if not markers:
        return None
    if len(markers) > 1 or markers[0] >= opening:
        where = markers[1] if len(markers) > 1 and markers[0] < opening else markers[0]
        raise MigrationFileError(
            f"migration {path} line {where + 1}: one {SETTINGS_MARKER} settings block may open the file, "
            "before the first statement"
        )
    start = end = markers[0]
    while end < opening and _uncomment(lines[end]) is not None:
        end += 1
    return "\n".join(_uncomment(line) or "" for line in lines[start:end]), start


def _validation_problem(error: dict) -> str:
    where = ".".join(str(part) for part in error["loc"])
    if error["type"] == "missing":
        return f"{where} is missing"
    if error["type"] == "extra_forbidden":
        return f"unknown setting {where}"
    return f"{where}: {error['msg'].removeprefix('Value error, ')}"


def parse_settings(text: str, path: Path) -> MigrationSettings | None:
    """The ``[safedrop]`` settings at the top of a migration file, or None when it has none."""
    found = _settings_text(text, path)
    if found is None:
        return None
    toml, start = found
    try:
        data = tomllib.loads(toml)
    except tomllib.TOMLDecodeError as exc:
        # tomllib counts lines from the [safedrop] line: say the file's line instead
        message = re.sub(r"\(at line (\d+), column \d+\)", lambda m: f"(line {start + int(m[1])})", str(exc))
        raise MigrationFileError(f"migration {path} settings do not parse: {message}") from None
    others = sorted(set(data) - {"safedrop"})
    if others:
        raise MigrationFileError(
            f"migration {path} settings: unknown table or setting {', '.join(others)} outside "
            f"{SETTINGS_MARKER}; every setting belongs to the one {SETTINGS_MARKER} table"
        )
    try:
        return MigrationSettings.model_validate(data["safedrop"])
    except ValidationError as exc:
        problems = "; ".join(_validation_problem(e) for e in exc.errors())
        raise MigrationFileError(f"migration {path} settings: {problems}") from None


@dataclass(frozen=True)
class Migration:
    name: str
    path: Path
    statements: tuple[DropStatement, ...]
    settings: MigrationSettings | None = None

    @property
    def targets(self) -> list[TableName]:
        """Every table the migration drops, in file order, without repeats."""
        seen: dict[TableName, None] = {}
        for statement in self.statements:
            for table in statement.tables:
                seen.setdefault(table, None)
        return list(seen)

    @property
    def slug(self) -> str:
        """The migration name as a Prefect artifact key part (lowercase letters, digits, '-')."""
        return "".join(c if c.isalnum() else "-" for c in self.name.lower()).strip("-")[:40]


def _quote_if_needed(identifier: str) -> str:
    if identifier.isidentifier() and identifier == identifier.lower() and identifier.isascii():
        return identifier
    return '"' + identifier.replace('"', '""') + '"'


def migration_paths() -> list[Path]:
    """Every migration in sql/ (its top level: sql/queries/ and sql/demo/ hold no migrations)."""
    return sorted(SQL_DIR.glob("*.sql"))


def resolve_path(migration: str) -> Path:
    """A migration given by name (``sql/<name>.sql``) or by path."""
    candidate = Path(migration).expanduser()
    if candidate.suffix == ".sql" or "/" in migration or candidate.exists():
        if candidate.is_file():
            return candidate
        raise MigrationFileError(f"migration file {migration} does not exist")
    by_name = SQL_DIR / f"{migration}.sql"
    if by_name.is_file():
        return by_name
    known = ", ".join(p.stem for p in migration_paths()) or "none"
    raise MigrationFileError(
        f"no migration named {migration!r}; known migrations in sql/: {known} (or pass a path to a .sql file)"
    )


def _statement_kind(node: ast.Node) -> str:
    if isinstance(node, ast.DropStmt):
        return f"DROP {enums.ObjectType(node.removeType).name.removeprefix('OBJECT_').replace('_', ' ')}"
    readable = {
        "InsertStmt": "INSERT",
        "UpdateStmt": "UPDATE",
        "DeleteStmt": "DELETE",
        "SelectStmt": "SELECT",
        "TruncateStmt": "TRUNCATE",
        "IndexStmt": "CREATE INDEX",
        "CreateStmt": "CREATE TABLE",
        "AlterTableStmt": "ALTER TABLE",
        "TransactionStmt": "a transaction command",
    }
    name = type(node).__name__
    return readable.get(name, name.removesuffix("Stmt"))


def parse_migration(text: str, *, name: str, path: Path, default_schema: str) -> Migration:
    try:
        raw = parse_sql(text)
    except ParseError as exc:
        raise MigrationFileError(f"migration {path} does not parse: {exc}") from None
    statements: list[DropStatement] = []
    for index, raw_stmt in enumerate(raw or (), start=1):
        stmt = raw_stmt.stmt
        if not (isinstance(stmt, ast.DropStmt) and stmt.removeType == enums.ObjectType.OBJECT_TABLE):
            raise MigrationFileError(
                f"migration {path} statement {index} is {_statement_kind(stmt)}; "
                "a safedrop migration may hold only DROP TABLE statements"
            )
        tables = []
        for names in stmt.objects:
            parts = [n.sval for n in names]
            if len(parts) == 1:
                tables.append(TableName(default_schema, parts[0]))
            elif len(parts) == 2:
                tables.append(TableName(parts[0], parts[1]))
            else:
                raise MigrationFileError(
                    f"migration {path} statement {index} names {'.'.join(parts)}; "
                    "use schema.table or table (cross-database names are not supported)"
                )
        statements.append(
            DropStatement(
                tables=tuple(tables),
                if_exists=bool(stmt.missing_ok),
                cascade=stmt.behavior == enums.DropBehavior.DROP_CASCADE,
            )
        )
    if not statements:
        raise MigrationFileError(f"migration {path} holds no statements; expected DROP TABLE statements")
    settings = parse_settings(text, path)
    return Migration(name=name, path=path, statements=tuple(statements), settings=settings)


def load_migration(migration: str, *, default_schema: str = "public") -> Migration:
    """Read and parse a migration given by name or path."""
    path = resolve_path(migration)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise MigrationFileError(f"cannot read migration {path}: {exc.__class__.__name__}") from None
    return parse_migration(text, name=path.stem, path=path, default_schema=default_schema)


def tables_sql(tables: list[TableName]) -> sql.Composable:
    """``schema.table, …`` for a statement, each identifier quoted by the driver."""
    return sql.SQL(", ").join(sql.Identifier(t.schema, t.name) for t in tables)


def render_drop(statement: DropStatement) -> sql.Composed:
    """A DROP TABLE statement rebuilt from the parsed file, identifiers quoted by the driver."""
    return sql.SQL("DROP TABLE {if_exists}{tables} {behavior}").format(
        if_exists=sql.SQL("IF EXISTS " if statement.if_exists else ""),
        tables=tables_sql(list(statement.tables)),
        behavior=sql.SQL("CASCADE" if statement.cascade else "RESTRICT"),
    )


def parse_table_list(names: list[str], default_schema: str) -> list[TableName]:
    """Each ``table`` or ``schema.table`` as the operator wrote it (``TableName.parse``)."""
    return [TableName.parse(raw, default_schema) for raw in names]
