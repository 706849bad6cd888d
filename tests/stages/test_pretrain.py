"""The ``pretrain`` stage on the real sample: every seed method learns, its backbone exports and loads back,
and bad parameters fail with a message that names the run and the key."""

from __future__ import annotations

import csv
import json
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from safetensors.torch import load_file

from facekit.cli import main
from facekit.config import Params, PathsParams, PretrainParams, load_params
from facekit.data.views import IMAGENET_MEAN, IMAGENET_STD, VGGFACE2_MEAN, VGGFACE2_STD
from facekit.nn import backbones
from facekit.nn.backbones import BACKBONES
from facekit.stages import pretrain
from facekit.stages.pretrain import build_method
from facekit.train.checkpoint import load_checkpoint

TINY_VIT = {"img_size": 112, "depth": 2, "embed_dim": 192, "num_heads": 3}
DECODER = {"decoder_dim": 128, "decoder_heads": 4}
TRAIN = {
    "epochs": 4,  # 61 faces // 16 = 3 steps per epoch: 12 steps
    "batch_size": 16,
    "lr": 1e-3,
    "warmup_epochs": 1,
    "log_every": 1,
    "checkpoint_every": None,
}
RUNS: dict[str, dict[str, Any]] = {
    "mae": {"backbone": "vit_small_patch16_224", "backbone_kwargs": TINY_VIT, "decoder_depth": 1, **DECODER},
    "facet_mae": {"backbone_kwargs": {"depth": 2, "embed_dim": 192, "num_heads": 3}, "decoder_depth": 1, **DECODER},
    "mcf": {
        "backbone": "vit_small_patch16_224",
        "backbone_kwargs": TINY_VIT,
        "decoder_depth": 1,
        **DECODER,
        "proj_hidden_dim": 256,
        "proj_dim": 64,
        "teacher_arch": "vit_tiny_patch16_224",
        "teacher_kwargs": {"img_size": 112, "depth": 2},
        "teacher_layers": [0, 1],
    },
    "camd": {
        "backbone": "vit_small_patch16_224",
        "backbone_kwargs": TINY_VIT,
        **DECODER,
        "projector_depth": 1,
        "predictor_depth": 1,
        "distill_layers": [0, 1],
        "train": {"betas": [0.9, 0.95], "clip_grad": 1.0, "ema_momentum": 0.995},
    },
}
#: the backbone each run exports, keyword arguments that only the method (or preset) adds, and the input
#: mean its views normalise with (std alongside): ImageNet's, FaceT's [−1, 1], VGGFace2's
EXPORTED = {
    "mae": ("vit_small_patch16_224", {}, IMAGENET_MEAN),
    "facet_mae": ("facet_base", {"num_prompts": 0, "head_dim": None}, (0.5, 0.5, 0.5)),
    "mcf": ("vit_small_patch16_224", {}, IMAGENET_MEAN),
    "camd": ("vit_small_patch16_224", {"freeze_patch_embed": True, "class_token": True}, VGGFACE2_MEAN),
}
STDS = {IMAGENET_MEAN: IMAGENET_STD, (0.5, 0.5, 0.5): (0.5, 0.5, 0.5), VGGFACE2_MEAN: VGGFACE2_STD}


def _params(shards: Path, out: Path, runs: dict[str, dict[str, Any]] = RUNS, **train: Any) -> Params:
    return Params(pretrain=PretrainParams(shards=str(shards), out=str(out), train={**TRAIN, **train}, runs=runs))


def _losses(csv_path: Path) -> list[float]:
    with csv_path.open() as f:
        return [float(row["loss"]) for row in csv.DictReader(f)]


