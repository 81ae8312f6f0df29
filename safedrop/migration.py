"""A migration file: the DROP TABLE statements it holds, read with PostgreSQL's own parser.

The flow learns its targets from the file, so the next deprecated-table migration needs a new SQL
file and a deployment entry, not new code.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pglast import ast, enums, parse_sql
from pglast.parser import ParseError
from psycopg2 import sql

from safedrop import SQL_DIR
from safedrop.errors import MigrationFileError, UsageError


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


@dataclass(frozen=True)
class DropStatement:
    tables: tuple[TableName, ...]
    if_exists: bool
    cascade: bool


@dataclass(frozen=True)
class Migration:
    name: str
    path: Path
    statements: tuple[DropStatement, ...]

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
    known = ", ".join(sorted(p.stem for p in SQL_DIR.glob("*.sql"))) or "none"
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
    return Migration(name=name, path=path, statements=tuple(statements))


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
    tables = []
    for raw in names:
        parts = [p.strip() for p in raw.split(".")]
        if not all(parts) or len(parts) > 2:
            raise UsageError(f"table name {raw!r} is empty or malformed; use table or schema.table")
        tables.append(TableName(default_schema, parts[0]) if len(parts) == 1 else TableName(*parts))
    return tables
