"""The commands behind `safedrop plan|run|restore`: from parsed arguments to the flow, and its report.

Each command validates the operator's input before anything else (no Prefect, no database), runs
the flow in this process (Prefect's embedded server, or the one PREFECT_API_URL names), prints the
report, and returns the exit code: 0 success (ready, succeeded, already applied), 3 stopped with
nothing changed, 1 failed, 2 usage (bad flags or input, nothing touched). Imports stay inside the
functions: `safedrop --help` must not pay for Prefect.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_STOPPED = 0, 1, 2, 3


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


def database_url(args: argparse.Namespace) -> str | None:
    """The URL from --database-url, $DATABASE_URL or ./.env, checked (and exported for the flow, which reads
    it from the environment, never from a parameter); None when the Prefect Secret block is to be read.
    Without a Prefect server there is no Secret block to read: then a URL is required here."""
    from safedrop.database import database_from_url, resolve_database
    from safedrop.errors import ConfigurationError

    url = args.database_url or os.environ.get("DATABASE_URL")
    if url:
        database_from_url(url)  # a malformed or non-PostgreSQL URL stops here
        os.environ["DATABASE_URL"] = url
        return url
    if prefect_server():
        return None
    try:
        return resolve_database(None).secret.get_secret_value()  # ./.env
    except ConfigurationError:
        raise ConfigurationError(
            "no database URL: pass --database-url, set DATABASE_URL (in the environment or ./.env), or set "
            f"PREFECT_API_URL to read it from the Prefect Secret block {args.secret_block!r}"
        ) from None


def parameters_from_args(args: argparse.Namespace, *, dry_run: bool) -> Any:
    """Validate the operator's input up front (no Prefect, no database) and build the flow's parameters."""
    from pydantic import ValidationError

    from safedrop.errors import UsageError
    from safedrop.gitsource import is_git_source, parse_git_source
    from safedrop.migration import load_migration, parse_table_list
    from safedrop.parameters import DropParameters

    code_paths = []
    for code_path in args.code_path:
        if is_git_source(code_path):
            parse_git_source(code_path)  # a URL carrying credentials is refused here, secret-free
            code_paths.append(code_path.strip())
        else:
            code_paths.append(str(Path(code_path)))

    url = database_url(args)
    if args.code_secret_block and not prefect_server():
        raise UsageError(
            f"--code-secret-block {args.code_secret_block} names a Prefect Secret block, and no Prefect "
            "server is configured to read it from: set PREFECT_API_URL"
        )
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
        from safedrop.smokechecks import check_url_syntax

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


def prefect_server() -> str | None:
    """The Prefect API this process is configured for (PREFECT_API_URL, a profile, a test harness)."""
    from prefect.settings import get_current_settings

    return get_current_settings().api.url or None


def run_flow(params: Any):
    """Run the flow in this process: recorded through Prefect when a server is configured, else its steps
    as plain functions (no Prefect engine, no temporary server: ``safedrop.steps``)."""
    from flows.drop_deprecated_tables import drop_deprecated_tables
    from safedrop.errors import SafedropError
    from safedrop.report import RunReport
    from safedrop.runlog import quiet_expected_failures
    from safedrop.steps import plain_steps

    if prefect_server():
        quiet_expected_failures()
        state = drop_deprecated_tables(params, return_state=True)
    else:
        with plain_steps():
            state = drop_deprecated_tables.fn(params)
    result = state.result(raise_on_failure=False)
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


STAGES = {
    "start-up": "interrupted before it started; nothing was changed",
    "prechecks": "interrupted during the prechecks; nothing was changed",
    "backup": "interrupted during the backup; nothing was dropped (the partial archive was removed)",
    "verification": "interrupted after the drop: the targets are dropped, but verification did not finish "
    "— run it again to verify (it reports 'already applied')",
    "restore": "interrupted during the restore; its transaction rolled back: nothing was restored",
}


def interrupted(stop: Any, params: Any = None) -> int:
    """Say in one line what was and was not done when a signal stopped the command; its exit code."""
    if stop.stage.startswith("fleet: "):  # each database's own run says what it did (its report, its ledger)
        line = f"interrupted; {stop.stage.removeprefix('fleet: ')}"
    else:
        line = STAGES.get(stop.stage) or _after_interrupted_drop(params)
    print(f"safedrop: {line}", file=sys.stderr)
    return stop.exit_code


def _after_interrupted_drop(params: Any) -> str:
    """Interrupted between the backup and the drop's answer: the catalog says whether it committed."""
    try:
        from safedrop.catalog import table_status
        from safedrop.database import connect, resolve_database
        from safedrop.migration import load_migration

        migration = load_migration(params.migration, default_schema=params.target_schema)
        with connect(resolve_database(params.database_secret_block)) as conn:
            present = [r for r in table_status(conn, migration.targets) if r["oid"] is not None]
    except Exception:
        return (
            "interrupted around the drop, and the database could not be read to tell whether it "
            "committed — run `safedrop plan` to see"
        )
    if present:
        return "interrupted before the drop committed; it rolled back: nothing was dropped"
    return (
        "interrupted after the drop committed: the targets are dropped, but verification did not run "
        "— run it again to verify (it reports 'already applied')"
    )


