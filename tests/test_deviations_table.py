"""``docs/deviations.md`` names a test for every deviation: each named test must exist, so a row cannot point
at nothing (renamed or deleted tests fail here)."""

from __future__ import annotations

import ast
import functools
import importlib.util
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TABLE = ROOT / "docs" / "deviations.md"


def _rows() -> list[str]:
    lines = [line for line in TABLE.read_text().splitlines() if line.startswith("| ")]
    return [line for line in lines if line.count("|") == 6 and not line.startswith("| Code base")]


def _tests_of(row: str) -> list[tuple[str, str]]:
    """(test file, test name) pairs of a row's last cell: ``tests/x.py::name``, ``::name`` (same file as the
    previous one) and ``[pin]`` (a row of the released-constants table)."""
    cell = row.rstrip(" |").rsplit("|", 1)[-1]
    found, current = [], ""
    for ref in re.findall(r"`([^`]+)`", cell):
        if ref.startswith("["):
            found.append(("tests/methods/test_released_constants.py", ref))
            continue
        path, _, name = ref.partition("::")
        current = path or current
        found.append((current, name))
    return found


def _defined(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)}


@functools.cache
def _pin_names() -> set[str]:
    path = ROOT / "tests/methods/test_released_constants.py"
    spec = importlib.util.spec_from_file_location("released_constants_table", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return {pin.name for pin in module.PINS}


def test_the_table_has_rows() -> None:
    assert len(_rows()) >= 30


@pytest.mark.parametrize("row", _rows(), ids=lambda r: r.split("|")[2].strip()[:60])
def test_every_row_names_existing_tests(row: str) -> None:
    tests = _tests_of(row)
    assert tests, f"no test named in: {row[:120]}"
    for file, name in tests:
        if name.startswith("["):
            assert name.strip("[]") in _pin_names(), f"{name} is no row of the released-constants table"
            continue
        assert (ROOT / file).is_file(), f"{file} does not exist"
        assert name.split("[")[0] in _defined(ROOT / file), f"{file} has no test {name}"
