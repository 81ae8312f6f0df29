"""The one exception family. Every message says what is wrong and what to do next.

The CLI prints ``str(error)`` on one line and exits with ``error.exit_code``; tracebacks are for bugs.
"""

from __future__ import annotations

from typing import Any

# How a failure message ends: what did not happen.
DID_NOT_RUN = "the drop did not run"  # a backup failure: nothing was dropped
NOTHING_CHANGED = "nothing was changed"  # a restore refusal
NOTHING_RESTORED = "nothing was restored"  # a restore whose transaction rolled back


class SafedropError(Exception):
    """Base class: an expected failure with an instructive, secret-free message."""

    exit_code = 1
    status = "failed"

    def __init__(self, message: str, *, report: Any = None) -> None:
        super().__init__(message)
        self.report = report

    def __reduce__(self):  # keep the message when Prefect pickles the exception
        return (self.__class__, (str(self),))


class UsageError(SafedropError):
    """Bad input from the operator: a flag, a parameter, a migration file. Nothing was touched."""

    exit_code = 2
    status = "failed"


class ConfigurationError(UsageError):
    """No database URL, an unreadable URL, or a missing binary."""


class MigrationFileError(UsageError):
    """The migration file is missing, does not parse, or holds something other than DROP TABLE."""


class ConnectionFailed(SafedropError):
    """The database could not be reached or refused the login (after retries).

    ``transient`` says whether trying again can help (a refused or dropped connection can; a wrong
    password or a missing database cannot).
    """

    def __init__(self, message: str, *, transient: bool = True, report=None) -> None:
        super().__init__(message, report=report)
        self.transient = transient

    def __reduce__(self):
        return (_rebuild_connection_failed, (str(self), self.transient))


class PrecheckStop(SafedropError):
    """A precheck found a reason not to drop. Nothing was changed."""

    exit_code = 3
    status = "stopped"

    def __init__(self, reasons: list[str], *, report: Any = None) -> None:
        self.reasons = list(reasons)
        lines = "; ".join(reasons)
        super().__init__(f"stopped before any change: {lines}", report=report)

    def __reduce__(self):
        return (self.__class__, (self.reasons,))


class CodeSourceError(SafedropError):
    """A git code source could not be fetched. Nothing was changed; the run stops."""

    exit_code = 3
    status = "stopped"


class BackupFailed(SafedropError):
    """pg_dump failed or its archive did not verify. The drop did not run."""

    exit_code = 3
    status = "stopped"


class TransientBackupFailure(BackupFailed):
    """A BackupFailed that a retry may fix (the connection failed or was closed).

    ``transient`` is a class attribute so it survives pickling (``SafedropError.__reduce__`` keeps only
    the message).
    """

    transient = True


class DropFailed(SafedropError):
    """The drop transaction failed and was rolled back; nothing was dropped."""


class DropStopped(DropFailed):
    """The drop found a reason not to go on (a lost run lock, a changed target): nothing was dropped."""

    exit_code = 3
    status = "stopped"


class ChangedSinceBackup(DropStopped):
    """Under the drop's lock, a target no longer matched the backup: nothing was dropped, re-run."""


class RestoreRefused(SafedropError):
    """The restore did not start: the archive, its manifest or the database says no. Nothing changed."""

    exit_code = 3
    status = "refused"


class RestoreFailed(SafedropError):
    """pg_restore failed; its single transaction was rolled back."""


class RestoreLockTimeout(RestoreRefused):
    """pg_restore did not get its locks within the lock-wait budget; nothing was restored."""


class SmokeCheckFailed(SafedropError):
    """After the drop, a check the operator gave (SQL or HTTP) failed: the message says how to restore."""


class VerificationFailed(SafedropError):
    """After the drop, the database is not as expected."""


def _rebuild_connection_failed(message: str, transient: bool) -> ConnectionFailed:
    return ConnectionFailed(message, transient=transient)


class RunEnded(SafedropError):
    """How a stopped or failed flow run ends: carries the run report (the state's data) and the exit
    code (``exit_code`` given: a usage error found inside the run, 2; else 3 stopped, 1 failed)."""

    def __init__(
        self, message: str, *, report=None, status: str = "failed", exit_code: int | None = None
    ) -> None:
        super().__init__(message, report=report)
        self.status = status
        self.exit_code = exit_code or (3 if status == "stopped" else 1)

    def __reduce__(self):
        return (_rebuild_run_ended, (str(self), self.report, self.status, self.exit_code))


def _rebuild_run_ended(message: str, report, status: str, exit_code: int | None = None) -> RunEnded:
    return RunEnded(message, report=report, status=status, exit_code=exit_code)