def print_report(report: Any, *, as_json: bool, markdown: bool = False, out=None) -> None:
    out = out or sys.stdout
    if as_json:
        out.write(report.model_dump_json(indent=2) + "\n")
    elif markdown:
        from safedrop.report_markdown import render_markdown

        out.write(render_markdown(report) + "\n")
    else:
        from safedrop.report_text import render_text

        out.write(render_text(report))


def _usage_report(message: str, migration: str, dry_run: bool) -> Any:
    from safedrop.report import RunReport

    return RunReport(status="failed", reasons=[message], migration=migration, dry_run=dry_run)


def restore(args: argparse.Namespace) -> int:
    """`safedrop restore`: the restore-dropped-tables flow in this process; exit 0/3/1, 2 for bad input."""
    from pydantic import ValidationError

    from safedrop.errors import UsageError
    from safedrop.parameters import RestoreParameters
    from safedrop.report import RestoreReport

    try:
        url = database_url(args)
        from safedrop.manifest import find_backup

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
    from safedrop.interrupts import Interrupted
    from safedrop.runlog import quiet_expected_failures
    from safedrop.steps import plain_steps

    try:
        if prefect_server():
            quiet_expected_failures()
            state = restore_dropped_tables(params, return_state=True)
        else:
            with plain_steps():
                state = restore_dropped_tables.fn(params)
        report = state.result(raise_on_failure=False)
        if not isinstance(report, RestoreReport):  # the flow crashed: a bug, said in one line
            report = RestoreReport(
                status="failed",
                backup=args.backup,
                reasons=[f"the flow run ended {state.name}: {state.message}"],
            )
    except Interrupted as stop:
        stop.stage = "restore"
        return interrupted(stop)
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
        from safedrop.restorereport import render_text

        sys.stdout.write(render_text(report))
    return report.exit_code


def plan_or_run(args: argparse.Namespace) -> int:
    """`safedrop plan` (every precheck, nothing changed) or `safedrop run` (the whole job)."""
    from safedrop.errors import UsageError

    dry_run = args.command == "plan"
    try:
        params = parameters_from_args(args, dry_run=dry_run)
    except UsageError as exc:
        if args.json:
            print_report(_usage_report(str(exc), args.migration, dry_run), as_json=True)
        print(f"safedrop: {exc}", file=sys.stderr)
        return EXIT_USAGE
    from safedrop.interrupts import Interrupted

    try:
        report = run_flow(params)
    except Interrupted as stop:
        return interrupted(stop, params)
    except Exception as exc:  # Prefect itself could not run the flow: one line, not a traceback
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        message = f"Prefect could not run the flow ({type(exc).__name__}: {first})"
        if args.json:
            print_report(_usage_report(message, args.migration, dry_run), as_json=True)
        print(f"safedrop: {message}", file=sys.stderr)
        return EXIT_FAILED
    print_report(report, as_json=args.json, markdown=getattr(args, "markdown", False))
    return report.exit_code


