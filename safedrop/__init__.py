"""safedrop: retire deprecated PostgreSQL tables without losing a row or stalling production."""

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SQL_DIR = ROOT / "sql"

__all__ = ["ROOT", "SQL_DIR"]
