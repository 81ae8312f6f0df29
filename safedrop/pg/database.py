"""Where the database URL comes from, how it is shown, and how we connect.

The URL is a secret: it never becomes a Prefect parameter, a log line, an artifact, exception text
or a child process's argv. It is resolved inside the run from a Prefect Secret block (by name), or
``DATABASE_URL`` in the environment, or ``DATABASE_URL`` in a ``.env`` file in the working directory;
or, when a parameter names one (``database_url_env``), only from that environment variable.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import sqlalchemy as sa
from pydantic import SecretStr
from sqlalchemy.engine import URL, Connection, Engine, make_url

from safedrop.errors import ConfigurationError, ConnectionFailed

APPLICATION_NAME = "safedrop"
# connection errors that trying again cannot fix
_PERMANENT = (
    "password authentication failed",
    "does not exist",
    "no pg_hba.conf entry",
    "could not translate host name",
    "invalid",
    "SSL",
)
_POSTGRES_SCHEMES = {"postgres", "postgresql", "postgresql+psycopg2"}
_SHARED_ENGINES: dict[str, Engine] = {}


@dataclass(frozen=True)
class Database:
    """A resolved, validated database URL. ``str()``/``repr()`` never show the password."""

    secret: SecretStr
    source: str  # where it came from, e.g. "Secret block 'safedrop-database-url'" or "DATABASE_URL"

    @property
    def url(self) -> URL:
        return _parse(self.secret.get_secret_value())

    @property
    def display(self) -> str:
        """host:port/dbname as user — safe for logs and artifacts."""
        return mask_url(self.url)

    @property
    def password(self) -> str | None:
        return self.url.password  # type: ignore[return-value]

    def __repr__(self) -> str:
        return f"Database({self.display}, from {self.source})"

    __str__ = __repr__

    def engine(self, **kwargs) -> Engine:
        """A new engine of its own (settings of its own: isolation, application name)."""
        return make_engine(self.url, **kwargs)

    def shared_engine(self) -> Engine:
        """The process's one default engine for this URL: its dialect learns the server on the first
        session, later sessions only connect (~5 ms each saved). Pool-less, so it holds no session."""
        key = self.secret.get_secret_value()
        engine = _SHARED_ENGINES.get(key)
        if engine is None:
            engine = _SHARED_ENGINES.setdefault(key, make_engine(self.url))
        return engine

    def libpq_env(self, tool: str) -> dict[str, str]:
        """Environment for a libpq client (pg_dump, pg_restore, psql): the password never in argv.

        Its sessions show up in pg_stat_activity as ``safedrop <tool>``.
        """
        url = self.url
        env = {"PGAPPNAME": f"{APPLICATION_NAME} {tool}", "PGCONNECT_TIMEOUT": "10"}
        if url.host:
            env["PGHOST"] = url.host
        if url.port:
            env["PGPORT"] = str(url.port)
        if url.username:
            env["PGUSER"] = url.username
        if url.database:
            env["PGDATABASE"] = url.database
        if url.password:
            env["PGPASSWORD"] = str(url.password)
        query = dict(url.query)
        for key, var in (
            ("sslmode", "PGSSLMODE"),
            ("sslrootcert", "PGSSLROOTCERT"),
            ("sslcert", "PGSSLCERT"),
            ("sslkey", "PGSSLKEY"),
            ("host", "PGHOST"),
            ("port", "PGPORT"),
            ("options", "PGOPTIONS"),
        ):
            if key in query:
                value = query[key]
                env[var] = value if isinstance(value, str) else value[0]
        return env


def mask_url(url: URL | str) -> str:
    """``user@host:port/dbname`` — the URL without scheme or password, for humans."""
    if isinstance(url, str):
        try:
            url = make_url(url)
        except Exception:
            return "<unparseable URL>"
    user = f"{url.username}@" if url.username else ""
    port = f":{url.port}" if url.port else ""
    return f"{user}{url.host or 'localhost'}{port}/{url.database or ''}"


def _parse(raw: str) -> URL:
    raw = raw.strip()
    try:
        url = make_url(raw)
    except Exception:
        raise ConfigurationError(
            "the database URL is malformed; expected postgresql://USER:PASSWORD@HOST:PORT/DBNAME"
        ) from None
    if url.drivername not in _POSTGRES_SCHEMES:
        raise ConfigurationError(
            f"the database URL is for {url.drivername!r}, not PostgreSQL; "
            "expected postgresql://USER:PASSWORD@HOST:PORT/DBNAME"
        )
    if not url.database:
        raise ConfigurationError(
            "the database URL names no database; expected postgresql://USER:PASSWORD@HOST:PORT/DBNAME"
        )
    return url.set(drivername="postgresql+psycopg2")


def database_from_url(raw: str, source: str = "--database-url") -> Database:
    _parse(raw)  # validate now, with a clear message
    return Database(SecretStr(raw.strip()), source)


def _from_dotenv(path: Path) -> str | None:
    if not path.is_file():
        return None
    from dotenv import dotenv_values

    return dotenv_values(path).get("DATABASE_URL") or None


# The command line hands the URL it was given (--database-url, $DATABASE_URL or ./.env) to the flow in
# this variable, with where it came from in the next one, and names the variable as database_url_env.
CLI_URL_ENV = "SAFEDROP_DATABASE_URL"
CLI_SOURCE_ENV = "SAFEDROP_DATABASE_URL_SOURCE"


def resolve_database(
    secret_block: str | None, *, env_file: Path | None = None, url_env: str | None = None
) -> Database:
    """The database the operator named, and only that one.

    ``url_env`` names an environment variable holding the URL (a fleet's database on a worker, the
    command line's own URL): then that variable is the only source. ``secret_block`` names a Prefect
    Secret block: then that block is the only source — a block that does not exist, cannot be read
    (the API down) or holds no PostgreSQL URL stops the run naming the block. Only when neither is
    named: ``DATABASE_URL`` from the environment, else from ``.env``. Falling back from a named source
    to another would be another database.
    """
    if url_env:
        value = os.environ.get(url_env)
        if not value:
            raise ConfigurationError(
                f"no database URL: the environment variable {url_env} (database_url_env) is not set on "
                "this machine; set it in the environment of every worker of the pool "
                "(postgresql://USER:PASSWORD@HOST:PORT/DBNAME)"
            )
        source = os.environ.get(CLI_SOURCE_ENV) or url_env if url_env == CLI_URL_ENV else f"${url_env}"
        return _named(value, source)
    if secret_block:
        return _named(read_secret_block(secret_block), f"Secret block {secret_block!r}")
    if os.environ.get("DATABASE_URL"):
        return database_from_url(os.environ["DATABASE_URL"], "$DATABASE_URL")
    dotenv = _from_dotenv(env_file or Path.cwd() / ".env")
    if dotenv:
        return database_from_url(dotenv, ".env")
    raise ConfigurationError(
        "no database URL: name a Prefect Secret block (database_secret_block) or an environment variable "
        "(database_url_env), or set DATABASE_URL in the environment or a .env file "
        "(postgresql://USER:PASSWORD@HOST:PORT/DBNAME)"
    )


def _named(raw: str, source: str) -> Database:
    """The URL from a source the operator named; a value that is no PostgreSQL URL names the source."""
    try:
        return database_from_url(raw, source)
    except ConfigurationError as exc:
        raise ConfigurationError(f"{source} does not hold a usable PostgreSQL URL: {exc}") from None


def read_secret_block(name: str) -> str:
    """The text in the Prefect Secret block ``name``; a one-line ConfigurationError naming the block when
    it does not exist, cannot be read, or holds something other than text."""
    from prefect.blocks.system import Secret

    try:
        block = Secret.load(name, _sync=True)  # type: ignore[call-arg]
    except ValueError as exc:
        if "Unable to find block document" not in str(exc):
            raise ConfigurationError(
                f"cannot read the Prefect Secret block {name!r}: {_first_line(exc)}"
            ) from None
        raise ConfigurationError(
            f"no Prefect Secret block named {name!r} (database_secret_block): create it holding the "
            "database URL (postgresql://USER:PASSWORD@HOST:PORT/DBNAME), or name the block that does; "
            "nothing was touched"
        ) from None
    except Exception as exc:  # the API unreachable, refusing, timing out: never a fallback
        raise ConfigurationError(
            f"cannot read the Prefect Secret block {name!r} (database_secret_block): {_first_line(exc)}; "
            "nothing was touched — check PREFECT_API_URL and that the server is up"
        ) from None
    value = block.get()
    if not isinstance(value, str):
        raise ConfigurationError(
            f"the Prefect Secret block {name!r} (database_secret_block) holds {type(value).__name__}, not "
            "a PostgreSQL URL; store the URL as text (postgresql://USER:PASSWORD@HOST:PORT/DBNAME)"
        )
    return value


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


def identify(conn: Connection, db: Database):
    """What the server says this session's database is (name, system identifier), with the URL's source."""
    from safedrop.pg import queries
    from safedrop.results import DatabaseIdentity

    row = queries.one(conn, "database_identity")
    url = db.url
    return DatabaseIdentity(
        source=db.source,
        host=url.host or "localhost",
        port=url.port,
        database=row["database"],
        system_identifier=row["system_identifier"],
    )


def make_engine(url: URL, **kwargs) -> Engine:
    """An engine without a pool (every session is short and ours). ``connect_timeout`` 10 s unless the
    URL sets its own (``?connect_timeout=3``)."""
    connect_args: dict = {"application_name": APPLICATION_NAME}
    if "connect_timeout" not in url.query:
        connect_args["connect_timeout"] = 10
    connect_args.update(kwargs.pop("connect_args", {}))
    return sa.create_engine(url, poolclass=sa.pool.NullPool, connect_args=connect_args, **kwargs)


def mask_password(text: str, db: Database) -> str:
    """``text`` with the database password, as typed and URL-quoted, replaced by ``***``."""
    password = db.password
    if password:
        for form in {str(password), quote(str(password), safe=""), quote(str(password))}:
            if form:
                text = text.replace(form, "***")
    return text


def error_line(exc: BaseException, db: Database) -> str:
    """The first line of a database error (the driver's message), with the password masked."""
    text = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return mask_password(text[0] if text else type(exc).__name__, db)


def describe_connect_error(exc: BaseException, db: Database) -> str:
    """One secret-free line for a failed connection attempt."""
    first = re.sub(r"^connection to server at [^,]*, port \d+ failed: ", "", error_line(exc, db))
    return f"cannot connect to {db.display}: {first}"


@contextmanager
def connect(db: Database) -> Iterator[Connection]:
    """A connection in autocommit off (SQLAlchemy 2 style); errors become ConnectionFailed."""
    try:
        conn = db.shared_engine().connect()
    except sa.exc.OperationalError as exc:
        message = describe_connect_error(exc, db)
        permanent = any(p in message for p in _PERMANENT)
        raise ConnectionFailed(message, transient=not permanent) from None
    with conn:
        yield conn


def execute_composed(conn: Connection, statement) -> None:
    """Run a ``psycopg2.sql`` composition (identifiers quoted by the driver) on this connection.

    The text goes to psycopg2 without parameters, so a ``%`` in it (in a quoted identifier, a DO
    block) is literal, not a placeholder.
    """
    text = statement.as_string(conn.connection.dbapi_connection)
    conn.exec_driver_sql(text, execution_options={"no_parameters": True})


@contextmanager
def reading(
    db: Database,
    *,
    snapshot: bool = False,
    lock_timeout_ms: int | None = None,
    statement_timeout_ms: int | None = None,
) -> Iterator[Connection]:
    """A READ ONLY transaction for the block (``snapshot``: REPEATABLE READ, one view of every table),
    with its own lock and statement timeouts when given; rolled back at the end, whatever the block did.

    The session is READ ONLY too: a statement that ends the transaction (a smoke check's ``COMMIT``)
    leaves any statement after it in a read-only transaction, itself rolled back at the end.
    """
    with connect(db) as conn:
        transaction = conn.begin()
        try:
            isolation = "ISOLATION LEVEL REPEATABLE READ, " if snapshot else ""
            conn.exec_driver_sql(
                f"SET TRANSACTION {isolation}READ ONLY; SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY"
            )
            if lock_timeout_ms is not None or statement_timeout_ms is not None:
                from safedrop.pg import queries

                queries.rows(
                    conn,
                    "set_local_timeouts",
                    lock_timeout=f"{lock_timeout_ms or 0}ms",
                    statement_timeout=f"{statement_timeout_ms or 0}ms",
                )
            yield conn
        finally:
            transaction.rollback()  # a reading never writes: nothing to commit, and nothing escapes
