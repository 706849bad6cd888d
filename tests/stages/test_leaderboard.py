"""The chain's end on the real sample: a random-init baseline pre-trained, fine-tuned, scored and ranked
below the external reference model by the ``leaderboard`` stage, which needs every run scored."""

from __future__ import annotations

import json
from hashlib import sha256
from pathlib import Path

import cv2
import pytest
import torch
import yaml

from facekit.cli import main
from facekit.config import load_params
from facekit.data.shards import read_index
from facekit.nn import backbones
from facekit.stages import leaderboard
from facekit.stages.leaderboard import build_leaderboard


def test_scratch_run_is_fine_tuned_scored_and_ranked_below_the_reference(in_project: Path, capsys) -> None:
    assert main(["split"]) == 0
    assert main(["pretrain", "scratch", "--quiet"]) == 0
    random_init = json.loads(Path("metrics/pretrain_scratch.json").read_text())
    assert random_init["steps"] == 0 and random_init["method"] == "random_init"
    assert main(["finetune", "scratch", "--quiet"]) == 0
    finetune = json.loads(Path("metrics/finetune_scratch.json").read_text())
    assert finetune["num_classes"] == len(read_index(Path("data/shards"))["identities"]) == 13
    seen = json.loads(Path("metrics/split.json").read_text())["faces_train"]
    assert finetune["steps"] == 2 * (seen // 16)  # 2 epochs of the faces fine-tuning may see
    assert finetune["init_from"] == "data/runs/pretrain/scratch"
    names = read_index(Path("data/shards"))["identities"]  # split: 5 -> the 5 smallest SHA-256 of "0:<name>"
    held = sorted(sorted(names, key=lambda n: sha256(f"0:{n}".encode()).hexdigest())[:5])
    assert finetune["held_out_identities"] == held
    assert finetune["init_load"]["missing"] and all(k.startswith("head.") for k in finetune["init_load"]["missing"])
    backbone = backbones.load("data/runs/finetune/scratch")
    assert backbone(torch.zeros(2, 3, 112, 112)).shape == (2, 128)  # the 128-d head of finetune.method
    for args in (["eval", "sets"], ["verify", "scratch"], ["verify", "reference"], ["leaderboard"]):
        assert main([*args, "--quiet"] if args[0] != "eval" else args) == 0
    board = json.loads(Path("metrics/leaderboard.json").read_text())
    assert list(board) == ["reference", "scratch"]  # ranked: MobileFaceNet far above a 2-step tiny ViT
    assert [r["rank"] for r in board.values()] == [1, 2]
    verify = json.loads(Path("metrics/verify/scratch.json").read_text())
    assert board["scratch"]["holistic_accuracy"] == verify["sample"]["accuracy"]
    assert board["scratch"]["masked_accuracy"] == verify["sample_masked"]["accuracy"]
    assert board["scratch"]["finetune_steps"] > 0 and board["scratch"]["pretrain_steps"] == 0
    assert "images_per_s" not in json.dumps(board)  # the speed stays in timing.json, out of dvc.lock
    assert json.loads(Path("data/runs/finetune/scratch/timing.json").read_text())["images_per_s"] > 0
    table = Path("metrics/leaderboard.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| 1 ") or line.startswith("| 2 ")]
    assert rows[0].startswith("| 1 | reference |") and rows[1].startswith("| 2 | scratch | random_init |")
    assert f"{verify['sample']['accuracy']:.4f}" in rows[1]
    assert "leaderboard: 2 runs; best reference" in capsys.readouterr().out
    comparison = cv2.imread("plots/leaderboard_roc.png")  # both runs' curves, the reference dashed black
    assert comparison is not None and (comparison.max(axis=2) < 60).sum() > 500


def test_leaderboard_needs_every_run_scored(in_project: Path) -> None:
    params = yaml.safe_load(Path("params.yaml").read_text())
    params["finetune"]["runs"] = {"not_scored": {}}
    Path("other.yaml").write_text(yaml.safe_dump(params))
    other = load_params("other.yaml")
    with pytest.raises(FileNotFoundError, match="run `facekit verify not_scored` first"):
        build_leaderboard(other, other.paths)
    params["finetune"]["runs"], params["verify"]["reference"] = {}, ""
    Path("other.yaml").write_text(yaml.safe_dump(params))
    other = load_params("other.yaml")
    with pytest.raises(ValueError, match="nothing to rank"):
        leaderboard.run(other, other.paths)
