"""``--set KEY=VALUE`` on ``facekit pretrain RUN`` / ``facekit finetune RUN``: dotted keys into the run's
settings, YAML values, checked by the code that checks params.yaml (a bad key: one ``facekit: error:`` line,
exit status 2)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from facekit.cli import main
from facekit.config import load_params, parse_assignment

TINY_VIT = {"img_size": 112, "depth": 2, "embed_dim": 192, "num_heads": 3}
TRAIN = {"epochs": 1, "batch_size": 16, "lr": 1e-3, "log_every": 1, "checkpoint_every": None}
TINY_MAE = {"method": "mae", "backbone": "vit_small_patch16_224", "backbone_kwargs": TINY_VIT}
TINY_MAE |= {"decoder_dim": 128, "decoder_depth": 1, "decoder_heads": 4}


def _params_file(folder: Path, shards: Path) -> Path:
    """A params.yaml with one pre-training run ``tiny`` and its fine-tuning run (outputs relative to cwd)."""
    pretrain = {"shards": str(shards), "out": "runs", "train": TRAIN, "runs": {"tiny": TINY_MAE}}
    method = {"margin": "cosface", "margin_kwargs": {"s": 30.0, "m": 0.35}, "backbone_kwargs": {"head_dim": 32}}
    finetune = {"shards": str(shards), "pretrained": "runs", "out": "ft", "train": TRAIN, "method": method}
    finetune["runs"] = {"tiny": {}}
    path = folder / "params.yaml"
    path.write_text(yaml.safe_dump({"pretrain": pretrain, "finetune": finetune}))
    return path


def test_an_assignment_is_a_dotted_key_and_a_yaml_value() -> None:
    assert parse_assignment("train.lr=1e-3") == ("train.lr", 0.001)  # YAML 1.2's float, as DVC reads it
    assert parse_assignment("train.betas=[0.9, 0.95]") == ("train.betas", [0.9, 0.95])
    assert parse_assignment("train.clip_grad=null") == ("train.clip_grad", None)
    assert parse_assignment("backbone=vit_small_patch16_224") == ("backbone", "vit_small_patch16_224")
    assert parse_assignment("note=a=b") == ("note", "a=b")
    for bad in ("train.lr", "=1", "train..lr=1", ".lr=1"):
        with pytest.raises(ValueError, match="--set expects KEY=VALUE"):
            parse_assignment(bad)


def test_overrides_reach_the_resolved_run(tmp_path: Path) -> None:
    path = _params_file(tmp_path, tmp_path / "shards")
    overrides: dict[str, Any] = {"pretrain.runs.tiny.train.lr": 2e-3, "pretrain.runs.tiny.mask_ratio": 0.6}
    overrides["pretrain.runs.tiny.backbone_kwargs.depth"] = 1
    run = load_params(path, overrides).pretrain.run("tiny")
    assert (run.train.lr, run.train.epochs, run.method_kwargs["mask_ratio"]) == (2e-3, 1, 0.6)
    assert run.method_kwargs["backbone_kwargs"] == {**TINY_VIT, "depth": 1}
    assert load_params(path).pretrain.run("tiny").train.lr == 1e-3  # the file is left alone
    finetune = load_params(path, {"finetune.runs.tiny.train.epochs": 2, "finetune.runs.tiny.margin": "arcface"})
    run = finetune.finetune.run("tiny")  # the run had no train mapping: one is made
    assert (run.train.epochs, run.method_kwargs["margin"], run.method_kwargs["init_from"]) == (
        2,
        "arcface",
        "runs/tiny",
    )


def test_the_cli_sets_the_runs_keys(sample_shards: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    path = _params_file(tmp_path, sample_shards)
    monkeypatch.chdir(tmp_path)
    sets = ["--set", "train.epochs=2", "--set", "train.lr=2e-3", "--set", "mask_ratio=0.6"]
    assert main(["pretrain", "tiny", "--params", str(path), "--quiet", *sets]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("pretrain tiny: loss ") and "after 6 steps" in line  # 61 faces // 16 = 3 an epoch
    config = json.loads(Path("runs/tiny/train_config.json").read_text())
    assert (config["epochs"], config["lr"]) == (2, 2e-3)

    sets = ["--set", "train.max_steps=1", "--set", "margin=arcface"]
    assert main(["finetune", "tiny", "--params", str(path), "--quiet", *sets]) == 0
    assert "finetune tiny: loss " in capsys.readouterr().out
    assert json.loads(Path("ft/tiny/train_config.json").read_text())["max_steps"] == 1
    assert json.loads(Path("metrics/finetune_tiny.json").read_text())["steps"] == 1


@pytest.mark.parametrize(
    ("command", "run", "setting", "message"),
    [
        ("pretrain", "tiny", "train.lrr=1e-3", "pretrain.runs.tiny.train.lrr: unknown key (did you mean 'lr'?)"),
        ("pretrain", "tiny", "train.epochs=0", "pretrain.runs.tiny: epochs must be >= 1, got 0"),
        ("pretrain", "tiny", "train.out_dir=x", "pretrain.runs.tiny.train.out_dir is set by the stage; remove it"),
        (
            "pretrain",
            "tiny",
            "decoder_dpth=1",
            "pretrain.runs.tiny: method 'mae' does not take 'decoder_dpth' (did you mean 'decoder_depth'?); ",
        ),
        ("pretrain", "tiny", "train.lr", "--set expects KEY=VALUE with a dotted KEY, got 'train.lr'"),
        ("pretrain", "tnyi", "train.lr=1", "unknown pretrain run 'tnyi' (did you mean 'tiny'?)"),
        ("pretrain", "tiny", "train.lr.x=1", "pretrain.runs.tiny: lr must be a number or null, got {'x': 1}"),
        ("pretrain", "tiny", "train.epochs=2.5", "pretrain.runs.tiny: epochs must be an integer, got 2.5"),
        ("pretrain", "tiny", "backbone.x=1", "pretrain.runs.tiny.backbone is not a mapping: cannot set "),
        ("finetune", "tiny", "train.bach_size=3", "finetune.runs.tiny.train.bach_size: unknown key (did you mean"),
        ("finetune", "tiny", "num_classes=3", "finetune.runs.tiny.num_classes is set by the stage; remove it"),
    ],
)
def test_a_bad_setting_is_one_error_line(
    command: str, run: str, setting: str, message: str, sample_shards: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    path = _params_file(tmp_path, sample_shards)
    monkeypatch.chdir(tmp_path)
    assert main([command, run, "--params", str(path), "--set", setting]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"facekit: error: {message}") and err.count("\n") == 1, err
