"""The committed dvc.lock is the sample run of the code and params.yaml as they are: `make sample` on a clean
clone then reproduces it and leaves `git status` clean. After changing the code or params the sample depends
on, run `make sample` and commit its dvc.lock (and `facekit readme`'s tables)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]


def test_the_committed_lock_matches_the_code_and_params() -> None:
    dvc = str(Path(sys.executable).parent / "dvc")
    shown = subprocess.run([dvc, "status", "dvc.yaml", "--json"], cwd=PROJECT, capture_output=True, text=True)
    assert shown.returncode == 0, shown.stderr
    stale: dict[str, object] = {}
    for stage, changes in json.loads(shown.stdout).items():
        for change in changes:
            if not isinstance(change, dict):  # "always changed": the scan
                continue
            deps = {p: s for p, s in change.get("changed deps", {}).items() if s != "deleted"}  # no data here
            other = {k: v for k, v in change.items() if k not in ("changed deps", "changed outs")}
            if deps or other:
                stale[stage] = {**deps, **other}
    assert not stale, f"dvc.lock is stale; run `make sample` and commit dvc.lock: {stale}"
