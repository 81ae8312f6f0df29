"""The `safedrop` command line: its flags (argparse) and the dispatch to ``safedrop.cli.commands``.

Exit codes: 0 success (ready, succeeded, already applied), 3 stopped by a precheck with nothing
changed, 1 failed, 2 usage (bad flags or input, nothing touched).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from safedrop.cli import commands


def _prefect_defaults(verbose: bool) -> None:
    """Settings every run needs, before Prefect is imported (PREFECT_FACTS.md)."""
    os.environ.setdefault("PREFECT_HOME", str(Path.home() / ".safedrop" / "prefect"))
    # Prefect's SQLite database cannot be created in a directory that does not exist
    Path(os.environ["PREFECT_HOME"]).expanduser().mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO" if verbose else "WARNING")
    os.environ.setdefault("PREFECT_SERVER_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("PREFECT_LOGGING_LOG_PRINTS", "false")
    # the embedded server's first start migrates a fresh SQLite database: on a busy 2-core machine
    # that takes longer than Prefect's default 20 s
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")


Option = tuple[tuple[str, ...], dict]  # (flags, argparse keyword arguments)

DATABASE: list[Option] = [
    (
        ("--database-url",),
        dict(
            metavar="URL",
            help="PostgreSQL URL; the only source when given (default: $DATABASE_URL, else a .env file, "
            "else, with a Prefect server, the Secret block safedrop-database-url)",
        ),
    ),
    (
        ("--secret-block",),
        dict(
            metavar="NAME",
            help="Prefect Secret block holding the URL (needs a Prefect server); the only source when "
            "given: $DATABASE_URL and .env are not consulted",
        ),
    ),
]
MIGRATION: list[Option] = [
    (
        ("--migration",),
        dict(
            metavar="NAME|PATH",
            default="drop_credit_allocation_tables",
            help="migration in sql/ by name, or a path to a .sql file (default: %(default)s)",
        ),
    ),
    (
        ("--schema",),
        dict(metavar="SCHEMA", default="public", help="schema for unqualified names (default: %(default)s)"),
    ),
    (
        ("--keep",),
        dict(
            metavar="TABLE",
            action="append",
            help="a table that must survive (repeatable, or comma-separated; default: the migration's own "
            "keep list)",
        ),
    ),
    (
        ("--allow-cascade",),
        dict(
            metavar="NAME",
            action="append",
            default=[],
            help="let CASCADE remove this object, named as the report prints it (repeatable)",
        ),
    ),
    (
        ("--allow-nonempty",),
        dict(action="store_true", help="consent to dropping targets that hold rows (the backup keeps them)"),
    ),
    (
        ("--rehearse",),
        dict(
            action="store_true",
            help="prove the CASCADE prediction on a scratch copy of the schema (needs a superuser)",
        ),
    ),
]
CODE: list[Option] = [
    (
        ("--code-path",),
        dict(
            metavar="PATH|GIT-URL",
            action="append",
            default=[],
            help="the application's code to scan for references: a local path, or a git URL (https://, "
            "ssh://, git@host:org/repo.git, file://) with an optional #BRANCH, #TAG or #COMMIT, fetched "
            "shallow for the run (repeatable); `run` stops without one unless --code-policy skip",
        ),
    ),
    (
        ("--code-policy",),
        dict(
            choices=["fail", "warn", "skip"],
            default="fail",
            help="code references stop the run (fail) or are only reported (warn); skip: do not look at "
            "the code at all (default: %(default)s)",
        ),
    ),
    (
        ("--code-secret-block",),
        dict(
            metavar="NAME",
            help="Prefect Secret block holding an HTTPS token (or USER:TOKEN) or an SSH private key for "
            "private git code sources (never put credentials in the URL)",
        ),
    ),
    (
        ("--code-include",),
        dict(metavar="GLOB", action="append", default=[], help="scan only files matching GLOB (repeatable)"),
    ),
    (
        ("--code-exclude",),
        dict(metavar="GLOB", action="append", default=[], help="also skip files matching GLOB (repeatable)"),
    ),
]
BACKUP: list[Option] = [
    (
        ("--backup-dir",),
        dict(
            metavar="DIR",
            help="where pg_dump archives go: a directory, or s3://BUCKET/PREFIX (default: "
            "$SAFEDROP_BACKUP_DIR, else ~/.local/share/safedrop/backups)",
        ),
    ),
    (
        ("--backup-timeout",),
        dict(
            metavar="DURATION",
            default="1h",
            help="stop pg_dump after this long; nothing is dropped (default: %(default)s)",
        ),
    ),
    (
        ("--backup-scope",),
        dict(
            choices=["database", "targets"],
            default="database",
            help="back up the whole database, or every definition but only the targets' rows "
            "(default: %(default)s)",
        ),
    ),
    (
        ("--backup-format",),
        dict(
            choices=["custom", "directory"],
            default="custom",
            help="pg_dump archive format (default: %(default)s)",
        ),
    ),
    (
        ("--backup-jobs",),
        dict(
            metavar="N",
            type=int,
            default=1,
            help="parallel pg_dump workers, directory format only (default: %(default)s)",
        ),
    ),
    (
        ("--compression",),
        dict(
            metavar="0-9",
            type=int,
            default=1,
            help="gzip level of the archive (default: %(default)s, measured fastest for its size)",
        ),
    ),
    (
        ("--verify-restore",),
        dict(
            action="store_true",
            help="restore the targets into a scratch database and compare before dropping (needs CREATEDB)",
        ),
    ),
]
CHECKS: list[Option] = [
    (
        ("--check-sql",),
        dict(
            metavar="SQL",
            action="append",
            default=[],
            help="after the drop, one query that must return true or no rows (repeatable; run read-only "
            "and rolled back; a second statement is refused)",
        ),
    ),
    (
        ("--check-url",),
        dict(
            metavar="URL",
            action="append",
            default=[],
            help="after the drop, an HTTP(S) URL that must answer 2xx, e.g. the app's health check "
            "(repeatable; never one with a secret: see --check-url-env)",
        ),
    ),
    (
        ("--check-url-env",),
        dict(
            metavar="NAME",
            action="append",
            default=[],
            help="like --check-url, the URL read from the environment variable NAME at check time, for a "
            "URL that carries a secret (repeatable)",
        ),
    ),
    (
        ("--check-url-secret-block",),
        dict(
            metavar="NAME",
            action="append",
            default=[],
            help="like --check-url, the URL read from the Prefect Secret block NAME at check time, for a "
            "URL that carries a secret (repeatable)",
        ),
    ),
]
RESTORE: list[Option] = [
    (
        ("--backup",),
        dict(
            metavar="PATH|NAME|FLOW-RUN-ID",
            required=True,
            help="the archive a run wrote (its .manifest.json must be beside it), its file name in the "
            "backup directory, or the id of the flow run that dropped the tables",
        ),
    ),
    (
        ("--no-owner",),
        dict(
            action="store_true",
            help="do not restore object ownership (the restoring role owns what it creates)",
        ),
    ),
    (
        ("--dry-run",),
        dict(
            action="store_true",
            help="check the archive and the database, list what would be restored; change nothing",
        ),
    ),
    (
        ("--into-other-database",),
        dict(
            action="store_true",
            help="restore into a database other than the one the backup was taken of (another name, or "
            "the same name on another cluster); without it that is refused",
        ),
    ),
]


FLEET: list[Option] = [
    (
        ("--fleet",),
        dict(
            metavar="FILE",
            required=True,
            help="the fleet file (YAML): migration, keep, code_paths, rollout {canary, max_parallel, "
            "on_error}, databases (each a name and a secret_block or url_env); see the README's 'Running "
            "a fleet'",
        ),
    ),
    (
        ("--child-silence",),
        dict(
            metavar="DURATION",
            default="2m",
            help="a database's run silent this long (no heartbeat: its worker or machine went away) is "
            "marked Crashed and counts as failed (default: %(default)s; at least 1m)",
        ),
    ),
]


def lock_options(what: str) -> list[Option]:
    """The lock schedule's flags, for the drop (``what`` = "drop") or the restore."""
    return [
        (
            ("--lock-timeout",),
            dict(
                metavar="DURATION",
                default="500ms",
                help=f"the longest the first {what} attempt waits for any one lock before it rolls back "
                "and retries with a longer wait, up to --max-lock-timeout (default: %(default)s)",
            ),
        ),
        (
            ("--max-lock-timeout",),
            dict(
                metavar="DURATION",
                default="3s",
                help=f"the largest lock wait, i.e. the longest any query queues behind the {what} "
                "(default: %(default)s)",
            ),
        ),
        (
            ("--lock-wait-budget",),
            dict(
                metavar="DURATION",
                default="2m",
                help="total time to keep retrying for the locks before giving up with nothing "
                f"{'dropped' if what == 'drop' else 'restored'} (default: %(default)s)",
            ),
        ),
    ]


