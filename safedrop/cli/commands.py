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
from collections.abc import Callable
from pathlib import Path
from typing import Any

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_STOPPED = 0, 1, 2, 3


def parse_duration_ms(text: str) -> int:
    """'500ms', '2s', '1.5s', '5m', '12h', '30d' or a bare number of milliseconds."""
    from safedrop.errors import UsageError

    raw = text.strip().lower()
    units = (("ms", 1), ("s", 1000), ("m", 60_000), ("h", 3_600_000), ("d", 86_400_000))
    for suffix, factor in units:
        if raw.endswith(suffix) and raw[: -len(suffix)].replace(".", "", 1).isdigit():
            return int(float(raw[: -len(suffix)]) * factor)
    if raw.isdigit():
        return int(raw)
    raise UsageError(f"cannot read duration {text!r}; use e.g. 500ms, 2s or 5m")


DEFAULT_SECRET_BLOCK = "safedrop-database-url"


def database_source(args: argparse.Namespace) -> dict[str, str | None]:
    """Which database the operator named, as the flow's parameters name it (the URL itself never is one).

    A named source is the only one: ``--database-url`` (checked here, handed to the flow through the
    environment), or ``--secret-block`` (read inside the run; needs a Prefect server). Only when neither
    is named: ``$DATABASE_URL``, else ``./.env``, else — with a Prefect server — the Secret block
    ``safedrop-database-url``.
    """
    from safedrop.errors import ConfigurationError, UsageError
    from safedrop.pg.database import CLI_SOURCE_ENV, CLI_URL_ENV, database_from_url, resolve_database

    if args.database_url and args.secret_block:
        raise UsageError("--database-url and --secret-block name two sources of the database URL; give one")
    if args.secret_block:
        if not prefect_server():
            raise UsageError(
                f"--secret-block {args.secret_block} names a Prefect Secret block, and no Prefect server is "
                "configured to read it from: set PREFECT_API_URL, or pass --database-url"
            )
        return {"database_secret_block": args.secret_block, "database_url_env": None}
    if args.database_url:
        url, source = args.database_url, "--database-url"
    elif os.environ.get("DATABASE_URL"):
        url, source = os.environ["DATABASE_URL"], "$DATABASE_URL"
    else:
        try:
            url, source = resolve_database(None).secret.get_secret_value(), "./.env"
        except ConfigurationError:
            if prefect_server():
                return {"database_secret_block": DEFAULT_SECRET_BLOCK, "database_url_env": None}
            raise ConfigurationError(
                "no database URL: pass --database-url, set DATABASE_URL (in the environment or ./.env), or "
                "set PREFECT_API_URL and name a Prefect Secret block with --secret-block"
            ) from None
    database_from_url(url, source)  # a malformed or non-PostgreSQL URL stops here
    os.environ[CLI_URL_ENV], os.environ[CLI_SOURCE_ENV] = url, source
    return {"database_secret_block": None, "database_url_env": CLI_URL_ENV}


