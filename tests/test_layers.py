"""The layers keep their direction: the habit that keeps the code in rooms a newcomer can hold in their head.

    flows/  ->  tasks/  ->  safedrop/          (the command line, safedrop/cli/, may import the flows)

and inside safedrop/, between its subpackages (each ``__init__.py`` says what it may import):

    cli/  ->  fleet/ | restore/ -> backup/  ->  analysis/  ->  report/  ->  pg/ | store/  ->  the shared modules

Read with the standard library's ``ast``, every import counted — also the ones inside functions:
``safedrop/`` (the library) never imports ``tasks/`` or ``flows/``, except the command line, which may
import ``flows/``; ``tasks/`` never imports ``flows/``; a subpackage imports only those below it (fleet/
and restore/ not each other; the shared top-level modules none); no module imports another's private
(``_name``) names; and there is no import cycle between modules.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("safedrop", "tasks", "flows")
# What each part of safedrop/ may import besides itself ("" = the shared top-level modules).
MAY_IMPORT = {
    "": set(),
    "pg": {""},
    "store": {""},
    "report": {"", "pg"},
    "analysis": {"", "pg", "report"},
    "backup": {"", "pg", "store", "report", "analysis"},
    "restore": {"", "pg", "store", "report", "analysis", "backup"},
    "fleet": {"", "pg", "store", "report", "analysis"},
    "cli": {"", "pg", "store", "report", "analysis", "backup", "restore", "fleet"},
}


def modules() -> dict[str, Path]:
    return {
        ".".join(path.relative_to(ROOT).with_suffix("").parts): path
        for package in PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
        if path.name != "__init__.py"
    }


def subpackages() -> set[str]:
    return {".".join(p.parent.relative_to(ROOT).parts) for p in ROOT.glob("safedrop/*/__init__.py")}


def part(module: str) -> str:
    """The subpackage of safedrop/ a module lives in ("" for the shared top-level modules)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 2 else ""


def imports(path: Path) -> list[tuple[str, list[str]]]:
    """(module imported, names taken from it) for every import statement in the file."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.module, [alias.name for alias in node.names]))
    return out


def project_edges() -> dict[str, set[str]]:
    """module -> the project modules it imports (``from safedrop.pg import queries`` counts as
    safedrop.pg.queries)."""
    known, packages = modules(), {*PACKAGES, *subpackages()}
    edges: dict[str, set[str]] = {m: set() for m in known}
    for module, path in known.items():
        for target, names in imports(path):
            candidates = [target, *(f"{target}.{n}" for n in names)]
            edges[module] |= {c for c in candidates if c in known and c != module}
            if target.split(".")[0] in PACKAGES and target not in known and target not in packages:
                pytest.fail(f"{module} imports {target}, which is not a module of the project")
    return edges


def test_the_library_never_imports_the_steps_or_the_flows():
    wrong = []
    for module, targets in project_edges().items():
        layer = module.split(".")[0]
        for target in targets:
            up = target.split(".")[0]
            if layer == "safedrop" and up == "tasks":
                wrong.append(f"{module} -> {target}")
            if layer == "safedrop" and up == "flows" and part(module) != "cli":
                wrong.append(f"{module} -> {target}")
            if layer == "tasks" and up == "flows":
                wrong.append(f"{module} -> {target}")
    assert not wrong, "imports against the layers (flows -> tasks -> safedrop):\n" + "\n".join(sorted(wrong))


def test_the_library_s_parts_import_only_those_below_them():
    wrong = [
        f"{module} -> {target}"
        for module, targets in project_edges().items()
        if module.startswith("safedrop.")
        for target in targets
        if target.startswith("safedrop.")
        and part(target) != part(module)
        and part(target) not in MAY_IMPORT[part(module)]
    ]
    assert not wrong, "imports against the direction of safedrop's parts:\n" + "\n".join(sorted(wrong))


def test_safedrop_s_folder_is_the_map():
    """Subpackages by concern, each saying what lives there, and at most a dozen shared modules."""
    library = ROOT / "safedrop"
    packages = sorted(p.name for p in library.iterdir() if (p / "__init__.py").exists())
    assert packages == sorted(n for n in MAY_IMPORT if n), packages
    shared = sorted(p.stem for p in library.glob("*.py") if p.name != "__init__.py")
    assert len(shared) <= 12, shared
    for name in packages:
        doc = ast.get_docstring(ast.parse((library / name / "__init__.py").read_text())) or ""
        assert doc and "import" in doc.lower(), f"safedrop/{name}/__init__.py does not say what it may import"


def test_no_module_imports_another_module_s_private_names():
    known = modules()
    wrong = [
        f"{module}: from {target} import {name}"
        for module, path in known.items()
        for target, names in imports(path)
        if target.split(".")[0] in PACKAGES
        for name in names
        if name.startswith("_") and not name.startswith("__")
    ]
    assert not wrong, "private names imported across modules:\n" + "\n".join(wrong)


def test_there_is_no_import_cycle():
    edges = project_edges()
    cycles = []
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(edges[module]):
            if state.get(target) == 1:
                cycles.append(" -> ".join(path[path.index(target) :] + [module, target]))
            elif target not in state:
                visit(target, path + [module])
        state[module] = 2

    for module in sorted(edges):
        if module not in state:
            visit(module, [])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_the_check_sees_a_real_violation(tmp_path, monkeypatch):
    """The checks can fail: a library module importing a step is caught."""
    fake = tmp_path / "root"
    for package in PACKAGES:
        (fake / package).mkdir(parents=True)
    (fake / "safedrop" / "lib.py").write_text("from tasks.step import work\n")
    (fake / "tasks" / "step.py").write_text(
        "from safedrop.lib import thing\nfrom safedrop.lib import _private\n"
    )
    for name in ("pg", "backup", "restore"):
        (fake / "safedrop" / name).mkdir()
        (fake / "safedrop" / name / "__init__.py").write_text("")
    (fake / "safedrop" / "pg" / "conn.py").write_text("from safedrop.backup.dump import x\n")
    (fake / "safedrop" / "backup" / "dump.py").write_text("from safedrop.restore.back import y\n")
    (fake / "safedrop" / "restore" / "back.py").write_text("from safedrop.backup.dump import z\n")
    monkeypatch.setattr(f"{__name__}.ROOT", fake)
    with pytest.raises(AssertionError) as caught:
        test_the_library_s_parts_import_only_those_below_them()
    assert "safedrop.pg.conn -> safedrop.backup.dump" in str(caught.value)
    assert "safedrop.backup.dump -> safedrop.restore.back" in str(caught.value)
    assert "safedrop.restore.back -> safedrop.backup.dump" not in str(caught.value)  # restore may use backup
    with pytest.raises(AssertionError, match="safedrop.lib -> tasks.step"):
        test_the_library_never_imports_the_steps_or_the_flows()
    with pytest.raises(AssertionError, match="from safedrop.lib import _private"):
        test_no_module_imports_another_module_s_private_names()
    with pytest.raises(AssertionError, match="safedrop.lib -> tasks.step -> safedrop.lib"):
        test_there_is_no_import_cycle()
