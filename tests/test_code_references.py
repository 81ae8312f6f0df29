"""The code-reference scan, against a generated Node.js/TypeScript app and the real ripgrep."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

from safedrop.analysis.codescan import SKIPPED_WARNING, scan_code
from safedrop.analysis.identifiers import identifier_variants
from safedrop.errors import UsageError
from safedrop.migration import TableName
from safedrop.results import CodeScanResult
from tasks.code_references import code_reference_scan

TARGETS = [TableName("public", "credit_allocation_transactions"), TableName("public", "credit_allocations")]

BILLING_SQL_LINE = (
    "  const { rows } = await db.query('SELECT * FROM \"credit_allocations\" WHERE org_id = $1', [orgId]);"
)

# What the scan must find in the app: (path, line, identifier). Nothing else.
EXPECTED = {
    ("prisma/schema.prisma", 1, "CreditAllocation"),
    ("prisma/schema.prisma", 6, "CreditAllocationTransaction"),
    ("prisma/schema.prisma", 7, "credit_allocations"),
    ("prisma/schema.prisma", 10, "CreditAllocationTransaction"),
    ("prisma/schema.prisma", 13, "credit_allocation_transactions"),
    ("src/db/sequelize-models.js", 4, "CreditAllocation"),
    ("src/db/sequelize-models.js", 4, "credit_allocations"),
    ("src/entities/CreditAllocation.ts", 3, "credit_allocations"),
    ("src/entities/CreditAllocation.ts", 4, "CreditAllocation"),
    ("src/routes/credits.ts", 4, "credit-allocations"),
    ("src/routes/credits.ts", 5, "creditAllocations"),
    ("src/services/billing.js", 4, "credit_allocations"),
    ("src/services/billing.js", 9, "credit_allocation_transactions"),
    ("src/types/credits.ts", 1, "CreditAllocation"),
    ("src/types/credits.ts", 6, "CreditAllocationTransaction"),
    ("src/types/credits.ts", 6, "CreditAllocation"),
}

APP_FILES = {
    # ---- code that references the targets -------------------------------------------------------
    "prisma/schema.prisma": """\
model CreditAllocation {
  id             String   @id @default(uuid())
  organizationId String   @map("organization_id")
  amount         Int
  createdAt      DateTime @default(now()) @map("created_at")
  transactions   CreditAllocationTransaction[]
  @@map("credit_allocations")
}

model CreditAllocationTransaction {
  id                 String @id @default(uuid())
  creditAllocationId String @map("credit_allocation_id")
  @@map("credit_allocation_transactions")
}

model Credit {
  id      String @id
  balance Int
  @@map("credits")
}
""",
    "src/db/sequelize-models.js": """\
const { DataTypes } = require('sequelize');

module.exports = (sequelize) => {
  const CreditAllocation = sequelize.define('credit_allocations', {
    id: { type: DataTypes.UUID, primaryKey: true },
    credit_allocation_id: { type: DataTypes.UUID },
  });
  const Credit = sequelize.define('credits', { balance: DataTypes.INTEGER });
  return { Credit };
};
""",
    "src/entities/CreditAllocation.ts": """\
import { Entity, PrimaryGeneratedColumn, Column } from "typeorm";

@Entity("credit_allocations")
export class CreditAllocation {
  @PrimaryGeneratedColumn("uuid") id!: string;
  @Column() creditAllocationId!: string;
}
""",
    "src/routes/credits.ts": """\
import { Router } from "express";

export const router = Router();
router.get("/api/credit-allocations/:id", async (req, res) => {
  res.json(await services.creditAllocations.get(req.params.id));
});
router.get("/api/credits", listCredits);
""",
    "src/services/billing.js": f"""\
const db = require('../db');

async function allocationsFor(orgId) {{
{BILLING_SQL_LINE}
  return rows;
}}

async function transactionsFor(allocationId) {{
  return db.query('SELECT amount FROM public.credit_allocation_transactions WHERE credit_allocation_id = $1',
    [allocationId]);
}}
""",
    "src/types/credits.ts": """\
export interface CreditAllocation {
  id: string;
  amount: number;
}

export type CreditAllocationTransaction = { id: string; allocation: CreditAllocation };
""",
    # ---- look-alikes that are other tables or columns: no hits ----------------------------------
    "src/services/usage.ts": """\
