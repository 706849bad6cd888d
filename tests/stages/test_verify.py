"""The ``verify`` stage on the real sample: the external reference model scores the verification sets as it
scores the raw photos; LAFS's run keeps its mesh landmark tokens from pre-training to verification."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from facekit.config import load_params
from facekit.data.sources.verification_bin import load_verification_bin
from facekit.eval.make_bin import landmarks_path, read_landmarks
from facekit.nn import backbones
from facekit.stages import eval_sets, finetune, pretrain, verify


def test_reference_model_scores_the_sets_as_on_the_raw_photos(in_project: Path) -> None:
    params = load_params()
    eval_sets.run(params, params.paths)
    line = verify.run(params, params.paths, "reference")
    scores = json.loads(Path("metrics/verify/reference.json").read_text())
    assert scores["sample"]["accuracy"] >= 0.97  # MobileFaceNet on the aligned sample: ≈0.99
    assert 0.8 <= scores["sample_masked"]["accuracy"] <= scores["sample"]["accuracy"]
    assert f"sample {scores['sample']['accuracy']:.4f}" in line
    assert Path("plots/verify/reference/roc_sample.csv").is_file() and Path("plots/verify/reference/roc.png").is_file()


def test_lafs_carries_its_mesh_landmarks_from_pre_training_to_verification(in_project: Path) -> None:
    """params.yaml's lafs run through pretrain -> finetune -> eval_sets -> verify (one epoch each, one block):
    every export is a landmark ViT taking the mesh, the sets carry their faces' mesh, and verify without it
    is one clear error."""
    params = yaml.safe_load(Path("params.yaml").read_text())
    lafs = yaml.safe_load((Path(__file__).resolve().parents[2] / "params.yaml").read_text())["pretrain"]["runs"]["lafs"]
    lafs |= {"backbone_kwargs": {"depth": 1, "embed_dim": 64, "num_heads": 2}, "n_local": 1, "train": {"epochs": 1}}
    params["pretrain"]["runs"] = {"lafs": lafs}
    params["finetune"]["runs"] = {"lafs": {}}
    params["finetune"]["train"]["epochs"] = 1
    Path("lafs.yaml").write_text(yaml.safe_dump(params))
    loaded = load_params("lafs.yaml")
    pretrain.run(loaded, loaded.paths, "lafs", progress=False)
    finetune.run(loaded, loaded.paths, "lafs", progress=False)
    for stage in ("pretrain", "finetune"):
        spec = backbones.read(Path(f"data/runs/{stage}/lafs"))
        assert (spec.name, spec.kwargs["landmarks"]) == ("landmark_vit", "mesh"), stage
    assert spec.kwargs["head_dim"] == 128  # finetune.method's embedding head on the landmark ViT

    eval_sets.run(loaded, loaded.paths)
    for path in eval_sets.set_paths(loaded).values():
        pairs = len(load_verification_bin(path))
        assert read_landmarks(path, 2 * pairs).shape == (2 * pairs, 196, 2)
    line = verify.run(loaded, loaded.paths, "lafs")
    scores = json.loads(Path("metrics/verify/lafs.json").read_text())
    assert 0 <= scores["sample"]["accuracy"] <= 1 and "sample" in line

    sidecar = landmarks_path(eval_sets.set_paths(loaded)["sample"])
    kept = sidecar.read_bytes()
    sidecar.unlink()
    try:
        with pytest.raises(FileNotFoundError, match=r"sample\.landmarks\.npy"):
            verify.run(loaded, loaded.paths, "lafs")
    finally:
        sidecar.write_bytes(kept)
