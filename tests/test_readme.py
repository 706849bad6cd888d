"""The README's sample tables are generated (``facekit readme``) from the committed sample run, never typed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from facekit.stages import probe_board
from facekit.stages.downstream_board import README_DOWNSTREAM
from facekit.stages.downstream_board import render_readme as render_downstream
from facekit.stages.leaderboard import README_BOARD, render_readme

ROOT = Path(__file__).resolve().parents[1]


def _board() -> dict:
    return json.loads((ROOT / README_BOARD).read_text())


def test_the_readme_tables_match_the_committed_sample_run() -> None:
    """Edit a number in the README, or commit a new run without `facekit readme`, and this fails."""
    readme = (ROOT / "README.md").read_text()
    set_name = yaml.safe_load((ROOT / "params.yaml").read_text())["verify"]["name"]
    assert render_readme(readme, _board(), set_name) == readme


def test_the_readme_medium_block_matches_the_committed_medium_run() -> None:
    """The medium lineage's section is `facekit readme`'s rendering of its committed leaderboard.json."""
    readme = (ROOT / "README.md").read_text()
    board = json.loads((ROOT / probe_board.README_BOARD).read_text())
    assert probe_board.render_readme(readme, board) == readme


def test_the_committed_sample_run_is_of_the_current_runs_and_steps() -> None:
    """Every run of params.yaml is on the board, each pre-trained for its epochs × steps per epoch."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    board = _board()
    assert set(board) == set(params["finetune"]["runs"]) | {"reference"}
    pretrain = params["pretrain"]
    steps_per_epoch = 30 // pretrain["train"]["batch_size"]  # the 30 faces of the sample's 8 training people
    for name, run in pretrain["runs"].items():
        if run.get("method") == "random_init":
            continue
        epochs = (pretrain["train"] | run.get("train", {}))["epochs"]
        assert board[name]["pretrain_steps"] == epochs * steps_per_epoch, name


def test_render_readme_fills_each_block_and_names_the_far() -> None:
    row = {
        "rank": 1,
        "method": "mae",
        "holistic_accuracy": 0.75,
        "holistic_accuracy_std": 0.1,
        "masked_accuracy": 0.7,
        "masked_accuracy_std": 0.1,
        "holistic_auc": 0.6,
        "holistic_tar_at_far_1e-1": 0.3,
        "knn_accuracy": 0.25,
        "knn_accuracy_random_init": 0.2,
        "pretrain_steps": 30,
    }
    text = "a\n<!-- sample-knn:start -->\nold\n<!-- sample-knn:end -->\nb\n"
    text += "<!-- sample-leaderboard:start -->\n<!-- sample-leaderboard:end -->\nc\n"
    out = render_readme(text, {"mae": row}, "sample")
    assert "| `mae` | 30 | 0.250 / 0.200 |" in out and "old" not in out
    assert "TAR@FAR=1e-1" in out and out.startswith("a\n") and out.endswith("-->\nc\n")
    assert render_readme(out, {"mae": row}, "sample") == out
    with pytest.raises(ValueError, match="sample-knn"):
        render_readme("no markers", {"mae": row}, "sample")


def test_the_readme_downstream_table_matches_the_committed_medium_run() -> None:
    """The downstream table is generated (`facekit readme --downstream BOARD`) from docs/downstream_medium.json."""
    readme = (ROOT / "README.md").read_text()
    board = json.loads((ROOT / README_DOWNSTREAM).read_text())
    assert render_downstream(readme, board) == readme
    assert {"alignment", "pose"} <= {task for row in board.values() for task in row}
