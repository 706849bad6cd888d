"""`dvc repro` of the sample pipeline for real, in a temporary git repository."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

PROJECT = Path(__file__).resolve().parents[1]
DATA = ("sample", "scan", "detect_align", "landmarks", "masks", "pack")
CHAIN = ("split", "pretrain@mae", "finetune@mae", "eval_sets", "verify@mae", "verify_reference", "leaderboard")
STAGES = DATA + CHAIN


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": bin_dir + os.pathsep + os.environ["PATH"], "DVC_NO_ANALYTICS": "1"}
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def _dvc(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return _run([str(Path(sys.executable).parent / "dvc"), *args], repo)


def _commit_lock(repo: Path) -> None:
    """Commit the clone's dvc.lock (nothing happens when it is committed already)."""
    _run(["git", "add", "dvc.lock"], repo)
    _run(["git", "-c", "user.name=facekit", "-c", "user.email=ci@facekit", "commit", "-qm", "lock"], repo)


def _git_status(repo: Path) -> str:
    return _run(["git", "status", "--porcelain", "--untracked-files=all"], repo).stdout


def _ran(output: str) -> set[str]:
    return {s for s in STAGES if f"Running stage '{s}'" in output}


def _up_to_date(repo: Path) -> bool:
    """``dvc status`` names only the scan, which DVC runs on every repro (``always_changed``)."""
    return _dvc(repo, "status").stdout.split() == ["scan:", "always", "changed"]


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory, assets: Path) -> Path:
    """A fresh git repo holding the project's pipeline files and code, as a clean clone would."""
    repo = tmp_path_factory.mktemp("clone")
    for name in ("dvc.yaml", "params.yaml", ".dvcignore", ".gitignore"):
        shutil.copy(PROJECT / name, repo / name)
    params = yaml.safe_load((repo / "params.yaml").read_text())  # one method, 3 steps of each training
    mae = {k: v for k, v in params["pretrain"]["runs"]["mae"].items() if k != "train"}  # its own epochs too
    params["pretrain"]["runs"] = {"mae": mae}
    params["pretrain"]["train"]["epochs"] = 1
    params["finetune"]["runs"] = {"mae": {}}
    params["finetune"]["train"]["epochs"] = 1
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    shutil.copytree(PROJECT / ".dvc", repo / ".dvc", ignore=shutil.ignore_patterns("tmp", "cache"))
    shutil.copytree(PROJECT / "facekit", repo / "facekit", ignore=shutil.ignore_patterns("__pycache__"))
    _run(["git", "init", "-q"], repo)
    _run(["git", "add", "-A"], repo)
    _run(["git", "-c", "user.name=facekit", "-c", "user.email=ci@facekit", "commit", "-qm", "clone"], repo)
    return repo


@pytest.mark.slow
def test_repro_runs_the_sample_end_to_end_then_does_nothing(repo: Path) -> None:
    first = _dvc(repo, "repro")
    assert first.returncode == 0, first.stdout + first.stderr
    assert _ran(first.stdout) == set(STAGES)
    assert (repo / "data/shards/index.json").is_file()
    assert (repo / "plots/faces.png").is_file()
    metrics = yaml.safe_load((repo / "metrics/pack.json").read_text())
    assert metrics["read"] == metrics["written"] + metrics["rejected"] >= 60
    board = json.loads((repo / "metrics/leaderboard.json").read_text())
    assert set(board) == {"mae", "reference"} and board["reference"]["holistic_accuracy"] >= 0.97
    assert 0 < board["mae"]["knn_accuracy"] <= 1 and 0 < board["mae"]["knn_accuracy_random_init"] <= 1
    assert "| mae | mae |" in (repo / "metrics/leaderboard.md").read_text()
    assert _up_to_date(repo)
    assert (repo / "plots/leaderboard_roc.png").is_file()
    shown = _dvc(repo, "metrics", "show").stdout  # the data stages' counts and each run's verification
    assert "metrics/pack.json" in shown and "metrics/verify/mae.json" in shown, shown
    assert "leaderboard" not in shown and "final_loss" not in shown and max(map(len, shown.splitlines())) < 1000
    assert _git_status(repo) == "?? dvc.lock\n"  # the run adds its lock and nothing else to the clone
    _commit_lock(repo)

    second = _dvc(repo, "repro")
    assert second.returncode == 0, second.stderr
    assert _ran(second.stdout) == {"scan"}  # a stat of each source file; its unchanged manifest keeps the rest
    assert _up_to_date(repo) and _git_status(repo) == ""


@pytest.mark.slow
def test_every_stage_run_again_records_the_same_lock(repo: Path) -> None:
    """Run times stay out of every output DVC hashes (a run's timing.json is .dvcignored), so a clean clone's
    `make sample` leaves the committed dvc.lock as it was: `git status` stays clean."""
    if not (repo / "dvc.lock").is_file():
        assert _dvc(repo, "repro").returncode == 0
    _commit_lock(repo)
    again = _dvc(repo, "repro", "--force", "--no-run-cache")
    assert again.returncode == 0, again.stdout + again.stderr
    assert _ran(again.stdout) == set(STAGES)
    assert _git_status(repo) == "", _run(["git", "diff"], repo).stdout


@pytest.mark.slow
def test_changing_an_alignment_param_reruns_only_what_depends_on_it(repo: Path) -> None:
    if not (repo / "dvc.lock").is_file():
        assert _dvc(repo, "repro").returncode == 0
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["align"]["jpeg_quality"] = 90
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert _dvc(repo, "status", "-q").returncode == 1  # stale
    rerun = _dvc(repo, "repro")
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert _ran(rerun.stdout) == set(STAGES) - {"sample"}
    assert _up_to_date(repo)


def test_changing_a_fine_tuning_param_keeps_the_data_and_the_pre_training(repo: Path) -> None:
    if not (repo / "dvc.lock").is_file():
        assert _dvc(repo, "repro").returncode == 0
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["finetune"]["runs"]["mae"] = {"margin_kwargs": {"s": 30.0, "m": 0.3}}  # another model
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    rerun = _dvc(repo, "repro")
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert _ran(rerun.stdout) == {"scan", "finetune@mae", "verify@mae", "leaderboard"}  # scan: always_changed
    assert _up_to_date(repo)