@pytest.mark.parametrize("run", list(RUNS))
def test_method_learns_and_its_backbone_loads_back(run: str, sample_shards: Path, tmp_path: Path) -> None:
    params = _params(sample_shards, tmp_path / "runs")
    report = tmp_path / "metrics" / f"pretrain_{run}.json"
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "MCF perceptual teacher has no checkpoint")
        result = pretrain.run(params, PathsParams(metrics=str(report.parent)), run, progress=False)

    out = tmp_path / "runs" / run
    losses = _losses(out / "train_log.csv")
    assert result.steps == len(losses) == 12
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3, losses
    assert _losses(report.with_suffix(".csv")) == losses
    metrics = json.loads(report.read_text())
    assert (metrics["run"], metrics["method"], metrics["steps"]) == (run, run, 12)
    assert metrics["final_loss"] == pytest.approx(losses[-1])

    written = json.loads((out / "backbone.json").read_text())
    assert written["registry"] == "facekit.nn.backbones:BACKBONES" and written["weights"] == "backbone.safetensors"
    spec = backbones.read(out)
    name, added, mean = EXPORTED[run]
    assert spec.name == name and (spec.run, spec.method) == (run, run)
    assert (spec.mean, spec.std) == (mean, STDS[mean])  # what the method's views fed the backbone
    assert (spec.input_size, spec.embedding_size) == (112, 192)
    assert {k: spec.kwargs[k] for k in added} == added
    fresh = BACKBONES.create(spec.name, **spec.kwargs)
    exported = load_file(out / "backbone.safetensors")
    assert sorted(exported) == sorted(fresh.state_dict())  # no missing, no unexpected keys
    backbone = backbones.load(out).eval()

    # the method rebuilt from params and restored from the training checkpoint exports the same network
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "MCF perceptual teacher has no checkpoint")
        method, _ = build_method(params.pretrain.run(run))
    load_checkpoint(out / "checkpoints", method)
    trained = method.export_backbone().eval()
    for key, tensor in trained.state_dict().items():
        assert torch.equal(exported[key], tensor), key
    x = torch.randn(2, 3, 112, 112, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(backbone(x), trained(x), rtol=0, atol=0)
        assert not torch.allclose(backbone(x), fresh.eval()(x))  # the weights were really loaded


def test_the_cli_trains_a_run_from_a_params_file(sample_shards: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    runs = {"tiny": {"method": "mae", **RUNS["mae"], "train": {"epochs": 1}}}
    params_file = tmp_path / "params.yaml"
    section = {"shards": str(sample_shards), "out": "runs", "train": TRAIN, "runs": runs}
    params_file.write_text(yaml.safe_dump({"pretrain": section}))
    monkeypatch.chdir(tmp_path)
    assert main(["pretrain", "tiny", "--params", str(params_file), "--quiet"]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("pretrain tiny: loss ") and "after 3 steps" in line and "-> runs/tiny" in line
    assert json.loads(Path("metrics/pretrain_tiny.json").read_text())["method"] == "mae"
    assert (tmp_path / "runs/tiny/backbone.safetensors").is_file()


@pytest.mark.parametrize(
    ("runs", "train", "message"),
    [
        (
            {"mae": {"decoder_dpth": 1}},
            {},
            r"pretrain.runs.mae: method 'mae' does not take 'decoder_dpth' "
            r"\(did you mean 'decoder_depth'\?\); its parameters: backbone, backbone_kwargs, mask_ratio",
        ),
        (
            {"facet_mae": {"mask_ration": 0.5}},
            {},
            r"pretrain.runs.facet_mae: method 'facet_mae' does not take "
            r"'mask_ration' \(did you mean 'mask_ratio'\?\)",
        ),
        (
            {"mae": {"backbone_kwargs": {"dpth": 2}}},
            {},
            r"pretrain.runs.mae: backbone 'vit_small_patch16_224' does not take 'dpth' \(did you mean 'depth'\?\)",
        ),
        ({"x": {"method": "maee"}}, {}, r"pretrain.runs.x: unknown method 'maee'; did you mean 'mae'\?"),
        ({"mae": {}}, {"epoch": 3}, r"pretrain.train.epoch: unknown key \(did you mean 'epochs'\?\)"),
        ({"mae": {"train": {"bach_size": 3}}}, {}, r"pretrain.runs.mae.train.bach_size: unknown key"),
        ({"mae": {"train": {"lrr": 1e-3}}}, {}, r"pretrain.runs.mae.train.lrr: unknown key \(did you mean 'lr'\?\)"),
        ({"mae": {}}, {"out_dir": "elsewhere"}, r"pretrain.train.out_dir is set by the stage"),
        ({"mae": {"train": {"blr": 1e-4}}}, {}, r"pretrain.runs.mae: set exactly one of lr and blr"),
    ],
)
def test_bad_params_name_the_run_and_the_key(runs: dict, train: dict, message: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=message):  # TrainConfig keys and values when loaded, method keys when built
        params = _params(tmp_path / "shards", tmp_path / "runs", runs, **train).pretrain
        build_method(params.run(next(iter(runs))))


def test_unknown_runs_and_missing_shards_are_clear_errors(tmp_path: Path, capsys) -> None:
    params = _params(tmp_path / "no-shards", tmp_path / "runs")
    with pytest.raises(ValueError, match=r"unknown pretrain run 'maee' \(did you mean 'mae'\?\); params.yaml defines"):
        pretrain.run(params, params.paths, "maee")
    with pytest.raises(FileNotFoundError, match=r"pretrain.shards: no index.json in .*no-shards"):
        pretrain.run(params, params.paths, "mae")
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump({"pretrain": {"train": TRAIN, "runs": {"mae": {}}, "trian": {}}}))
    with pytest.raises(ValueError, match=r"pretrain.trian: unknown key \(did you mean 'train'\?\)"):
        load_params(params_file)
    params_file.write_text(yaml.safe_dump({"pretrain": {"train": TRAIN, "runs": {"mae": {}}}}))
    assert main(["pretrain", "mea", "--params", str(params_file)]) == 2
    assert "facekit: error: unknown pretrain run 'mea' (did you mean 'mae'?)" in capsys.readouterr().err


def test_the_cli_says_a_random_init_run_was_not_trained(tmp_path: Path, monkeypatch, capsys) -> None:
    tiny = {"img_size": 112, "depth": 1, "embed_dim": 64, "num_heads": 2}
    runs = {"scratch": {"method": "random_init", "backbone": "vit_small_patch16_224", "backbone_kwargs": tiny}}
    params_file = tmp_path / "params.yaml"
    section = {"shards": str(tmp_path / "no-shards"), "out": "runs", "train": TRAIN, "runs": runs}
    params_file.write_text(yaml.safe_dump({"pretrain": section}))
    monkeypatch.chdir(tmp_path)
    assert main(["pretrain", "scratch", "--params", str(params_file), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert out.strip().splitlines()[-1].startswith("pretrain scratch: no training (random init) -> runs/scratch")
    assert "nan" not in out.lower()