def parameters_from_args(args: argparse.Namespace, *, dry_run: bool) -> Any:
    """Validate the operator's input up front (no Prefect, no database) and build the flow's parameters."""
    from pydantic import ValidationError

    from safedrop.errors import UsageError
    from safedrop.migration import load_migration, parse_table_list
    from safedrop.parameters import DropParameters
    from safedrop.sources import is_git_source, parse_git_source

    code_paths = []
    for code_path in args.code_path:
        if is_git_source(code_path):
            parse_git_source(code_path)  # a URL carrying credentials is refused here, secret-free
            code_paths.append(code_path.strip())
        else:
            code_paths.append(str(Path(code_path)))

    source = database_source(args)
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
        **source,
    )
    if args.keep:  # repeatable, and each may be a comma-separated list
        fields["keep"] = [name.strip() for value in args.keep for name in value.split(",") if name.strip()]
    if getattr(args, "backup_dir", None):
        fields["backup_dir"] = args.backup_dir
    if args.command == "run":
        check_checks(args)  # one statement each, no secret in a URL: refused before anything runs
        fields.update(
            check_sql=args.check_sql,
            check_urls=args.check_url,
            check_url_envs=args.check_url_env,
            check_url_secret_blocks=args.check_url_secret_block,
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


def check_checks(args: argparse.Namespace) -> None:
    """The smoke checks as typed: each SQL check one statement, each URL without a secret, each named
    URL there to read (the flow runs in this process, so its environment is this one)."""
    from safedrop.analysis.smokechecks import check_url_syntax, named_url_problems
    from safedrop.checkinput import sql_check_problem
    from safedrop.errors import UsageError

    for query in args.check_sql:
        problem = sql_check_problem(query)
        if problem:
            raise UsageError(f"--check-sql {problem}: give each its own --check-sql")
    for url in args.check_url:
        check_url_syntax(url)
    for block in args.check_url_secret_block:
        if not prefect_server():
            raise UsageError(
                f"--check-url-secret-block {block} names a Prefect Secret block, and no Prefect server is "
                "configured to read it from: set PREFECT_API_URL"
            )
    problems = named_url_problems(args.check_url_env, args.check_url_secret_block)
    if problems:
        raise UsageError(problems[0])


def prefect_server() -> str | None:
    """The Prefect API this process is configured for (PREFECT_API_URL, a profile, a test harness).

    Told without importing Prefect (``import prefect`` alone is ~1.1 s of a plain ``safedrop plan``):
    Prefect decides only when it is already loaded (a harness, a flow run) or when one of the files it
    reads its settings from could name an API; otherwise only PREFECT_API_URL can.
    """
    if "prefect" in sys.modules or _settings_may_name_an_api():
        from prefect.settings import get_current_settings

        return get_current_settings().api.url or None
    return os.environ.get("PREFECT_API_URL") or None


def _settings_may_name_an_api() -> bool:
    """Whether the active Prefect profile, or a settings file in the working directory, may set the API."""
    import tomllib

    home = Path(os.environ.get("PREFECT_HOME") or "~/.prefect").expanduser()
    profiles = Path(os.environ.get("PREFECT_PROFILES_PATH") or home / "profiles.toml").expanduser()
    try:
        document = tomllib.loads(profiles.read_text())
    except FileNotFoundError:
        document = {}
    except (OSError, ValueError):
        return True  # unreadable: let Prefect read it and say what it says
    active = os.environ.get("PREFECT_PROFILE") or document.get("active") or "ephemeral"
    if "PREFECT_API_URL" in document.get("profiles", {}).get(active, {}):
        return True
    markers = {"prefect.toml": "api", ".env": "PREFECT_API_URL", "pyproject.toml": "tool.prefect"}
    for name, marker in markers.items():
        try:
            if marker in (Path.cwd() / name).read_text():
                return True
        except OSError:
            continue
    return False


def run_job(params: Any, flow: str, runbook: Callable[[Any], Any]) -> tuple[Any, Any]:
    """One job in this process, its final state and result: the Prefect ``flow`` ("module:name"), recorded
    on the server, when one is configured; else the ``runbook``'s steps as plain functions (no Prefect
    engine, no temporary server: not even imported — ``safedrop.steps``)."""
    if prefect_server():
        from importlib import import_module

        from safedrop.runlog import quiet_expected_failures

        module, name = flow.split(":")
        run = getattr(import_module(module), name)  # first: importing Prefect sets up its logging
        quiet_expected_failures()
        state = run(params, return_state=True)
        return state, state.result(raise_on_failure=False)
    from safedrop.steps import plain_steps

    with plain_steps():
        state = runbook(params)
    return state, state.data


def run_flow(params: Any) -> tuple[Any, int]:
    """Run the flow in this process: recorded through Prefect when a server is configured, else its steps
    as plain functions (no Prefect engine, no temporary server: ``safedrop.steps``). The run report and
    the exit code.

    If Prefect itself fails once the drop committed (its API gone: the flow run's state not recorded),
    the report is made from what the run found, so it still says what was dropped and how to restore."""
    from flows.drop_runbook import drop_tables, recording_runs, report_after_prefect_failed
    from safedrop.errors import SafedropError
    from safedrop.results import RunReport

    with recording_runs() as records:
        try:
            flow = "flows.drop_deprecated_tables:drop_deprecated_tables"
            state, result = run_job(params, flow, drop_tables)
        except Exception as exc:
            if not records or records[-1].drop is None:
                raise  # nothing was dropped: the caller says Prefect could not run the flow
            return report_after_prefect_failed(records[-1], exc), EXIT_FAILED
    if isinstance(result, RunReport):
        return result, result.exit_code
    if isinstance(result, SafedropError) and isinstance(result.report, RunReport):
        return result.report, result.exit_code
    if records and records[-1].drop is not None:  # the flow run crashed after the drop: still the facts
        crash = RuntimeError(f"{state.name}: {state.message}")
        return report_after_prefect_failed(records[-1], crash), EXIT_FAILED
    # the flow crashed (a bug, not an expected failure): say so in one line
    report = RunReport(
        status="failed",
        reasons=[f"the flow run ended {state.name}: {state.message}"],
        migration=params.migration,
        dry_run=params.dry_run,
    )
    return report, report.exit_code


STAGES = {
    "start-up": "interrupted before it started; nothing was changed",
    "prechecks": "interrupted during the prechecks; nothing was changed",
    "backup": "interrupted during the backup; nothing was dropped (the partial archive was removed)",
    # the drop: what the database says once the drop's session has ended, never a guess
    "drop": "interrupted before the drop committed; it rolled back: nothing was dropped",
    "drop-committed": "interrupted after the drop committed: the targets are dropped, but verification did "
    "not run — run it again to verify (it reports 'already applied')",
    "drop-unknown": "interrupted during the drop, and whether it committed could not be read back — run "
    "`safedrop plan` to see (it reports 'already applied' if the targets are gone); the report above names "
    "the backup and the restore command",
    "verification": "interrupted after the drop: the targets are dropped, but verification did not finish "
    "— run it again to verify (it reports 'already applied')",
    "verified": "interrupted after the drop was verified: the targets are dropped; the smoke checks or the "
    "summary did not finish — the report above says what was dropped and how to restore it",
    "restore": "interrupted during the restore; its transaction rolled back: nothing was restored",
}


def interrupted(stop: Any, params: Any = None) -> int:
    """Say in one line what was and was not done when a signal stopped the command; its exit code.
    (Once the drop committed, or may have, the run's report — printed first — names the backup and the
    restore command.)"""
    if stop.stage.startswith("fleet: "):  # each database's own run says what it did (its report, its ledger)
        line = f"interrupted; {stop.stage.removeprefix('fleet: ')}"
    else:
        line = STAGES.get(stop.stage) or f"interrupted during {stop.stage}"
    print(f"safedrop: {line}", file=sys.stderr)
    return stop.exit_code


def print_report(report: Any, *, as_json: bool, markdown: bool = False, out=None) -> None:
    out = out or sys.stdout
    if as_json:
        out.write(report.model_dump_json(indent=2) + "\n")
    elif markdown:
        from safedrop.report.markdown import render_markdown

        out.write(render_markdown(report) + "\n")
    else:
        from safedrop.report.text import render_text

        out.write(render_text(report))


def _usage_report(message: str, migration: str, dry_run: bool) -> Any:
    from safedrop.results import RunReport

    return RunReport(status="failed", reasons=[message], migration=migration, dry_run=dry_run)


def restore(args: argparse.Namespace) -> int:
    """`safedrop restore`: the restore-dropped-tables flow in this process; exit 0/3/1, 2 for bad input."""
    from pydantic import ValidationError

    from safedrop.errors import UsageError
    from safedrop.parameters import RestoreParameters
    from safedrop.results import RestoreReport

    try:
        source = database_source(args)
        from safedrop.restore.fetch import locate

        archive = locate(args.backup)  # an s3:// URI, a path, a file name in the backup directory, a run id
        try:
            params = RestoreParameters(
                backup_path=str(archive),
                **source,
                no_owner=args.no_owner,
                dry_run=args.dry_run,
                into_other_database=args.into_other_database,
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
    from flows.restore_runbook import restore_tables
    from safedrop.interrupts import Interrupted

    try:
        state, report = run_job(params, "flows.restore_dropped_tables:restore_dropped_tables", restore_tables)
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
        from safedrop.restore.restorereport import render_text

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
        report, code = run_flow(params)
    except Interrupted as stop:
        if getattr(stop, "report", None) is not None:  # the drop committed (or may have): the facts first
            print_report(stop.report, as_json=args.json, markdown=getattr(args, "markdown", False))
        return interrupted(stop, params)
    except Exception as exc:  # Prefect itself could not run the flow: one line, not a traceback
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        message = f"Prefect could not run the flow ({type(exc).__name__}: {first})"
        if args.json:
            print_report(_usage_report(message, args.migration, dry_run), as_json=True)
        print(f"safedrop: {message}", file=sys.stderr)
        return EXIT_FAILED
    print_report(report, as_json=args.json, markdown=getattr(args, "markdown", False))
    return code


def fleet(args: argparse.Namespace) -> int:
    """`safedrop fleet plan|run`: the fleet flow in this process, its children on the pool's workers.

    The fleet file is read first (exit 2 on any problem, nothing contacted); then a Prefect server must
    be configured (PREFECT_API_URL): the databases' runs are deployment runs that workers take. Running
    the command approves the fleet (``approval: skip``), as `safedrop run` approves its drop; each
    database's run is still held to its own plan. Ctrl-C cancels the running children.
    """
    from safedrop.errors import UsageError
    from safedrop.fleet.fleetfile import load_fleet
    from safedrop.fleet.fleetreport import FleetReport, render_text

    dry_run = args.fleet_command == "plan"
    try:
        silence_s = parse_duration_ms(args.child_silence) // 1000
        if not 60 <= silence_s <= 3600:
            raise UsageError(f"--child-silence must be between 1m and 1h, not {args.child_silence}")
        spec = load_fleet(args.fleet)
        from safedrop.fleet.fleetfile import child_deployment
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
    from safedrop.fleet.fleetfile import FleetParameters
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
        from safedrop.fleet.childruns import interrupt_fleet_runs

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
    from safedrop.errors import UsageError

    if not prefect_server():
        raise UsageError(
            "safedrop fleet needs a Prefect server and workers on its work pool: PREFECT_API_URL is not "
            "set (e.g. export PREFECT_API_URL=http://127.0.0.1:4200/api; see the README's 'Running a fleet')"
        )


def backups(args: argparse.Namespace) -> int:
    """`safedrop backups list|prune`: the backups under a directory or bucket; exit 0, 2 for bad input,
    1 when the store or the directory cannot be read (or a removal failed)."""
    from safedrop.backup.inventory import BackupInventory, abort, inventory, prunable, remove, unfinished
    from safedrop.errors import SafedropError, UsageError
    from safedrop.paths import backup_dir
    from safedrop.store.location import S3Location, parse_s3

    try:
        configured = backup_dir(args.backup_dir)
        where = parse_s3(configured, "--backup-dir") if isinstance(configured, str) else configured
        older_than_s = parse_duration_ms(args.older_than) // 1000 if args.backups_command == "prune" else None
    except UsageError as exc:
        print(f"safedrop: {exc}", file=sys.stderr)
        return EXIT_USAGE
    report = BackupInventory(location=str(where), backups=[], prune_older_than_s=older_than_s)
    try:
        report.backups = inventory(where)
        if isinstance(where, S3Location):
            report.unfinished_uploads = unfinished(where)
        if older_than_s is not None:
            doomed = prunable(report.backups, older_than_s)
            stale = [u for u in report.unfinished_uploads if u.age_s > older_than_s]
            report.to_remove = [e.archive for e in doomed]
            report.to_abort = [u.uri for u in stale]
            report.dry_run = not args.confirm
            for entry in doomed if args.confirm else []:
                remove(entry)
                report.removed.append(entry.archive)
            for upload in stale if args.confirm else []:
                abort(upload)
                report.aborted.append(upload.uri)
    except (SafedropError, OSError) as exc:
        message = str(exc) if isinstance(exc, SafedropError) else f"{exc.strerror}: {exc.filename}"
        if args.json:
            print(report.model_dump_json(indent=2))
        print(f"safedrop: {message}", file=sys.stderr)
        return 1
    if args.json:
        print(report.model_dump_json(indent=2))
    else:
        print(_backups_text(report), end="")
    return 0


def _age(age_s: int) -> str:
    return f"{age_s // 86400} d" if age_s >= 86400 else f"{age_s // 3600} h"


def _and_abort(uploads: list[str], verb: str = "abort") -> str:
    return f" and {verb} {len(uploads)} unfinished upload(s)" if uploads else ""


def _backups_text(report) -> str:
    from safedrop.report.progress import human_bytes

    lines = [f"backups in {report.location}: {len(report.backups)}"]
    for e in report.backups:
        mark = "needed" if e.needed else ("remove" if e.archive in report.to_remove else "")
        size = human_bytes(e.bytes)
        row = f"  {e.archive}  {e.database}  {e.migration or '-'}  {size}  {_age(e.age_s)}  {mark}"
        lines.append(row.rstrip())
    if report.unfinished_uploads:
        lines.append(
            f"unfinished uploads (parts the store keeps with no object — a backup that could not finish, "
            f"or one running now): {len(report.unfinished_uploads)}"
        )
        for u in report.unfinished_uploads:
            mark = "abort" if u.uri in report.to_abort else ""
            lines.append(f"  {u.uri}  started {u.started_at}  {_age(u.age_s)}  {mark}".rstrip())
    if report.prune_older_than_s is not None:
        if report.dry_run:
            days, also = report.prune_older_than_s / 86400, _and_abort(report.to_abort)
            lines.append(
                f"would remove {len(report.to_remove)} backup(s) older than {days:g} d{also} "
                "(dry run: add --confirm to remove them); the newest of each migration and database stays"
            )
        else:
            also = _and_abort(report.aborted, "aborted")
            lines.append(
                f"removed {len(report.removed)} backup(s){also}; "
                "the newest of each migration and database stays"
            )
    return "\n".join(lines) + "\n"
