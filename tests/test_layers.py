"""The map of the package: each floor imports only the floors below it (and its own package).

The floors are the README's "map of the package"; a module importing a higher floor, or a sibling
package on its own floor (floor 0's modules and the top floor's front ends excepted), fails here.
Function-local imports count as much as top-level ones.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: (floor, package or module): the map of the house, lowest floor first.
FLOORS: tuple[tuple[int, str], ...] = (
    (0, "facekit"),  # the package's __init__ only
    (0, "facekit.registry"),
    (0, "facekit.config"),
    (0, "facekit.assets"),
    (0, "facekit.asset_derivations"),
    (0, "facekit.distributed"),
    (1, "facekit.data"),
    (1, "facekit.nn"),
    (2, "facekit.methods"),
    (3, "facekit.train"),
    (3, "facekit.eval"),
    (4, "facekit.stages"),
    (5, "facekit.cli"),
    (5, "facekit.eval_commands"),
    (5, "facekit.probe_commands"),
    (5, "facekit.push_commands"),
    (5, "facekit.downstream_commands"),
    (5, "facekit.hub"),
    (5, "workflows"),
)
TOP = 5  # the front ends (command line, Hub, Prefect flows) may use one another


def unit_of(module: str) -> tuple[int, str]:
    """(floor, unit) of a dotted module name: the longest entry of :data:`FLOORS` that contains it."""
    best = None
    for floor, unit in FLOORS:
        if (module == unit or module.startswith(unit + ".")) and (best is None or len(unit) > len(best[1])):
            best = (floor, unit)
    if best is None or (best[1] == "facekit" and module != "facekit"):
        raise KeyError(f"{module} is on no floor: add it to FLOORS (and to the README's map)")
    return best


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path, root: Path = ROOT) -> list[tuple[int, str]]:
    """(line, imported name) of every facekit/workflows import in ``path``, relative ones resolved."""
    package = module_name(path, root).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(package[: len(package) - node.level + 1]) if node.level else ""
            target = ".".join(p for p in (base, node.module or "") if p)
            # ``from facekit.data import shards`` imports the submodule facekit.data.shards
            found += [(node.lineno, f"{target}.{alias.name}") for alias in node.names]
    return [(line, name) for line, name in found if name.split(".")[0] in ("facekit", "workflows")]


def resolve(name: str, root: Path = ROOT) -> str:
    """The longest existing module that ``name`` (a module or a module's attribute) names."""
    parts = name.split(".")
    while parts:
        candidate = root.joinpath(*parts)
        if candidate.with_suffix(".py").is_file() or (candidate / "__init__.py").is_file():
            return ".".join(parts)
        parts.pop()
    raise KeyError(f"no module for {name}")


SOURCES = sorted([*ROOT.joinpath("facekit").rglob("*.py"), *ROOT.joinpath("workflows").rglob("*.py")])


def wrong_edges(path: Path, root: Path = ROOT) -> list[str]:
    """The imports of ``path`` that go to a higher floor or to a sibling package on its floor."""
    floor, unit = unit_of(module_name(path, root))
    wrong = []
    for line, imported in imports_of(path, root):
        target = resolve(imported, root)
        their_floor, their_unit = unit_of(target)
        sideways = their_floor == floor and their_unit != unit and floor not in (0, TOP)
        if their_floor > floor or sideways:
            wrong.append(f"line {line}: {target} (floor {their_floor}, {their_unit})")
    return sorted(set(wrong))


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_module_imports_a_higher_floor_or_a_sibling_package(path: Path) -> None:
    wrong = wrong_edges(path)
    here = module_name(path)
    assert not wrong, f"{here} {unit_of(here)} imports upward or sideways:\n" + "\n".join(wrong)


def test_the_package_has_no_import_cycle() -> None:
    """The graph of every import between the package's modules (function-local ones included) is acyclic."""
    graph = {module_name(p): {resolve(n) for _, n in imports_of(p)} - {module_name(p)} for p in SOURCES}
    done: set[str] = set()

    def visit(node: str, stack: list[str]) -> None:
        for nxt in sorted(graph.get(node, ())):
            assert nxt not in stack, "import cycle: " + " -> ".join([*stack[stack.index(nxt) :], nxt])
            if nxt not in done:
                visit(nxt, [*stack, nxt])
        done.add(node)

    for node in sorted(graph):
        if node not in done:
            visit(node, [node])


def test_the_walker_sees_upward_sideways_and_relative_edges(tmp_path: Path) -> None:
    """Planted edges in a small tree: upward (nn → train), sideways (train → eval), a relative import and a
    function-local one are each found; a downward import is not."""
    for module in (
        "facekit/__init__",
        "facekit/nn/__init__",
        "facekit/train/__init__",
        "facekit/train/loop",
        "facekit/eval/__init__",
        "facekit/eval/knn",
        "facekit/registry",
    ):
        (tmp_path / module).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / f"{module}.py").touch()
    nn_mod = tmp_path / "facekit/nn/layer.py"
    nn_mod.write_text("from facekit.registry import Registry\n\n\ndef f():\n    from ..train import loop\n")
    assert wrong_edges(nn_mod, tmp_path) == ["line 5: facekit.train.loop (floor 3, facekit.train)"]
    train_mod = tmp_path / "facekit/train/step.py"
    train_mod.write_text("import facekit.nn\nfrom facekit.eval.knn import knn\n")
    assert wrong_edges(train_mod, tmp_path) == ["line 2: facekit.eval.knn (floor 3, facekit.eval)"]


def test_the_libraries_below_the_front_ends_parse_no_command_line() -> None:
    """Floors 1-3 are libraries: only the front ends (and floor 0's ``facekit assets`` command) use argparse."""
    users = [p for p in SOURCES if unit_of(module_name(p))[0] in (1, 2, 3) and "argparse" in p.read_text()]
    assert not users, f"command-line parsing below the front ends: {[str(p.relative_to(ROOT)) for p in users]}"
