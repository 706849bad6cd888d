"""Leave-one-out kNN identity accuracy: values worked out by hand, the representation check of a pre-training
run on the real sample faces (learned vs its own random init), a strong embedding (the shared MobileFaceNet)
on the same crops, and LAFS's landmark-token embedding against the tokens LAFS trains on."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from facekit.cli import main
from facekit.config import PretrainParams
from facekit.data.views import IMAGENET_MEAN, IMAGENET_STD
from facekit.eval.embedder import OnnxEmbedder
from facekit.eval.knn import (
    ShardFaces,
    embed_faces,
    knn_identity_accuracy,
    load_faces,
    majority_baseline,
    random_init_backbone,
    representation_check,
)
from facekit.methods.lafs import LAFS
from facekit.nn import backbones
from facekit.nn.backbones import BACKBONES
from facekit.stages.pretrain import build_method

TINY_VIT = {"img_size": 112, "depth": 2, "embed_dim": 192, "num_heads": 3}
HALF = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))  # LAFS's normalisation


def _circle(degrees: list[float]) -> np.ndarray:
    angles = np.deg2rad(degrees)
    return np.stack([np.cos(angles), np.sin(angles)], axis=1)


# ---------------------------------------------------------------- by hand

#: points on the unit circle (degrees) and their labels; cosine distance grows with the angle between them
ANGLES = [0, 12, 20, 33, 47, 180, 193, 207]
LABELS = [0, 0, 1, 1, 1, 2, 2, 0]


def test_one_nearest_neighbour_by_hand() -> None:
    # nearest other point: 0°→12° (0 ✓), 12°→20° (1 ✗), 20°→12° (0 ✗), 33°→20° (1 ✓), 47°→33° (1 ✓),
    # 180°→193° (2 ✓), 193°→180° (2 ✓), 207°→193° (2 ✗)
    assert knn_identity_accuracy(_circle(ANGLES), LABELS, k=1) == pytest.approx(5 / 8)


def test_three_neighbours_vote_and_a_tie_goes_to_the_nearest() -> None:
    # 0°: 12, 20, 33 → 0, 1, 1 ✗ | 12°: 20, 0, 33 → 1, 0, 1 ✗ | 20°: 12, 33, 0 → 0, 1, 0 ✗ | 33°: 20, 47, 12 ✓
    # 47°: 33, 20, 12 ✓ | 180°: 193 (2), 207 (0), 47 (1): a three-way tie, the nearest (2) wins ✓
    # 193°: 180 (2), 207 (0), 47 (1): tie → 2 ✓ | 207°: 193, 180, 0 → 2, 2, 0 ✗
    assert knn_identity_accuracy(_circle(ANGLES), LABELS, k=3) == pytest.approx(4 / 8)


def test_a_point_is_never_its_own_neighbour_even_when_duplicated() -> None:
    # the same face filed under two identities: each copy's nearest other point is the copy with the other
    # label (both wrong); a point counted as its own neighbour would get both right
    x = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 2.0], [-1.0, 0.1], [-1.0, -0.1]])
    assert knn_identity_accuracy(x, [0, 1, 2, 2, 3, 3], k=1) == pytest.approx(4 / 6)
    # duplicates with the same label are each other's (correct) nearest neighbour; scale does not matter
    assert knn_identity_accuracy(torch.tensor([[1.0, 0.0], [3.0, 0.0], [0.0, 1.0], [0.0, 1.0]]), [0, 0, 1, 1]) == 1.0


def test_bad_input_is_refused() -> None:
    x = _circle(ANGLES)
    with pytest.raises(ValueError, match=r"k must be in 1\.\.N-1"):
        knn_identity_accuracy(x, LABELS, k=8)
    with pytest.raises(ValueError, match=r"labels \[N\]"):
        knn_identity_accuracy(x, LABELS[:-1])
    with pytest.raises(ValueError, match="non-zero"):
        knn_identity_accuracy(np.vstack([x, np.zeros((1, 2))]), [*LABELS, 3])


def test_majority_baseline() -> None:
    assert majority_baseline([0, 0, 0, 1, 2]) == pytest.approx(0.6)


# ---------------------------------------------------------------- real faces


@pytest.fixture(scope="module")
def faces(sample_shards: Path) -> ShardFaces:
    return load_faces(sample_shards)


def test_a_face_recognition_model_separates_the_identities(faces: ShardFaces, assets: Path) -> None:
    assert len(np.unique(faces.labels)) == 13
    embedder = OnnxEmbedder(assets / "models" / "mobilefacenet_128d.onnx")
    embeddings = embedder.embed(faces.images.permute(0, 2, 3, 1).numpy())
    assert knn_identity_accuracy(embeddings, faces.labels, k=1) >= 0.9

    torch.manual_seed(0)
    random_vit = BACKBONES.create("vit_small_patch16_224", **TINY_VIT)
    random_accuracy = knn_identity_accuracy(
        embed_faces(random_vit, faces, (IMAGENET_MEAN, IMAGENET_STD)), faces.labels, k=1
    )
    print(f"random-init ViT: 1-NN accuracy {random_accuracy:.3f}")  # photo-level similarity, well below 0.9
    assert majority_baseline(faces.labels) < random_accuracy < 0.9


def _untrained_run(tmp_path: Path, name: str, settings: dict[str, Any], seed: int = 3) -> tuple[Path, torch.nn.Module]:
    """A run folder holding the backbone a run ``name`` starts from (built as the ``pretrain`` stage builds it)."""
    train = {"epochs": 1, "batch_size": 4, "lr": 1e-3}
    run = PretrainParams(shards="unused", out=str(tmp_path), train=train, runs={name: settings}).run(name)
    torch.manual_seed(seed)
    method, spec = build_method(run)
    out = tmp_path / name
    backbones.save(method.export_backbone(), spec, out)
    (out / "train_config.json").write_text(json.dumps({"seed": seed}))
    return out, method.export_backbone()


@pytest.mark.parametrize(
    ("name", "settings"),
    [
        (
            "mae",
            {"backbone": "vit_small_patch16_224", "backbone_kwargs": TINY_VIT, "decoder_dim": 64, "decoder_depth": 1},
        ),
        (
            "dino",
            {"backbone_kwargs": {"depth": 1, "embed_dim": 96, "num_heads": 3}, "out_dim": 64, "head_hidden_dim": 64},
        ),
        ("fra", {"backbone": "resnet18", "backbone_kwargs": {"channels": (8, 16, 32, 64)}, "hidden_dim": 64}),
        ("lafs", {"backbone_kwargs": {"depth": 1, "embed_dim": 96, "num_heads": 3}, "out_dim": 64, "n_local": 0}),
    ],
)
def test_random_init_is_the_network_the_run_started_from(tmp_path: Path, name: str, settings: dict[str, Any]) -> None:
    run_dir, initial = _untrained_run(tmp_path, name, settings)
    rebuilt = random_init_backbone(run_dir).state_dict()
    assert rebuilt.keys() == initial.state_dict().keys()
    for key, tensor in initial.state_dict().items():
        assert torch.equal(rebuilt[key], tensor), key


def test_representation_check_of_a_run_and_the_cli(sample_shards: Path, tmp_path: Path, capsys) -> None:
    settings = {"backbone": "vit_small_patch16_224", "backbone_kwargs": TINY_VIT, "decoder_dim": 64, "decoder_depth": 1}
    run_dir, _ = _untrained_run(tmp_path, "mae", settings)
    result = representation_check(run_dir, sample_shards)
    assert (result["n"], result["identities"], result["k"]) == (61, 13, 1)
    assert result["chance"] == pytest.approx(majority_baseline(load_faces(sample_shards).labels))
    # an untrained run is its own random init
    assert result["knn_accuracy"] == result["knn_accuracy_random_init"] > result["chance"]

    metrics = tmp_path / "knn.json"
    assert main(["eval", "knn", str(run_dir), "--shards", str(sample_shards), "--metrics", str(metrics)]) == 0
    assert "1-NN identity accuracy" in capsys.readouterr().out
    assert json.loads(metrics.read_text())["mae"]["knn_accuracy"] == pytest.approx(result["knn_accuracy"], abs=1e-6)
    assert main(["eval", "knn", str(tmp_path / "nothing"), "--shards", str(sample_shards)]) == 2
    assert "not a finished pretrain run folder" in capsys.readouterr().err


def test_lafs_is_embedded_from_the_landmark_tokens_it_trains_on(faces: ShardFaces) -> None:
    torch.manual_seed(0)
    lafs = LAFS(backbone_kwargs={"depth": 1, "embed_dim": 96, "num_heads": 3}, out_dim=64, head_hidden_dim=64,
                head_bottleneck_dim=32, n_local=0, landmark_jitter=0.0).eval()  # fmt: skip
    points = torch.rand(4, 196, 2, generator=torch.Generator().manual_seed(0)) * 100 + 6
    with_mesh = ShardFaces(faces.images[:4], faces.labels[:4], points)
    images = (faces.images[:4].float() / 255 - 0.5) / 0.5  # LAFS's (0.5, 0.5) normalisation
    with torch.no_grad():
        trained_on = lafs.teacher.features(lafs.view_patches(images, points))
    embedded = embed_faces(lafs.export_backbone(), with_mesh, HALF)
    torch.testing.assert_close(torch.from_numpy(embedded), trained_on)
    with pytest.raises(ValueError, match="mesh=True"):
        embed_faces(lafs.export_backbone(), faces, HALF)