def output_options(what: str) -> list[Option]:
    return [
        (("--json",), dict(action="store_true", help=f"print the {what} as JSON on stdout")),
        (("-v", "--verbose"), dict(action="store_true", help="show Prefect's logs")),
    ]


def _add(parser: argparse.ArgumentParser, *groups: list[Option]) -> argparse.ArgumentParser:
    for group in groups:
        for flags, kwargs in group:
            parser.add_argument(*flags, **kwargs)
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="safedrop",
        description="Retire deprecated PostgreSQL tables: prechecks, verified backup, lock-safe drop, "
        "verification.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    common = (DATABASE, MIGRATION, CODE)
    _add(
        sub.add_parser("plan", help="run every precheck; no backup, no drop (exit 0 ready, 3 stopped)"),
        *common,
        output_options("run report"),
        [
            (
                ("--markdown",),
                dict(
                    action="store_true",
                    help="print the plan as Markdown (the run's summary artifact), e.g. for a pull-request "
                    "comment from the application's CI",
                ),
            )
        ],
    )
    _add(
        sub.add_parser("run", help="the whole flow: prechecks, backup, drop, verification, summary"),
        *common,
        BACKUP,
        lock_options("drop"),
        CHECKS,
        output_options("run report"),
    )
    _add(
        sub.add_parser(
            "restore",
            help="restore the tables a run dropped, from its backup "
            "(exit 0 restored, 3 refused with nothing changed, 1 failed)",
        ),
        RESTORE,
        DATABASE,
        lock_options("restore"),
        output_options("restore report"),
    )
    _add(
        sub.add_parser("demo", help="the whole job on a throwaway local PostgreSQL (no configuration)"),
        output_options("run reports"),
    )
    backups = sub.add_parser(
        "backups", help="the backups in a backup directory or bucket: list them, prune old ones"
    ).add_subparsers(dest="backups_command", required=True, metavar="list|prune")
    where = [
        (
            ("--backup-dir",),
            dict(metavar="DIR", help="a directory or s3://BUCKET/PREFIX (default: $SAFEDROP_BACKUP_DIR)"),
        )
    ]
    _add(
        backups.add_parser(
            "list",
            help="every backup with its database, migration, size, age, and "
            "whether it is the one a restore needs",
        ),
        where,
        output_options("backup list"),
    )
    _add(
        backups.add_parser(
            "prune",
            help="remove backups older than --older-than, never the newest of each migration and database "
            "(a dry run unless --confirm)",
        ),
        where,
        [
            (("--older-than",), dict(metavar="DURATION", required=True, help="e.g. 30d, 12h")),
            (("--confirm",), dict(action="store_true", help="remove them (without it: only list them)")),
        ],
        output_options("prune report"),
    )
    fleet = sub.add_parser(
        "fleet",
        help="one migration across many databases, each run by a worker of a Prefect work pool (needs "
        "PREFECT_API_URL)",
    ).add_subparsers(dest="fleet_command", required=True, metavar="plan|run")
    _add(
        fleet.add_parser(
            "plan", help="every database's prechecks; nothing changed (exit 0 ready, 3 stopped)"
        ),
        FLEET,
        output_options("fleet report"),
    )
    _add(
        fleet.add_parser(
            "run",
            help="plan, then canaries first and the rest a few at a time (exit 0 every database done, 3 "
            "stopped, 1 failed)",
        ),
        FLEET,
        output_options("fleet report"),
    )
    return parser


