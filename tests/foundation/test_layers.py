"""The layers only point down: a static scan of every import in the library, the CLIs and the experiments.

Floors, lowest first (DESIGN.md, third stage); a module may import its own floor and the ones below it, and the
packages of ``prismatic`` import each other without a circle. ``TYPE_CHECKING`` and function-local imports count
(they are dependencies all the same). Upstream's import paths that re-export code now living lower or higher
(``prismatic.util.data_utils``, ``prismatic.extern.hf``) sit on the floor of what they re-export.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
SCANNED_ROOTS = ("prismatic", "vggt", "experiments", "vla-scripts")

FLOORS: tuple[tuple[str, ...], ...] = (
    ("prismatic", "prismatic.util", "prismatic.spatial_forcing", "vggt"),  # leaves: torch only
    ("prismatic.vla", "prismatic.util.data_utils"),  # specifications: embodiment, normalisation, images, data
    ("prismatic.models",),  # each model family: config, modeling, processor, heads
    ("prismatic.policy", "prismatic.extern"),  # the assembly floor: families, load a folder, checks, presets
    ("prismatic.training", "prismatic.probing", "prismatic.oracle"),  # the loop, probes, the LIBERO oracle
    ("prismatic.testing",),  # tiny models and data for tests and demos
    ("experiments", "vla-scripts"),  # CLIs, evaluation, serving, experiments
)
FLOOR_OF = {unit: floor for floor, units in enumerate(FLOORS) for unit in units}


@dataclass(frozen=True)
class Import:
    path: Path  # relative to the repository root
    line: int
    source: str  # importing module
    target: str  # imported module (or name)

    def __str__(self) -> str:
        return f"{self.path}:{self.line} {self.source} -> {self.target}"


def module_name(path: Path) -> str:
    parts = list(path.with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> list[Import]:
    """Every import statement of a file, relative ones resolved to absolute module names."""
    source = module_name(path)
    package = source.split(".") if path.name == "__init__.py" else source.split(".")[:-1]
    found = []
    for node in ast.walk(ast.parse((REPO_ROOT / path).read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [Import(path, node.lineno, source, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            target = ".".join([*base, *([node.module] if node.module else [])])
            found += [Import(path, node.lineno, source, f"{target}.{alias.name}") for alias in node.names]
    return found


def all_imports() -> list[Import]:
    files = sorted(path.relative_to(REPO_ROOT) for root in SCANNED_ROOTS for path in (REPO_ROOT / root).rglob("*.py"))
    return [found for path in files for found in imports_of(path)]


def unit_of(module: str) -> str | None:
    """The most specific entry of :data:`FLOORS` that holds ``module`` (None: outside the scanned tree)."""
    parts = module.split(".")
    for end in range(len(parts), 0, -1):
        if ".".join(parts[:end]) in FLOOR_OF:
            return ".".join(parts[:end])
    return None


def upward_imports(imports: list[Import]) -> list[Import]:
    return [
        found
        for found in imports
        if (target := unit_of(found.target)) is not None and FLOOR_OF[target] > FLOOR_OF[unit_of(found.source)]
    ]


def cycles(edges: set[tuple[str, str]]) -> list[list[str]]:
    """The circles of a directed graph (its strongly connected components of more than one node), sorted."""
    graph: dict[str, set[str]] = {}
    for source, target in edges:
        if source != target:
            graph.setdefault(source, set()).add(target)
    reaches = {node: _reachable(graph, node) for node in graph}
    components = {frozenset(n for n in reaches if n in reaches[start] and start in reaches[n]) for start in reaches}
    return sorted(sorted(component) for component in components if len(component) > 1)


def unit_cycles(imports: list[Import]) -> list[list[str]]:
    """Circles among the floor units of ``prismatic`` (its packages and upstream's re-export paths)."""
    edges = {(unit_of(found.source), unit_of(found.target)) for found in imports}
    return cycles(
        {(s, t) for s, t in edges if t is not None and s.startswith("prismatic") and t.startswith("prismatic")}
    )


def module_cycles(imports: list[Import]) -> list[list[str]]:
    """Circles among the modules of ``prismatic`` (``from package import name`` counts as importing the package)."""
    modules = {found.source for found in imports}
    edges = set()
    for found in imports:
        target = found.target if found.target in modules else found.target.rpartition(".")[0]
        if target in modules and found.source.startswith("prismatic") and target.startswith("prismatic"):
            edges.add((found.source, target))
    return cycles(edges)


def _reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, stack = set(), [start]
    while stack:
        for successor in graph.get(stack.pop(), ()):
            if successor not in seen:
                seen.add(successor)
                stack.append(successor)
    return seen


def test_every_scanned_file_sits_on_a_floor():
    unplaced = sorted({found.source for found in all_imports() if unit_of(found.source) is None})
    assert not unplaced, f"modules on no floor of FLOORS: {unplaced}"


def test_the_library_never_imports_experiments():
    offending = [
        found
        for found in all_imports()
        if found.source.startswith("prismatic") and found.target.split(".")[0] == "experiments"
    ]
    assert not offending, "prismatic imports experiments:\n" + "\n".join(map(str, offending))


def test_no_import_runs_up_the_floors():
    offending = upward_imports(all_imports())
    assert not offending, "imports that run up the floors (file:line from -> to):\n" + "\n".join(map(str, offending))


def test_no_circle_between_prismatic_packages_or_modules():
    imports = all_imports()
    assert not unit_cycles(imports), f"circles between packages: {unit_cycles(imports)}"
    assert not module_cycles(imports), f"circles between modules: {module_cycles(imports)}"


def test_spatial_forcing_imports_only_itself_from_the_tree():
    offending = [
        found
        for found in all_imports()
        if found.source.startswith("prismatic.spatial_forcing")
        and unit_of(found.target) not in (None, "prismatic.spatial_forcing")
    ]
    assert not offending, "\n".join(map(str, offending))


def test_the_scan_finds_an_upward_import_and_a_circle():
    planted = [
        Import(Path("prismatic/vla/x.py"), 3, "prismatic.vla.x", "prismatic.training.y.run"),
        Import(Path("prismatic/training/y.py"), 5, "prismatic.training.y", "prismatic.vla.x.helper"),
    ]
    assert [str(found) for found in upward_imports(planted)] == [
        "prismatic/vla/x.py:3 prismatic.vla.x -> prismatic.training.y.run"
    ]
    assert unit_cycles(planted) == [["prismatic.training", "prismatic.vla"]]
    assert module_cycles(planted) == [["prismatic.training.y", "prismatic.vla.x"]]
