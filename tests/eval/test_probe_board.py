"""The probes' leaderboard from a small fabricated set of reports: rows, verdicts, tables, plot, README block."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from facekit.eval.probe_board import board_row, finetune_verdicts, markdown, plot, verdicts
from facekit.eval.probes import METRICS
from facekit.stages.probe_board import render_readme


def _metrics(value: float) -> dict[str, float]:
    return dict.fromkeys(METRICS, value) | {"same_pairs": 10.0, "different_pairs": 10.0, "verification_far": 0.1}


def _probe(method: str, learned: float | None, mean: float, std: float) -> dict[str, Any]:
    rand = {m: {"mean": mean, "std": std, "min": mean - std, "max": mean + std} for m in METRICS}
    report = {"method": method, "backbone": "vit", "random_init": {**rand, "runs": [_metrics(mean)]}}
    if learned is not None:
        report |= {"learned": _metrics(learned), "checkpoints": {"10": _metrics(mean), "20": _metrics(learned)}}
    return report


def _board() -> dict[str, Any]:
    rows = {
        "scratch": board_row(
            _probe("random_init", None, 0.3, 0.01), {"accuracy": 0.7, "accuracy_std": 0.02, "auc": 0.8}, {}
        ),
        # 0.33 > 0.3 + 2 × 0.01: learned; fine-tuned 0.75 > 0.7 + 0.02: beats scratch
        "mae": board_row(
            _probe("mae", 0.33, 0.3, 0.01),
            {"accuracy": 0.75, "accuracy_std": 0.02, "auc": 0.85},
            {"steps": 20, "wall_time_s": 90.0},
        ),
        # 0.315 < 0.32: within the spread; 0.71 < 0.72: does not beat scratch
        "dino": board_row(
            _probe("dino", 0.315, 0.3, 0.01), {"accuracy": 0.71, "accuracy_std": 0.02, "auc": 0.8}, {"steps": 20}
        ),
    }
    finetune_verdicts(rows)
    held = {"identities": 5, "faces": 20, "same_pairs": 10, "different_pairs": 10, "far": 0.1}
    return {"held_out": held, "runs": rows, "controls": {"pixels": _metrics(0.1), "reference": _metrics(0.9)}}


def test_verdicts_need_more_than_two_spreads_and_more_than_scratchs_fold_std() -> None:
    runs = _board()["runs"]
    assert runs["mae"]["beats_random_init"] and runs["mae"]["finetuned_beats_scratch"]
    assert not runs["dino"]["beats_random_init"] and not runs["dino"]["finetuned_beats_scratch"]
    assert "beats_random_init" not in runs["scratch"] and "finetuned_beats_scratch" not in runs["scratch"]
    assert runs["mae"]["curve"] == {
        "10": {"knn_top1": 0.3, "linear_probe": 0.3},
        "20": {"knn_top1": 0.33, "linear_probe": 0.33},
    }
    text = verdicts(_board())
    assert "- `mae` beats its random init by more than 2 std" in text
    assert "- `dino` does **not** beat its random init" in text and "fine-tuned from it does **not** beat" in text
    assert "scratch`" not in text.split("\n")[0]


def test_markdown_tables_and_readme_block() -> None:
    table = markdown(_board())
    assert "| `mae` | 20 (1.5) | 0.330 | 0.300 ± 0.010 | 0.330 | 0.300 ± 0.010 |" in table
    assert "| `mae` | 10: 0.300 (0.300) → 20: 0.330 (0.330) |" in table
    assert "| reference | 0.900 | 0.900 | 0.900 | 0.900 | 0.900 |" in table and "FAR = 1.0e-01" in table
    readme = "a\n<!-- medium-leaderboard:start -->\nold\n<!-- medium-leaderboard:end -->\nb\n"
    out = render_readme(readme, _board())
    assert "old" not in out and table in out and out.endswith("<!-- medium-leaderboard:end -->\nb\n")
    assert render_readme(out, _board()) == out
    with pytest.raises(ValueError, match="medium-leaderboard"):
        render_readme("no block", _board())


def test_plot_writes_a_png(tmp_path: Path) -> None:
    plot(_board(), tmp_path / "plots/leaderboard.png")
    assert (tmp_path / "plots/leaderboard.png").read_bytes()[:4] == b"\x89PNG"