class _Stderr(logging.Handler):
    """Progress lines on whatever stderr is now (so a test's captured stderr gets them too)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(f"· {record.getMessage()}\n")
        except Exception:
            self.handleError(record)


def _show_progress() -> None:
    """The steps' progress (the ``safedrop`` logger) on stderr: a line per step, never the reasons."""
    logger = logging.getLogger("safedrop")
    if not any(isinstance(h, _Stderr) for h in logger.handlers):
        logger.addHandler(_Stderr())
    logger.setLevel(logging.INFO)
    logger.propagate = False


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _prefect_defaults(getattr(args, "verbose", False))
    _show_progress()
    if args.command in ("run", "restore") and sys.stderr.isatty():
        os.environ.setdefault("SAFEDROP_PROGRESS_BAR", "1")  # pg_dump/pg_restore progress on stderr
    if args.command == "demo":
        from safedrop.cli.demo import run_demo
        from safedrop.errors import SafedropError

        try:
            return run_demo(main, as_json=args.json)  # the demo runs `safedrop plan` and `run` through main
        except SafedropError as exc:
            print(f"safedrop: {exc}", file=sys.stderr)
            return exc.exit_code
    if args.command == "restore":
        return commands.restore(args)
    if args.command == "fleet":
        return commands.fleet(args)
    if args.command == "backups":
        return commands.backups(args)
    return commands.plan_or_run(args)


def entrypoint() -> None:  # pragma: no cover - console script shim
    """The console script: SIGTERM and Ctrl-C stop it cleanly at any point, start-up included."""
    from safedrop.interrupts import Interrupted, install

    try:
        install()  # a signal may land between installing the first handler and the last
        code = main()
    except Interrupted as stop:
        code = commands.interrupted(stop)
    sys.exit(code)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
