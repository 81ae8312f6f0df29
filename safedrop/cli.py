"""The `safedrop` command line: its flags (argparse) and the dispatch to ``safedrop.commands``.

Exit codes: 0 success (ready, succeeded, already applied), 3 stopped by a precheck with nothing
changed, 1 failed, 2 usage (bad flags or input, nothing touched).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from safedrop import commands


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


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--database-url",
        metavar="URL",
        help="PostgreSQL URL (default: $DATABASE_URL, else a .env file, else the Secret block)",
    )
    p.add_argument(
        "--secret-block",
        metavar="NAME",
        default="safedrop-database-url",
        help="Prefect Secret block holding the URL, used when neither --database-url nor "
        "$DATABASE_URL is given (default: %(default)s)",
    )
    p.add_argument(
        "--migration",
        metavar="NAME|PATH",
        default="drop_credit_allocation_tables",
        help="migration in sql/ by name, or a path to a .sql file (default: %(default)s)",
    )
    p.add_argument(
        "--schema",
        metavar="SCHEMA",
        default="public",
        help="schema for unqualified names (default: %(default)s)",
    )
    p.add_argument(
        "--keep",
        metavar="TABLE",
        action="append",
        help="a table that must survive (repeatable, or comma-separated; default: the five credit tables)",
    )
    p.add_argument(
        "--code-path",
        metavar="PATH|GIT-URL",
        action="append",
        default=[],
        help="the application's code to scan for references: a local path, or a git URL (https://, "
        "ssh://, git@host:org/repo.git, file://) with an optional #BRANCH, #TAG or #COMMIT, fetched "
        "shallow for the run (repeatable); `run` stops without one unless --code-policy skip",
    )
    p.add_argument(
        "--code-policy",
        choices=["fail", "warn", "skip"],
        default="fail",
        help="code references stop the run (fail) or are only reported (warn); skip: do not look at "
        "the code at all (default: %(default)s)",
    )
    p.add_argument(
        "--code-secret-block",
        metavar="NAME",
        help="Prefect Secret block holding an HTTPS token (or USER:TOKEN) or an SSH private key for "
        "private git code sources (never put credentials in the URL)",
    )
    p.add_argument(
        "--code-include",
        metavar="GLOB",
        action="append",
        default=[],
        help="scan only files matching GLOB (repeatable)",
    )
    p.add_argument(
        "--code-exclude",
        metavar="GLOB",
        action="append",
        default=[],
        help="also skip files matching GLOB (repeatable)",
    )
    p.add_argument(
        "--allow-cascade",
        metavar="NAME",
        action="append",
        default=[],
        help="let CASCADE remove this object, named as the report prints it (repeatable)",
    )
    p.add_argument(
        "--allow-nonempty",
        action="store_true",
        help="consent to dropping targets that hold rows (the backup keeps them)",
    )
    p.add_argument(
        "--rehearse",
        action="store_true",
        help="prove the CASCADE prediction on a scratch copy of the schema (needs a superuser)",
    )
    p.add_argument("--json", action="store_true", help="print the run report as JSON on stdout")
    p.add_argument("-v", "--verbose", action="store_true", help="show Prefect's logs")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="safedrop",
        description="Retire deprecated PostgreSQL tables: prechecks, verified backup, lock-safe drop, "
        "verification.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    plan = sub.add_parser("plan", help="run every precheck; no backup, no drop (exit 0 ready, 3 stopped)")
    _add_common(plan)
    run = sub.add_parser("run", help="the whole flow: prechecks, backup, drop, verification, summary")
    _add_common(run)
    run.add_argument(
        "--backup-dir",
        metavar="DIR",
        help="directory for pg_dump archives (default: $SAFEDROP_BACKUP_DIR, else "
        "~/.local/share/safedrop/backups)",
    )
    run.add_argument(
        "--backup-timeout",
        metavar="DURATION",
        default="1h",
        help="stop pg_dump after this long; nothing is dropped (default: %(default)s)",
    )
    run.add_argument(
        "--check-sql",
        metavar="SQL",
        action="append",
        default=[],
        help="after the drop, a query that must return true or no rows (repeatable; run read-only)",
    )
    run.add_argument(
        "--check-url",
        metavar="URL",
        action="append",
        default=[],
        help="after the drop, an HTTP(S) URL that must answer 2xx, e.g. the app's health check (repeatable)",
    )
    run.add_argument(
        "--lock-timeout",
        metavar="DURATION",
        default="500ms",
        help="lock_timeout of the first drop attempt; retries grow it up to "
        "--max-lock-timeout (default: %(default)s)",
    )
    run.add_argument(
        "--max-lock-timeout",
        metavar="DURATION",
        default="3s",
        help="the largest lock_timeout, i.e. the longest any query queues behind the drop "
        "(default: %(default)s)",
    )
    run.add_argument(
        "--lock-wait-budget",
        metavar="DURATION",
        default="2m",
        help="total time to keep retrying for the locks before giving up with nothing dropped "
        "(default: %(default)s)",
    )
    run.add_argument(
        "--backup-scope",
        choices=["database", "targets"],
        default="database",
        help="back up the whole database, or every definition but only the targets' rows "
        "(default: %(default)s)",
    )
    run.add_argument(
        "--backup-format",
        choices=["custom", "directory"],
        default="custom",
        help="pg_dump archive format (default: %(default)s)",
    )
    run.add_argument(
        "--backup-jobs",
        metavar="N",
        type=int,
        default=1,
        help="parallel pg_dump workers, directory format only (default: %(default)s)",
    )
    run.add_argument(
        "--compression",
        metavar="0-9",
        type=int,
        default=1,
        help="gzip level of the archive (default: %(default)s, measured fastest for its size)",
    )
    run.add_argument(
        "--verify-restore",
        action="store_true",
        help="restore the targets into a scratch database and compare before dropping (needs CREATEDB)",
    )
    restore = sub.add_parser(
        "restore",
        help="restore the tables a run dropped, from its backup "
        "(exit 0 restored, 3 refused with nothing changed, 1 failed)",
    )
    restore.add_argument(
        "--backup",
        metavar="PATH",
        required=True,
        help="the archive a run wrote (its .manifest.json must be beside it)",
    )
    restore.add_argument(
        "--database-url",
        metavar="URL",
        help="PostgreSQL URL (default: $DATABASE_URL, else a .env file, else the Secret block)",
    )
    restore.add_argument(
        "--secret-block",
        metavar="NAME",
        default="safedrop-database-url",
        help="Prefect Secret block holding the URL (default: %(default)s)",
    )
    restore.add_argument(
        "--no-owner",
        action="store_true",
        help="do not restore object ownership (the restoring role owns what it creates)",
    )
    restore.add_argument(
        "--dry-run",
        action="store_true",
        help="check the archive and the database, list what would be restored; change nothing",
    )
    restore.add_argument(
        "--lock-timeout",
        metavar="DURATION",
        default="500ms",
        help="the longest the first attempt waits for any one lock before it rolls back and retries "
        "with a longer wait, up to --max-lock-timeout (default: %(default)s)",
    )
    restore.add_argument(
        "--max-lock-timeout",
        metavar="DURATION",
        default="3s",
        help="the largest lock wait, i.e. the longest any query queues behind the restore "
        "(default: %(default)s)",
    )
    restore.add_argument(
        "--lock-wait-budget",
        metavar="DURATION",
        default="2m",
        help="total time to keep retrying for the locks before giving up with nothing restored "
        "(default: %(default)s)",
    )
    restore.add_argument("--json", action="store_true", help="print the restore report as JSON on stdout")
    restore.add_argument("-v", "--verbose", action="store_true", help="show Prefect's logs")
    demo = sub.add_parser("demo", help="the whole job on a throwaway local PostgreSQL (no configuration)")
    demo.add_argument("--json", action="store_true", help="print the run reports as JSON")
    demo.add_argument("-v", "--verbose", action="store_true", help="show Prefect's logs")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _prefect_defaults(getattr(args, "verbose", False))
    if args.command in ("run", "restore") and sys.stderr.isatty():
        os.environ.setdefault("SAFEDROP_PROGRESS_BAR", "1")  # pg_dump/pg_restore progress on stderr
    if args.command == "demo":
        from safedrop.demo import run_demo
        from safedrop.errors import SafedropError

        try:
            return run_demo(main, as_json=args.json)  # the demo runs `safedrop plan` and `run` through main
        except SafedropError as exc:
            print(f"safedrop: {exc}", file=sys.stderr)
            return exc.exit_code
    if args.command == "restore":
        return commands.restore(args)
    return commands.plan_or_run(args)


def entrypoint() -> None:  # pragma: no cover - console script shim
    sys.exit(main())


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
