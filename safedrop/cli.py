"""The `safedrop` command: plan, run, restore, demo.

Exit codes: 0 success (ready, succeeded, already applied), 3 stopped by a precheck with nothing
changed, 1 failed, 2 usage (bad flags or input, nothing touched).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_STOPPED = 0, 1, 2, 3


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
        help="a table that must survive (repeatable, or comma-separated; default: the migration's own "
        "keep list)",
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


def parse_duration_ms(text: str) -> int:
    """'500ms', '2s', '1.5s', '5m' or a bare number of milliseconds."""
    from safedrop.errors import UsageError

    raw = text.strip().lower()
    units = (("ms", 1), ("s", 1000), ("m", 60_000), ("h", 3_600_000))
    for suffix, factor in units:
        if raw.endswith(suffix) and raw[: -len(suffix)].replace(".", "", 1).isdigit():
            return int(float(raw[: -len(suffix)]) * factor)
    if raw.isdigit():
        return int(raw)
    raise UsageError(f"cannot read duration {text!r}; use e.g. 500ms, 2s or 5m")


def parameters_from_args(args: argparse.Namespace, *, dry_run: bool) -> Any:
    """Validate the operator's input up front (no Prefect, no database) and build the flow's parameters."""
    from pydantic import ValidationError

    from safedrop.database import database_from_url
    from safedrop.errors import UsageError
    from safedrop.gitsource import is_git_source, parse_git_source
    from safedrop.migration import load_migration
    from safedrop.parameters import DropParameters
    from tasks.connection import parse_table_list

    code_paths = []
    for code_path in args.code_path:
        if is_git_source(code_path):
            parse_git_source(code_path)  # a URL carrying credentials is refused here, secret-free
            code_paths.append(code_path.strip())
        else:
            code_paths.append(str(Path(code_path)))

    url = args.database_url or os.environ.get("DATABASE_URL")
    if url:
        database_from_url(url)  # a malformed or non-PostgreSQL URL stops here
        os.environ["DATABASE_URL"] = url  # the flow reads it from the environment, never a parameter
    migration = load_migration(args.migration, default_schema=args.schema)
    fields: dict[str, Any] = dict(
        migration=str(migration.path)
        if ("/" in args.migration or args.migration.endswith(".sql"))
        else args.migration,
        target_schema=args.schema,
        code_paths=code_paths,
        code_policy=args.code_policy,
        code_secret_block=args.code_secret_block,
        code_include=args.code_include,
        code_exclude=args.code_exclude,
        allow_cascade=args.allow_cascade,
        allow_nonempty=args.allow_nonempty,
        rehearse=args.rehearse,
        dry_run=dry_run,
        database_secret_block=None if url else args.secret_block,
    )
    if args.keep:  # repeatable, and each may be a comma-separated list
        fields["keep"] = [name.strip() for value in args.keep for name in value.split(",") if name.strip()]
    if getattr(args, "backup_dir", None):
        fields["backup_dir"] = args.backup_dir
    if args.command == "run":
        from tasks.smoke_checks import check_url_syntax

        for url in args.check_url:
            check_url_syntax(url)
        fields.update(
            check_sql=args.check_sql,
            check_urls=args.check_url,
            backup_timeout_s=max(1, parse_duration_ms(args.backup_timeout) // 1000),
        )
    if getattr(args, "lock_timeout", None):
        fields["lock_timeout_ms"] = parse_duration_ms(args.lock_timeout)
        fields["max_lock_timeout_ms"] = parse_duration_ms(args.max_lock_timeout)
        fields["lock_wait_budget_s"] = parse_duration_ms(args.lock_wait_budget) / 1000
    if getattr(args, "backup_scope", None):
        fields.update(
            backup_scope=args.backup_scope,
            backup_format=args.backup_format,
            backup_jobs=args.backup_jobs,
            backup_compression=args.compression,
            verify_restore=args.verify_restore,
        )
    fields["approval"] = "skip"  # at the terminal, running the command is the approval
    try:
        params = DropParameters(**fields)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise UsageError(f"invalid {'.'.join(map(str, first['loc']))}: {first['msg']}") from None
    params = params.for_migration(migration)  # no --keep: the migration's own list
    parse_table_list(params.keep, params.target_schema)
    for path in params.code_paths:
        if not is_git_source(path) and not Path(path).exists():
            raise UsageError(f"code path {path} does not exist")
    return params


def run_flow(params: Any):
    """Run the flow in this process (Prefect's embedded server unless PREFECT_API_URL is set)."""
    from flows.drop_deprecated_tables import drop_deprecated_tables

    state = drop_deprecated_tables(params, return_state=True)
    result = state.result(raise_on_failure=False)
    from safedrop.errors import SafedropError
    from safedrop.report import RunReport

    if isinstance(result, RunReport):
        return result
    if isinstance(result, SafedropError) and isinstance(result.report, RunReport):
        return result.report
    # the flow crashed (a bug, not an expected failure): say so in one line
    return RunReport(
        status="failed",
        reasons=[f"the flow run ended {state.name}: {state.message}"],
        migration=params.migration,
        dry_run=params.dry_run,
    )


def print_report(report: Any, *, as_json: bool, out=None) -> None:
    out = out or sys.stdout
    if as_json:
        out.write(report.model_dump_json(indent=2) + "\n")
        return
    from safedrop.report_text import render_text

    out.write(render_text(report))


def _usage_report(message: str, migration: str, dry_run: bool) -> Any:
    from safedrop.report import RunReport

    return RunReport(status="failed", reasons=[message], migration=migration, dry_run=dry_run)


def restore_main(args: argparse.Namespace) -> int:
    """`safedrop restore`: the restore-dropped-tables flow in this process; exit 0/3/1, 2 for bad input."""
    from pydantic import ValidationError

    from safedrop.database import database_from_url
    from safedrop.errors import UsageError
    from safedrop.parameters import RestoreParameters
    from safedrop.report import RestoreReport

    try:
        url = args.database_url or os.environ.get("DATABASE_URL")
        if url:
            database_from_url(url)
            os.environ["DATABASE_URL"] = url  # the flow reads it from the environment, never a parameter
        from tasks.restore import find_backup

        archive = find_backup(args.backup)  # a path, a file name in the backup directory, a flow run id
        try:
            params = RestoreParameters(
                backup_path=str(archive),
                database_secret_block=None if url else args.secret_block,
                no_owner=args.no_owner,
                dry_run=args.dry_run,
                lock_timeout_ms=parse_duration_ms(args.lock_timeout),
                max_lock_timeout_ms=parse_duration_ms(args.max_lock_timeout),
                lock_wait_budget_s=parse_duration_ms(args.lock_wait_budget) / 1000,
            )
        except ValidationError as exc:
            first = exc.errors()[0]
            raise UsageError(f"invalid {'.'.join(map(str, first['loc']))}: {first['msg']}") from None
    except UsageError as exc:
        if args.json:
            print_report(RestoreReport(status="failed", reasons=[str(exc)], backup=args.backup), as_json=True)
        print(f"safedrop: {exc}", file=sys.stderr)
        return EXIT_USAGE
    from flows.restore_dropped_tables import restore_dropped_tables

    try:
        state = restore_dropped_tables(params, return_state=True)
        report = state.result(raise_on_failure=False)
        if not isinstance(report, RestoreReport):  # the flow crashed: a bug, said in one line
            report = RestoreReport(
                status="failed",
                backup=args.backup,
                reasons=[f"the flow run ended {state.name}: {state.message}"],
            )
    except Exception as exc:  # Prefect itself could not run the flow: one line, not a traceback
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        report = RestoreReport(
            status="failed",
            backup=args.backup,
            reasons=[f"Prefect could not run the flow ({type(exc).__name__}: {first})"],
        )
    if args.json:
        print_report(report, as_json=True)
    else:
        from tasks.restore import render_text

        sys.stdout.write(render_text(report))
    return report.exit_code


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _prefect_defaults(getattr(args, "verbose", False))
    from safedrop.errors import SafedropError, UsageError

    if args.command == "demo":
        from safedrop.demo import run_demo

        try:
            return run_demo(as_json=args.json)
        except SafedropError as exc:
            print(f"safedrop: {exc}", file=sys.stderr)
            return exc.exit_code
    if args.command in ("run", "restore") and sys.stderr.isatty():
        os.environ.setdefault("SAFEDROP_PROGRESS_BAR", "1")  # pg_dump/pg_restore progress on stderr
    if args.command == "restore":
        return restore_main(args)
    dry_run = args.command == "plan"
    try:
        params = parameters_from_args(args, dry_run=dry_run)
    except UsageError as exc:
        if args.json:
            print_report(_usage_report(str(exc), args.migration, dry_run), as_json=True)
        print(f"safedrop: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        report = run_flow(params)
    except Exception as exc:  # Prefect itself could not run the flow: one line, not a traceback
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        message = f"Prefect could not run the flow ({type(exc).__name__}: {first})"
        if args.json:
            print_report(_usage_report(message, args.migration, dry_run), as_json=True)
        print(f"safedrop: {message}", file=sys.stderr)
        return EXIT_FAILED
    print_report(report, as_json=args.json)
    return report.exit_code


def entrypoint() -> None:  # pragma: no cover - console script shim
    sys.exit(main())


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
