"""The medium lineage's files: its params (CPU and GPU) load and hold the sample's runs, the GPU file the methods'
released recipes, and DVC reads its dvc.yaml as a valid graph."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from facekit.config import load_params
from facekit.methods.base import METHODS
from facekit.methods.finetune import FINETUNE_RECIPES

ROOT = Path(__file__).resolve().parents[1]
MEDIUM = ROOT / "lineages/medium"
GPU_BATCH = 256  # the GPU file's cap on the released batch sizes (its header says why)


@pytest.mark.parametrize("name", ["params.yaml", "params.gpu.yaml"])
def test_medium_params_load_with_the_samples_runs_and_a_held_out_split(name: str) -> None:
    params = load_params(MEDIUM / name)
    sample = load_params(ROOT / "params.yaml")
    assert set(params.pretrain.runs) == set(sample.pretrain.runs) == set(params.finetune.runs)
    assert {r.method for r in params.pretrain.runs.values()} == {r.method for r in sample.pretrain.runs.values()}
    assert params.split.holdout_identities == 91 and params.sample.photos == "faces/celeba_medium"
    for run in params.pretrain.runs.values():
        if run.method != "random_init":
            assert run.train.keep_checkpoints and run.train.checkpoint_every, run.name  # the learning curve


def test_medium_cpu_runs_checkpoint_at_each_third() -> None:
    """43 steps of 32 per epoch (the 1,399 faces of the 200 training people): checkpoints at each third."""
    for run in load_params(MEDIUM / "params.yaml").pretrain.runs.values():
        if run.method != "random_init":
            assert run.train.checkpoint_every == run.train.epochs * (1399 // run.train.batch_size) // 3, run.name


def test_gpu_params_are_the_released_recipes_with_the_batch_capped() -> None:
    params = load_params(MEDIUM / "params.gpu.yaml")
    for run in params.pretrain.runs.values():
        if run.method == "random_init":
            continue
        recipe = dict(METHODS.get("mae" if run.method == "facet_mae" else run.method).recipe)
        recipe.pop("accum_steps", None)
        recipe["batch_size"] = min(recipe["batch_size"], GPU_BATCH)
        for key, value in recipe.items():
            assert getattr(run.train, key) == value, (run.name, key)
        assert {k for k in run.method_kwargs if k != "landmarks"} == set(), run.name  # the released architecture
    facet = FINETUNE_RECIPES["facet_base"]
    assert params.finetune.method["margin"] == facet["margin"]
    for key, value in facet["train"].items():
        assert getattr(params.finetune.runs["mae"].train, key) == value, key


def test_dvc_reads_the_medium_pipeline(tmp_path: Path) -> None:
    """``dvc dag`` in a bare clone of the pipeline files: every stage, the split before training and probes."""
    shutil.copytree(ROOT / ".dvc", tmp_path / ".dvc", ignore=shutil.ignore_patterns("tmp", "cache"))
    (tmp_path / "lineages").mkdir()
    shutil.copytree(MEDIUM, tmp_path / "lineages/medium", ignore=shutil.ignore_patterns("data", "plots", "metrics"))
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    dvc = str(Path(sys.executable).parent / "dvc")
    out = subprocess.run(
        [dvc, "dag", "--dot", "lineages/medium/dvc.yaml"], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    stages = yaml.safe_load((MEDIUM / "dvc.yaml").read_text())["stages"]
    for stage in stages:
        assert stage in out.stdout, stage
    for a, b in (("pack", "split"), ("split", "pretrain@mae"), ("split", "probe@mae"), ("finetune@mae", "verify@mae")):
        assert f'"lineages/medium/dvc.yaml:{a}" -> "lineages/medium/dvc.yaml:{b}"' in out.stdout, (a, b)
