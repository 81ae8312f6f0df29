"""`safedrop demo` / `make demo`: the whole job on a throwaway PostgreSQL, with no configuration.

Starts PostgreSQL in a temporary directory on a free port (as the `postgres` user when run as root),
seeds a database shaped like the team's guide, writes a small application tree that no longer uses
the targets, then runs `plan` and `run` in Prefect's embedded mode, prints both summaries and where
the backup is, and stops the server and removes its files. The backup goes to ``demo/`` in this
machine's backup directory (``$SAFEDROP_BACKUP_DIR``, else ``~/.local/share/safedrop/backups``),
not into the working directory (the checkout, for ``make demo``).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from safedrop import SQL_DIR
from safedrop.paths import default_backup_dir, local_backup_dir
from safedrop.pg.pgserver import LocalPostgres

DEMO_DATABASE = "credit_demo"

_APP_FILES = {
    "package.json": '{ "name": "credits-api", "version": "1.0.0", "main": "src/index.js" }\n',
    "src/models/credit.js": (
        "const { DataTypes } = require('sequelize');\n"
        "module.exports = (sequelize) => sequelize.define('credits', {\n"
        "  tenantId: { type: DataTypes.BIGINT, field: 'tenant_id' },\n"
        "  balance: DataTypes.DECIMAL,\n"
        "}, { tableName: 'credits' });\n"
    ),
    "src/services/usage.js": (
        "async function recordUsage(db, tenantId, creditId, feature, amount) {\n"
        "  await db.query('INSERT INTO credit_usage (tenant_id, credit_id, feature, amount) "
        "VALUES ($1, $2, $3, $4)', [tenantId, creditId, feature, amount]);\n"
        "}\nmodule.exports = { recordUsage };\n"
    ),
    # The retired feature's code lives only in migrations and docs, which the scan skips.
    "src/db/migrations/20240101-create-credit-allocations.js": (
        "exports.up = (knex) => knex.schema.createTable('credit_allocations', (t) => t.bigIncrements());\n"
    ),
    "docs/credit-allocations.md": "# credit_allocations (retired)\n",
}


def write_demo_app(root: Path) -> Path:
    for rel, text in _APP_FILES.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def run_demo(main: Callable[[list[str]], int], *, as_json: bool = False) -> int:
    """Seed a throwaway PostgreSQL, then run ``main(["plan", …])`` and ``main(["run", …])`` on it."""
    print("safedrop demo: starting a throwaway PostgreSQL …", file=sys.stderr)
    work = Path(tempfile.mkdtemp(prefix="safedrop-demo-"))
    try:
        with LocalPostgres() as pg:
            pg.psql(f"CREATE DATABASE {DEMO_DATABASE}")
            pg.psql((SQL_DIR / "demo" / "schema.sql").read_text(), database=DEMO_DATABASE)
            app = write_demo_app(work / "credits-api")
            configured = default_backup_dir()  # the demo keeps its archives on this machine
            backups = (configured if isinstance(configured, Path) else local_backup_dir()).absolute() / "demo"
            os.environ["DATABASE_URL"] = pg.url(DEMO_DATABASE)
            print(
                f"safedrop demo: PostgreSQL on 127.0.0.1:{pg.port}, database {DEMO_DATABASE} seeded; "
                "running `safedrop plan` then `safedrop run` (Prefect embedded mode, ~10 s each) …",
                file=sys.stderr,
            )
            common = ["--code-path", str(app)] + (["--json"] if as_json else [])
            print("\n$ safedrop plan --code-path …", file=sys.stderr)
            code = main(["plan", *common])
            if code != 0:
                return code
            print(f"\n$ safedrop run --code-path … --backup-dir {backups}", file=sys.stderr)
            code = main(["run", *common, "--backup-dir", str(backups)])
            if code == 0:
                print(
                    f"\nsafedrop demo: done. The backup is in {backups}/ ; the throwaway "
                    "server is being stopped and removed.",
                    file=sys.stderr,
                )
            return code
    finally:
        os.environ.pop("DATABASE_URL", None)
        shutil.rmtree(work, ignore_errors=True)
