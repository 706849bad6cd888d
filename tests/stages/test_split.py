"""The identity split: seeded, disjoint, and no training stage's dataset yields a face of a held-out person; the
probes read a training run's kept checkpoints."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml

from facekit.config import Params, load_params
from facekit.data.record import FaceRecord
from facekit.data.shards import ShardSetWriter, write_index
from facekit.nn import backbones
from facekit.stages import finetune, pretrain, probe, split

PEOPLE, FACES = 8, 3
TINY_VIT = {"img_size": 32, "depth": 1, "embed_dim": 32, "num_heads": 2}


def _record(person: int, face: int) -> FaceRecord:
    rgb = np.random.default_rng(person * FACES + face).integers(0, 255, (32, 32, 3), np.uint8)
    points = np.array([[11, 13], [21, 13], [16, 18], [12, 24], [20, 24]], np.float32)
    return FaceRecord(
        key=f"p{person}/f{face}.jpg",
        image=cv2.imencode(".jpg", rgb)[1].tobytes(),
        identity=person,
        landmarks=points,
        bbox=np.array([0, 0, 32, 32], np.float32),
        det_score=0.9,
        num_faces=1,
        source="t",
        source_sha256=hashlib.sha256(f"{person}/{face}".encode()).hexdigest(),
    )


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Shards of 8 people × 3 random 32 px faces and a params.yaml holding 3 people out, with a tiny MAE run
    and its fine-tuning."""
    monkeypatch.chdir(tmp_path)
    names = [f"person{i}" for i in range(PEOPLE)]
    with ShardSetWriter(tmp_path / "shards", "part", max_shard_bytes=10**8, meta={"identities": names}) as w:
        for person in range(PEOPLE):
            for face in range(FACES):
                w.put(_record(person, face))
    write_index(tmp_path / "shards", w.close(), identities=names, params_hash="test")
    vit = {"backbone": "vit_small_patch16_224", "backbone_kwargs": TINY_VIT}
    params = {
        "split": {"holdout_identities": 3, "seed": 0, "file": "split.json"},
        "pretrain": {
            "shards": "shards",
            "train": {"epochs": 1, "batch_size": 2, "lr": 1e-3},
            "runs": {"scratch": {"method": "random_init", **vit}, "mae": {**vit, "decoder_dim": 32}},
        },
        "finetune": {
            "shards": "shards",
            "method": {"backbone_kwargs": {"head_dim": 16}},
            "train": {"epochs": 1, "batch_size": 2, "lr": 1e-3},
            "runs": {"scratch": {}},
        },
    }
    Path("params.yaml").write_text(yaml.safe_dump(params))
    return tmp_path


def _split(params: Params) -> dict:
    split.run(params, params.paths)
    return json.loads(Path(params.split.file).read_text())


def test_split_is_seeded_disjoint_and_reported(project: Path) -> None:
    params = load_params()
    first = _split(params)
    assert first == _split(params)  # the same seed, the same people
    assert len(first["held_out"]) == 3 and len(first["train"]) == PEOPLE - 3
    assert set(first["held_out"]).isdisjoint(first["train"])
    assert set(first["held_out"]) | set(first["train"]) == {f"person{i}" for i in range(PEOPLE)}
    report = json.loads(Path("metrics/split.json").read_text())
    assert report == {
        "seed": 0,
        "identities_train": 5,
        "identities_held_out": 3,
        "faces_train": 15,
        "faces_held_out": 9,
    }
    others = [_split(load_params(overrides={"split.seed": seed}))["held_out"] for seed in (1, 2, 3)]
    assert any(held != first["held_out"] for held in others)  # the seed chooses the people
    assert split.held_out(load_params(overrides={"split.seed": 3})) == others[-1]


class _Captured(Exception):
    """Raised by the stand-in training loop once it holds the training run's dataset."""

    def __init__(self, dataset: object) -> None:
        self.dataset = dataset


def _training_keys(stage_run, params: Params, name: str, monkeypatch: pytest.MonkeyPatch) -> set[str]:
    """The keys of every item of the dataset ``stage_run`` hands the training loop for run ``name``."""

    def capture(method: object, dataset: object, cfg: object) -> None:
        raise _Captured(dataset)

    monkeypatch.setattr(pretrain, "train", capture)
    with pytest.raises(_Captured) as caught:
        stage_run(params, params.paths, name, progress=False)
    dataset = caught.value.dataset
    return {dataset[i]["key"] for i in range(len(dataset))}


def test_no_training_stage_sees_a_held_out_person(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    params = load_params()
    held = _split(params)["held_out"]
    held_keys = {f"p{i}/f{f}.jpg" for i in range(PEOPLE) if f"person{i}" in held for f in range(FACES)}
    train_keys = {f"p{i}/f{f}.jpg" for i in range(PEOPLE) for f in range(FACES)} - held_keys
    pretrain.run(params, params.paths, "scratch")  # the random-init export fine-tuning starts from
    assert _training_keys(pretrain.run, params, "mae", monkeypatch) == train_keys
    assert _training_keys(finetune.run, params, "scratch", monkeypatch) == train_keys


def test_held_out_needs_the_split_file_and_names_the_command(project: Path) -> None:
    with pytest.raises(FileNotFoundError, match="facekit split"):
        split.held_out(load_params())
    assert split.held_out(load_params(overrides={"split.holdout_identities": 0})) == []


def test_the_last_kept_checkpoint_rebuilds_the_exported_backbone(project: Path) -> None:
    """The probes' learning curve reads each kept checkpoint through the method: the last one gives back
    exactly the backbone the run exported."""
    params = load_params(overrides={"pretrain.train.keep_checkpoints": True, "pretrain.train.checkpoint_every": 3})
    _split(params)
    pretrain.run(params, params.paths, "mae", progress=False)
    run_dir = Path(params.pretrain.out) / "mae"
    steps = probe.checkpoint_steps(run_dir)
    assert sorted(steps) == [3, 6, 7]  # 15 training faces in steps of 2: 7 steps, kept every 3 and at the end
    exported = backbones.load(run_dir).state_dict()
    rebuilt = probe.checkpoint_backbone(params, "mae", steps[7]).state_dict()
    assert exported.keys() == rebuilt.keys() and all(torch.equal(exported[k], rebuilt[k]) for k in exported)
    early = probe.checkpoint_backbone(params, "mae", steps[3]).state_dict()
    assert not all(torch.equal(exported[k], early[k]) for k in exported)