const creditAllocationId = row.credit_allocation_id;
await db.query("SELECT * FROM credits JOIN credit_usage USING (organization_id)");
export const creditAllocationsCount = 0;
type CreditAllocationTransactionRow = { credit_allocations_total: number };
""",
    "package.json": '{"name": "billing-api", "dependencies": {"express": "^4.19.0"}}\n',
    # ---- places the scan skips ------------------------------------------------------------------
    "package-lock.json": '{"packages": {"node_modules/credit-allocations": {"version": "1.0.0"}}}\n',
    "README.md": "The `credit_allocations` table is deprecated.\n",
    "CHANGELOG.md": "- drop credit_allocation_transactions\n",
    "docs/credits.md": "CreditAllocation is gone.\n",
    "docs/schema.sql": "CREATE TABLE credit_allocations (id uuid);\n",
    "doc/notes.txt": "credit_allocations\n",
    "node_modules/credit-orm/index.js": "module.exports = 'credit_allocations';\n",
    "dist/services/billing.js": "db.query('SELECT * FROM \"credit_allocations\"');\n",
    "build/server.js": "const CreditAllocation = require('./x');\n",
    "coverage/lcov-report/billing.js.html": "<td>credit_allocations</td>\n",
    "src/db/migrations/20240601120000-drop-credit-allocations.js": (
        "module.exports = { up: (q) => q.dropTable('credit_allocations') };\n"
    ),
    "src/migration/1717243200000-DropCreditAllocations.ts": (
        'await queryRunner.dropTable("credit_allocation_transactions");\n'
    ),
    "src/db/1717243200000-drop.migration.ts": "DROP TABLE credit_allocations;\n",
    "prisma/migrations/20240601120000_drop_credit_allocations/migration.sql": (
        'DROP TABLE "credit_allocations";\n'
    ),
    "db/migrate/20240601_drop_credit_allocations.js": "knex.schema.dropTable('credit_allocations');\n",
    ".gitignore": "generated/\n*.local.ts\n",
    "generated/prisma-client/index.ts": "export type CreditAllocation = {};\n",
    "src/config/secrets.local.ts": "export const table = 'credit_allocations';\n",
    ".turbo/cache/log.txt": "credit_allocations\n",
    ".vscode/settings.json": '{"sqltools.table": "credit_allocations"}\n',
}


def write_tree(root: Path, files: dict[str, str | bytes]) -> Path:
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
    return root


@pytest.fixture
def app(tmp_path: Path) -> Path:
    """A Node.js/TypeScript backend as checked out by CI: no .git directory, a .gitignore."""
    return write_tree(tmp_path / "billing-api", APP_FILES)


def found(result: CodeScanResult) -> set[tuple[str, int, str]]:
    return {(r.path, r.line, r.identifier) for r in result.references}


# --------------------------------------------------------------------------------------------------
# identifier variants


def test_identifier_variants_of_credit_allocations():
    assert identifier_variants("credit_allocations") == [
        "credit_allocations",
        "credit-allocations",
        "credit_allocation",
        "creditAllocations",
        "CreditAllocations",
        "credit-allocation",
        "creditAllocation",
        "CreditAllocation",
    ]


def test_identifier_variants_of_credit_allocation_transactions():
    assert identifier_variants("credit_allocation_transactions") == [
        "credit_allocation_transactions",
        "credit-allocation-transactions",
        "credit_allocation_transaction",
        "credit-allocation-transaction",
        "creditAllocationTransactions",
        "CreditAllocationTransactions",
        "creditAllocationTransaction",
        "CreditAllocationTransaction",
    ]


@pytest.mark.parametrize(
    ("table", "singular", "plural"),
    [
        ("categories", "category", "categories"),
        ("billing_addresses", "billing_address", "billing_addresses"),
        ("tax_boxes", "tax_box", "tax_boxes"),
        ("payout_batches", "payout_batch", "payout_batches"),
        ("order_status", "order_status", "order_statuses"),
        ("credit_usage", "credit_usage", "credit_usages"),
        ("company", "company", "companies"),
    ],
)
def test_identifier_variants_singular_and_plural(table, singular, plural):
    variants = identifier_variants(table)
    assert singular in variants and plural in variants
    assert len(variants) == len(set(variants))
    assert [len(v) for v in variants] == sorted((len(v) for v in variants), reverse=True)


# --------------------------------------------------------------------------------------------------
# scan_code


def test_finds_every_reference_and_nothing_else(app):
    assert not (app / ".git").exists()  # .gitignore must count without a checkout

    result = scan_code([str(app)], TARGETS)

    assert found(result) == EXPECTED
    assert result.status == "done"
    assert result.roots == [str(app)]
    assert result.reasons == [
        "code still references the targets: 16 references in 6 files "
        "(first: prisma/schema.prisma:1 CreditAllocation); remove them, or pass --code-policy warn"
    ]
    assert result.warnings == []


def test_reference_position_and_text(app):
    result = scan_code([str(app)], TARGETS)

    [ref] = [r for r in result.references if r.path == "src/services/billing.js" and r.line == 4]
    assert ref.root == str(app)
    assert ref.column == 51 == BILLING_SQL_LINE.index("credit_allocations") + 1
    assert ref.identifier == "credit_allocations"
    assert ref.text == BILLING_SQL_LINE.strip()


def test_several_matches_on_one_line_are_several_references(app):
    result = scan_code([str(app)], TARGETS)

    refs = [r for r in result.references if r.path == "src/types/credits.ts" and r.line == 6]
    assert [(r.column, r.identifier) for r in refs] == [
        (13, "CreditAllocationTransaction"),
        (69, "CreditAllocation"),
    ]


def test_column_counts_characters_and_long_lines_are_cut(tmp_path):
    minified = "var a=1;" * 5_000 + 'fetch("/credit-allocations")' + ";var b=2" * 5_000
    root = write_tree(
        tmp_path, {"src/é.js": "// crédit: credit_allocations\n", "public/app.min.js": minified}
    )

    result = scan_code([str(root)], TARGETS)

    by_path = {r.path: r for r in result.references}
    assert by_path["src/é.js"].column == 12
    long = by_path["public/app.min.js"]
    assert long.column == 40_009 and long.identifier == "credit-allocations"
    assert len(long.text) <= 202 and "credit-allocations" in long.text
    assert long.text.startswith("…") and long.text.endswith("…")


def test_no_code_path_skips_with_a_warning():
    result = scan_code([], TARGETS, dry_run=True)  # a run that drops stops instead: tests/test_gitsource.py

    assert result.status == "skipped"
    assert result.reasons == []
    assert result.warnings == [SKIPPED_WARNING]
    assert SKIPPED_WARNING.startswith("code-reference scan skipped: no code path given; pass --code-path")


def test_policy_warn_reports_without_stopping(app):
    result = scan_code([str(app)], TARGETS, policy="warn")

    assert found(result) == EXPECTED
    assert result.reasons == []
    assert result.warnings == [
        "code still references the targets: 16 references in 6 files "
        "(first: prisma/schema.prisma:1 CreditAllocation); remove them before the tables are gone for good"
    ]


def test_clean_code_passes(app):
    for name in {path for path, _, _ in EXPECTED}:
        (app / name).unlink()

    result = scan_code([str(app)], TARGETS)

    assert result.status == "done"
    assert result.references == [] and result.reasons == [] and result.warnings == []


def test_include_globs_limit_the_scan(app):
    result = scan_code([str(app)], TARGETS, include=["src/**/*.ts"])

    # src/config/secrets.local.ts matches the include glob but stays out: .gitignore still applies

    assert found(result) == {ref for ref in EXPECTED if ref[0].startswith("src/") and ref[0].endswith(".ts")}


def test_include_globs_do_not_reopen_default_excludes(app):
    result = scan_code([str(app)], TARGETS, include=["*.js", "*.md"])

    assert {path for path, _, _ in found(result)} == {"src/db/sequelize-models.js", "src/services/billing.js"}


def test_scan_leaves_the_tree_untouched(app):
    before = sorted((p, p.stat().st_mtime_ns) for p in app.rglob("*"))

    scan_code([str(app)], TARGETS, include=["src/**"], exclude=["prisma/"])

    assert sorted((p, p.stat().st_mtime_ns) for p in app.rglob("*")) == before


def test_exclude_globs_add_to_the_defaults(app):
    result = scan_code([str(app)], TARGETS, exclude=["prisma/", "src/routes/**"])

    assert found(result) == {ref for ref in EXPECTED if not ref[0].startswith(("prisma/", "src/routes/"))}


def test_paths_are_relative_to_each_root(app, tmp_path):
    worker = write_tree(
        tmp_path / "worker", {"jobs/expire.ts": "import { CreditAllocation } from '@app/types';\n"}
    )
    single_file = app / "src" / "services" / "billing.js"

    result = scan_code([str(worker), str(single_file)], TARGETS)

    assert [(r.root, r.path, r.line, r.column) for r in result.references] == [
        (str(worker), "jobs/expire.ts", 1, 10),
        (str(single_file), "billing.js", 4, 51),
        (str(single_file), "billing.js", 9, 46),
    ]
    assert result.reasons[0].startswith(
        f"code still references the targets: 3 references in 2 files (first: {worker}/jobs/expire.ts:1 "
    )


def test_nonexistent_code_path_is_a_usage_error(app, tmp_path):
    missing = str(tmp_path / "no-such-repo")
    with pytest.raises(UsageError) as exc:
        scan_code([str(app), missing], TARGETS)
    assert str(exc.value) == f"code path {missing} does not exist"


@pytest.mark.parametrize("flag", ["include", "exclude"])
def test_bad_glob_is_a_usage_error(app, flag):
    with pytest.raises(UsageError) as exc:
        scan_code([str(app)], TARGETS, **{flag: ["src/[oops"]})
    assert str(exc.value) == (
        "code scan glob 'src/[oops' is not a valid ripgrep glob (unclosed character class; missing ']'); "
        f"fix it in --code-{flag} (code_{flag})"
    )


def test_negated_include_glob_is_a_usage_error(app):
    with pytest.raises(UsageError) as exc:
        scan_code([str(app)], TARGETS, include=["!src/legacy/**"])
    assert str(exc.value) == (
        "code scan include glob '!src/legacy/**' starts with '!'; pass it without '!' to --code-exclude"
    )


def test_binary_files_are_skipped(tmp_path):
    root = write_tree(
        tmp_path, {"assets/logo.png": b"\x89PNG\x00\x00credit_allocations\x00", "src/a.ts": "x\n"}
    )

    result = scan_code([str(root)], TARGETS)

    assert result.references == []


# --------------------------------------------------------------------------------------------------
# the Prefect task


def _artifacts(*keys: str) -> dict:
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=list(keys))))
    return {artifact.key: artifact for artifact in found}


def test_task_publishes_markdown_and_table_artifacts(prefect_harness, app):
    prefix = f"test-{uuid.uuid4().hex[:8]}"

    @flow
    def scan_flow() -> CodeScanResult:
        return code_reference_scan([str(app)], TARGETS, "warn", [], [], prefix)

    result = scan_flow()

    assert found(result) == EXPECTED
    artifacts = _artifacts(f"{prefix}-code-references", f"{prefix}-code-references-table")
    assert set(artifacts) == {f"{prefix}-code-references", f"{prefix}-code-references-table"}
    markdown = artifacts[f"{prefix}-code-references"]
    assert markdown.type == "markdown"
    assert "code still references the targets: 16 references in 6 files" in markdown.data
    row = "| src/services/billing.js | 4 | 51 | credit_allocations | ` const { rows } = await db.query("
    assert row in markdown.data
    table = artifacts[f"{prefix}-code-references-table"]
    assert table.type == "table"
    assert "src/routes/credits.ts" in str(table.data)


def test_task_skipped_publishes_a_note_and_no_table(prefect_harness):
    prefix = f"test-{uuid.uuid4().hex[:8]}"

    @flow
    def scan_flow() -> CodeScanResult:
        return code_reference_scan([], TARGETS, "fail", [], [], prefix, dry_run=True)

    result = scan_flow()

    assert result.status == "skipped"
    artifacts = _artifacts(f"{prefix}-code-references", f"{prefix}-code-references-table")
    assert set(artifacts) == {f"{prefix}-code-references"}
    assert "**Skipped**: no code path given; pass --code-path" in artifacts[f"{prefix}-code-references"].data