def fleet(args: argparse.Namespace) -> int:
    """`safedrop fleet plan|run`: the fleet flow in this process, its children on the pool's workers.

    The fleet file is read first (exit 2 on any problem, nothing contacted); then a Prefect server must
    be configured (PREFECT_API_URL): the databases' runs are deployment runs that workers take. Running
    the command approves the fleet (``approval: skip``), as `safedrop run` approves its drop; each
    database's run is still held to its own plan. Ctrl-C cancels the running children.
    """
    from safedrop.errors import UsageError
    from safedrop.fleet import load_fleet
    from safedrop.fleetreport import FleetReport, render_text

    dry_run = args.fleet_command == "plan"
    try:
        silence_s = parse_duration_ms(args.child_silence) // 1000
        if not 60 <= silence_s <= 3600:
            raise UsageError(f"--child-silence must be between 1m and 1h, not {args.child_silence}")
        spec = load_fleet(args.fleet)
        from safedrop.fleet import child_deployment
        from safedrop.migration import load_migration

        child_deployment(load_migration(spec.migration))  # a migration of this checkout, with settings
        _require_prefect_server()
    except UsageError as exc:
        if args.json:
            failed = FleetReport(status="failed", reasons=[str(exc)], migration="", dry_run=dry_run)
            sys.stdout.write(failed.model_dump_json(indent=2) + "\n")
        print(f"safedrop: {exc}", file=sys.stderr)
        return EXIT_USAGE
    from flows.drop_deprecated_tables_fleet import drop_deprecated_tables_fleet
    from safedrop.fleet import FleetParameters
    from safedrop.runlog import quiet_expected_failures

    params = FleetParameters(fleet=spec, dry_run=dry_run, approval="skip", child_silence_s=silence_s)
    quiet_expected_failures()
    from safedrop.interrupts import Interrupted

    try:
        state = drop_deprecated_tables_fleet(params, return_state=True)
        result = state.result(raise_on_failure=False)
        report = getattr(result, "report", result)
        if not isinstance(report, FleetReport):  # the flow crashed: a bug, said in one line
            report = FleetReport(
                status="failed",
                reasons=[f"the fleet run ended {state.name}: {state.message}"],
                migration=spec.migration,
                dry_run=dry_run,
            )
    except Interrupted as stop:  # Prefect's engine turned SIGTERM/SIGINT into a crash, then passed it on
        from safedrop.childruns import interrupt_fleet_runs

        try:
            n = interrupt_fleet_runs("the fleet run was interrupted at its terminal")
        except Exception:  # the server is unreachable: say so; the children go on
            stop.stage = "fleet: its running database runs could not be cancelled (is the Prefect server up?)"
        else:
            stop.stage = (
                f"fleet: the fleet run stopped and {n} running database run(s) were cancelled; each "
                "database's report says what it did — run the fleet again to finish"
            )
        return interrupted(stop)
    except Exception as exc:  # Prefect itself could not run the flow: one line, not a traceback
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        report = FleetReport(
            status="failed",
            reasons=[f"Prefect could not run the fleet ({type(exc).__name__}: {first})"],
            migration=spec.migration,
            dry_run=dry_run,
        )
    if args.json:
        sys.stdout.write(report.model_dump_json(indent=2) + "\n")
    else:
        sys.stdout.write(render_text(report))
    return report.exit_code


def _require_prefect_server() -> None:
    """A fleet's databases are run by workers: without a Prefect server there are none."""
    from prefect.settings import get_current_settings

    from safedrop.errors import UsageError

    if not get_current_settings().api.url:
        raise UsageError(
            "safedrop fleet needs a Prefect server and workers on its work pool: PREFECT_API_URL is not "
            "set (e.g. export PREFECT_API_URL=http://127.0.0.1:4200/api; see the README's 'Running a fleet')"
        )
