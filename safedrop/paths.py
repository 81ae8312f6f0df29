"""Where safedrop keeps files on the machine that runs it: never inside the code checkout.

A worker may run on any machine, in any directory, and its checkout (if it has one) is code, not a
place for archives that hold every row of a production database.
"""

from __future__ import annotations

import os
from pathlib import Path

BACKUP_DIR_ENV = "SAFEDROP_BACKUP_DIR"


def default_backup_dir() -> Path | str:
    """``$SAFEDROP_BACKUP_DIR`` (a directory, or an ``s3://BUCKET/PREFIX`` URI kept as it is), else
    ``$XDG_DATA_HOME/safedrop/backups`` (``~/.local/share/…``)."""
    configured = os.environ.get(BACKUP_DIR_ENV, "").strip()
    return backup_dir(configured) if configured else local_backup_dir()


def local_backup_dir() -> Path:
    """``$XDG_DATA_HOME/safedrop/backups`` (``~/.local/share/safedrop/backups``)."""
    data_home = os.environ.get("XDG_DATA_HOME", "").strip() or str(Path.home() / ".local" / "share")
    return Path(data_home).expanduser() / "safedrop" / "backups"


def backup_dir(configured: str | None) -> Path | str:
    """Where a run's backups go: the place it was given, else the machine's default. A directory is a
    Path; an object-store URI (``s3://…``) stays a string — ``safedrop.store.location`` parses it."""
    text = (configured or "").strip()
    if not text:
        return default_backup_dir()
    return text if text.lower().startswith("s3://") else Path(text).expanduser()


def state_dir() -> Path:
    """What the command line remembers between runs on this machine (no Prefect server to keep it):
    ``$XDG_STATE_HOME/safedrop`` (``~/.local/state/safedrop``)."""
    state_home = os.environ.get("XDG_STATE_HOME", "").strip() or str(Path.home() / ".local" / "state")
    return Path(state_home).expanduser() / "safedrop"
