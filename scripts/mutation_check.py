"""Plant one-line errors in a scratch copy of the project and report which ones the tests catch.

Each ``scripts/mutations/<name>.yaml`` names the test files of one method and its planted errors::

    tests: [tests/methods/test_mae.py]
    mutations:
      - name: decoder sees the unshuffled order
        file: facekit/methods/mae.py
        find: "exact text that occurs exactly once in the file"
        replace: "the planted error"

The project's git files (tracked, and untracked ones git does not ignore) are copied once into a temporary
folder. Per YAML file, the tests first run on the unchanged copy; a test that already fails there is
deselected from every run of that file (and reported), so only a failure the mutation causes counts. Then,
one at a time, each mutation is applied (its ``find`` must occur exactly once, else the entry is INVALID),
``python -m pytest -x -q <tests>`` runs in the copy with ``PYTHONPATH`` pointing at it, and the file is
restored. A mutation is CAUGHT when pytest fails (the first failing test is named), MISSED when it passes.
Not part of ``make test``: it runs the named tests once per mutation.

    python scripts/mutation_check.py                    # every scripts/mutations/*.yaml
    python scripts/mutation_check.py constants mae      # scripts/mutations/constants.yaml and mae.yaml

Exit status 1 when a mutation is missed or an entry is invalid.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import yaml
from tqdm import tqdm

DEFAULT_ROOT = Path(__file__).resolve().parent.parent
MUTATION_KEYS = ("name", "file", "find", "replace")


@dataclass(frozen=True)
class Mutation:
    """One planted error of a method's YAML file (``problem`` is set when the entry itself is unusable)."""

    method: str
    name: str
    file: str
    find: str
    replace: str
    problem: str = ""


@dataclass(frozen=True)
class Suite:
    """A YAML file: its method name, the test paths to run and its mutations."""

    method: str
    tests: list[str]
    mutations: list[Mutation]


@dataclass(frozen=True)
class Outcome:
    """``status``: CAUGHT, MISSED or INVALID; ``detail``: the failing test, or why the entry is invalid."""

    mutation: Mutation
    status: str
    detail: str = ""


def load_suite(path: Path) -> Suite:
    """Read one YAML file; malformed mutation entries come back with a ``problem``, a malformed file raises."""
    data = yaml.safe_load(path.read_text())
    method = path.stem
    if not isinstance(data, dict) or not isinstance(data.get("tests"), list) or not data["tests"]:
        raise ValueError(f"{path}: needs a non-empty 'tests' list and a 'mutations' list")
    mutations = []
    for i, entry in enumerate(data.get("mutations") or []):
        if not isinstance(entry, dict) or not all(isinstance(entry.get(k), str) for k in MUTATION_KEYS):
            name = entry.get("name", f"entry {i}") if isinstance(entry, dict) else f"entry {i}"
            mutations.append(Mutation(method, str(name), "", "", "", f"needs string keys {', '.join(MUTATION_KEYS)}"))
        else:
            mutations.append(Mutation(method, *(entry[k] for k in MUTATION_KEYS)))
    return Suite(method, [str(t) for t in data["tests"]], mutations)


