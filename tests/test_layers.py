"""The layers keep their direction: the habit that keeps the code in rooms a newcomer can hold in their head.

    flows/  ->  tasks/  ->  safedrop/          (the command line, on top, may import the flows)

Read with the standard library's ``ast``, every import counted — also the ones inside functions:
``safedrop/`` (the library) never imports ``tasks/`` or ``flows/``, except the command-line entry
points, which may import ``flows/``; ``tasks/`` never imports ``flows/``; no module imports another's
private (``_name``) names; and there is no import cycle between modules.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("safedrop", "tasks", "flows")
ENTRY_POINTS = {"safedrop.cli", "safedrop.commands", "safedrop.demo"}  # the command line sits on top


def modules() -> dict[str, Path]:
    return {
        ".".join(path.relative_to(ROOT).with_suffix("").parts): path
        for package in PACKAGES
        for path in sorted((ROOT / package).glob("*.py"))
        if path.name != "__init__.py"
    }


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
    """module -> the project modules it imports (``from safedrop import queries`` counts as safedrop.queries)."""
    known = modules()
    edges: dict[str, set[str]] = {m: set() for m in known}
    for module, path in known.items():
        for target, names in imports(path):
            candidates = [target, *(f"{target}.{n}" for n in names)]
            edges[module] |= {c for c in candidates if c in known and c != module}
            if target.split(".")[0] in PACKAGES and target not in known and target not in PACKAGES:
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
            if layer == "safedrop" and up == "flows" and module not in ENTRY_POINTS:
                wrong.append(f"{module} -> {target}")
            if layer == "tasks" and up == "flows":
                wrong.append(f"{module} -> {target}")
    assert not wrong, "imports against the layers (flows -> tasks -> safedrop):\n" + "\n".join(sorted(wrong))


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
    monkeypatch.setattr(f"{__name__}.ROOT", fake)
    with pytest.raises(AssertionError, match="safedrop.lib -> tasks.step"):
        test_the_library_never_imports_the_steps_or_the_flows()
    with pytest.raises(AssertionError, match="from safedrop.lib import _private"):
        test_no_module_imports_another_module_s_private_names()
    with pytest.raises(AssertionError, match="safedrop.lib -> tasks.step -> safedrop.lib"):
        test_there_is_no_import_cycle()
