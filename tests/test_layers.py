"""The architecture, enforced from the source: ``algorithms/``'s layers import only downwards, the transports are
independent of each other, ``analysis`` runs without torch, and no modules import each other in a cycle.

The check reads the import statements (those inside functions too: a deferred import is still a dependency), so it
needs nothing outside the repository and runs from a clean clone. docs/architecture.md draws the same layers.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("algorithms", "experiments", "analysis")

# Top to bottom: a module may import its own layer and those below it; the transports of one row not each other.
LAYERS = (
    ("algorithms.transports.local", "algorithms.transports.ray", "algorithms.transports.simulated"),
    ("algorithms.schedules",),
    ("algorithms.updates",),
    ("algorithms.core",),
    ("algorithms.infra",),
)
# The schedule table, its checks and the config they validate import no layer, and every layer may read them;
# ``algorithms.transports`` is only the folder of the three transports.
OPEN = ("algorithms", "algorithms.schedule_checks", "algorithms.config", "algorithms.transports")
HEAVY = ("torch", "ray", "gymnasium", "algorithms")  # what analysis must not need


def project_modules(root: Path) -> dict[str, Path]:
    modules = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            name = ".".join(path.relative_to(root).with_suffix("").parts).removesuffix(".__init__")
            modules[name] = path
    return modules


def imported(path: Path, name: str, known: set[str]) -> set[str]:
    """Every module ``name`` (the module at ``path``) imports, at any depth: project modules by their full name
    (``from package import module`` counts the module), others by their top-level package."""
    found = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in known)
    return {module if module in known or module.split(".")[0] in PACKAGES else module.split(".")[0]
            for module in found}


def layer_of(module: str) -> tuple[int, str] | None:
    for index, row in enumerate(LAYERS):
        for part in row:
            if module == part or module.startswith(part + "."):
                return index, part
    return None


def layering_violations(root: Path) -> list[str]:
    modules = project_modules(root)
    violations = []
    for name, path in modules.items():
        if (here := layer_of(name)) is None:
            continue
        for target in sorted(imported(path, name, set(modules))):
            there = layer_of(target)
            if there is None or target in OPEN:
                if target.startswith("algorithms.") and target not in OPEN:
                    violations.append(f"{name} imports {target}, which is in no layer")
                continue
            if there[0] < here[0] or (there[0] == here[0] and there[1] != here[1]):
                violations.append(f"{name} ({here[1]}) imports {target} ({there[1]})")
    return violations


def import_cycles(root: Path) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan's algorithm)."""
    modules = project_modules(root)
    graph = {name: sorted(imported(path, name, set(modules)) & set(modules) - {name}) for name, path in modules.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while (member := stack.pop()) != node:
                group.append(member)
            if group:
                cycles.append(sorted([node, *group]))

    for node in graph:
        if node not in index:
            visit(node)
    return cycles


def test_every_module_of_algorithms_sits_in_a_layer():
    outside = [name for name in project_modules(ROOT) if name.startswith("algorithms") and name not in OPEN
               and layer_of(name) is None]
    assert outside == []


def test_layers_import_only_downwards_and_transports_not_each_other():
    assert layering_violations(ROOT) == []


def test_the_table_and_the_config_import_no_layer():
    modules = project_modules(ROOT)
    for name in OPEN:
        assert {target for target in imported(modules[name], name, set(modules)) if target.startswith("algorithms")} \
            <= set(OPEN), name


def test_analysis_needs_neither_torch_nor_the_algorithms():
    modules = project_modules(ROOT)
    for name, path in modules.items():
        if name.startswith("analysis"):
            assert not imported(path, name, set(modules)) & set(HEAVY), name


def test_no_import_cycle_among_the_packages():
    assert import_cycles(ROOT) == []


@pytest.mark.parametrize("source, violation", [
    ("from algorithms.transports.local.single import run\n", "algorithms.schedules.bad (algorithms.schedules) imports "
     "algorithms.transports.local.single (algorithms.transports.local)"),
    ("def late():\n    import algorithms.transports.simulated\n", "algorithms.schedules.bad (algorithms.schedules) "
     "imports algorithms.transports.simulated (algorithms.transports.simulated)"),
])
def test_the_check_finds_an_upward_import(tmp_path, source, violation):
    for package in PACKAGES:
        (tmp_path / package).mkdir()
    for module in ("schedules", "transports", "transports/local"):
        (tmp_path / "algorithms" / module).mkdir()
        (tmp_path / "algorithms" / module / "__init__.py").write_text("")
    (tmp_path / "algorithms/transports/local/single.py").write_text("from algorithms.schedules import bad\n")
    (tmp_path / "algorithms/transports/simulated.py").write_text("")
    (tmp_path / "algorithms/schedules/bad.py").write_text(source)
    assert violation in layering_violations(tmp_path)
    if source.startswith("from"):
        assert import_cycles(tmp_path) == [["algorithms.schedules.bad", "algorithms.transports.local.single"]]