def copy_project(root: Path, dest: Path) -> None:
    """Copy the files git knows of in ``root`` (tracked, or untracked and not ignored) to ``dest``."""
    listed = subprocess.run(
        ["git", "-C", str(root), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        check=True,
        capture_output=True,
    ).stdout.decode()
    for relative in filter(None, listed.split("\0")):
        source = root / relative
        if source.is_file():
            (dest / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / relative)


def run_env(copy: Path, root: Path) -> dict[str, str]:
    """The environment of a test run: the copy first on ``PYTHONPATH``, no bytecode files (a restored source
    must never meet a cached mutant), and the shared assets beside ``root`` unless ``FACEKIT_ASSETS`` is set."""
    env = {**os.environ, "PYTHONPATH": str(copy), "PYTHONDONTWRITEBYTECODE": "1"}
    shared = root.parent / "shared" / "assets"
    if "FACEKIT_ASSETS" not in env and shared.is_dir():
        env["FACEKIT_ASSETS"] = str(shared)
    return env


def run_pytest(
    copy: Path, env: dict[str, str], tests: list[str], extra: list[str], timeout: float
) -> tuple[int, list[str], str]:
    """Run pytest in the copy: (exit code, failing node ids in order, last lines of output)."""
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--timeout={timeout:g}", *extra, *tests]
    try:
        done = subprocess.run(command, cwd=copy, env=env, capture_output=True, text=True, timeout=20 * timeout)
    except subprocess.TimeoutExpired:
        return -1, [], f"pytest ran past {20 * timeout:g} s"
    failed = [
        line.split(" ", 1)[1].split(" - ", 1)[0]
        for line in done.stdout.splitlines()
        if line.startswith(("FAILED ", "ERROR "))
    ]
    return done.returncode, failed, "\n".join((done.stdout + done.stderr).strip().splitlines()[-5:])


def check_suite(suite: Suite, copy: Path, env: dict[str, str], timeout: float, bar: tqdm) -> list[Outcome]:
    """Baseline run, then one run per mutation; returns one outcome per mutation."""
    code, broken, tail = run_pytest(copy, env, suite.tests, [], timeout)
    if code not in (0, 1):
        bar.update(len(suite.mutations))
        why = f"the unchanged tests do not run (pytest exit {code}): {tail}"
        return [Outcome(m, "INVALID", why) for m in suite.mutations]
    if broken:
        bar.write(f"{suite.method}: {len(broken)} test(s) fail without a mutation and are deselected:")
        bar.write("\n".join(f"  {node}" for node in broken))
    deselect = [arg for node in broken for arg in ("--deselect", node)]
    outcomes = []
    for mutation in suite.mutations:
        bar.set_postfix_str(f"{suite.method}: {mutation.name}"[:60])
        outcome = check_mutation(mutation, suite.tests, deselect, copy, env, timeout)
        outcomes.append(outcome)
        detail = f"  ({outcome.detail})" if outcome.detail else ""
        bar.write(f"{outcome.status:7}  {suite.method}: {mutation.name}{detail}")
        bar.update()
    return outcomes


def check_mutation(
    mutation: Mutation, tests: list[str], deselect: list[str], copy: Path, env: dict[str, str], timeout: float
) -> Outcome:
    """Apply one mutation to the copy, run the tests (stopping at the first failure), restore the file."""
    if mutation.problem:
        return Outcome(mutation, "INVALID", mutation.problem)
    target = copy / mutation.file
    if not target.is_file():
        return Outcome(mutation, "INVALID", f"no file {mutation.file}")
    original = target.read_text()
    count = original.count(mutation.find)
    if count != 1:
        return Outcome(mutation, "INVALID", f"'find' occurs {count} times in {mutation.file}")
    if mutation.replace == mutation.find:
        return Outcome(mutation, "INVALID", "'replace' equals 'find'")
    target.write_text(original.replace(mutation.find, mutation.replace))
    try:
        code, failed, tail = run_pytest(copy, env, tests, ["-x", *deselect], timeout)
    finally:
        target.write_text(original)
    if code == 0:
        return Outcome(mutation, "MISSED")
    if code == 5:
        return Outcome(mutation, "INVALID", "no test ran")
    return Outcome(mutation, "CAUGHT", failed[0] if failed else f"pytest exit {code}: {tail.splitlines()[-1:]}")


def summary(outcomes: list[Outcome]) -> str:
    """Caught share per method and in total (invalid entries counted apart)."""
    per_method: dict[str, list[Outcome]] = defaultdict(list)
    for outcome in outcomes:
        per_method[outcome.mutation.method].append(outcome)
    lines = []
    for method, group in [*sorted(per_method.items()), ("total", outcomes)]:
        valid = [o for o in group if o.status != "INVALID"]
        caught = sum(o.status == "CAUGHT" for o in valid)
        share = f"{100 * caught / len(valid):.0f}%" if valid else "-"
        invalid = f", {len(group) - len(valid)} invalid" if len(group) > len(valid) else ""
        lines.append(f"{method:16} caught {caught}/{len(valid)} ({share}){invalid}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help="mutation files (scripts/mutations/<name>.yaml); default: all")
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT, help="the project (default: this script's)")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per test (pytest-timeout)")
    args = parser.parse_args(argv)
    root = args.root.resolve()
    folder = root / "scripts" / "mutations"
    paths = [folder / f"{name}.yaml" for name in args.names] or sorted(folder.glob("*.yaml"))
    missing = [str(p) for p in paths if not p.is_file()]
    if missing or not paths:
        parser.error(f"no mutation files: {', '.join(missing) or folder}")
    suites = [load_suite(p) for p in paths]
    with tempfile.TemporaryDirectory(prefix="mutation-check-") as scratch:
        copy = Path(scratch)
        copy_project(root, copy)
        env = run_env(copy, root)
        outcomes: list[Outcome] = []
        with tqdm(total=sum(len(s.mutations) for s in suites), unit="mutation", file=sys.stderr) as bar:
            for suite in suites:
                outcomes += check_suite(suite, copy, env, args.timeout, bar)
    print(summary(outcomes))
    return 0 if all(o.status == "CAUGHT" for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
