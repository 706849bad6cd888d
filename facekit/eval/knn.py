"""A representation check on real faces: leave-one-out kNN identity accuracy of a pre-trained backbone.

:func:`representation_check` embeds every face of the packed shards with a pre-training run's exported
backbone (``backbone.json`` + ``backbone.safetensors``, see :func:`facekit.nn.backbones.load`)
and with the same backbone at its random initialisation (same spec, same seed as the run), and scores both
with :func:`knn_identity_accuracy`: each face is classified by its ``k`` nearest other faces (cosine
distance) and the prediction compared with its identity. A method whose learned embedding does not beat
its own random init has learned nothing identity-related (or is embedded the wrong way).

Each backbone is embedded the way its method trains it: with the input normalisation its ``backbone.json``
records (its spec's mean / std), and its natural feature: a ViT's pooled output (cls token or mean of patch
tokens), FRA's ResNet trunk's averaged map, and for LAFS (a :class:`~facekit.nn.landmark_vit.LandmarkViT`)
the cls token of the 8 × 8 patches cut at the face's 196 landmarks (the tokens LAFS trains on), not at a
regular grid: the shards' mesh points for ``landmarks="mesh"``, its landmark network's for ``"learned"``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from sklearn.neighbors import NearestNeighbors
from torch import nn

from facekit.data.augment import normalize_batch
from facekit.data.dataset import FaceShardDataset
from facekit.data.ops.landmarks import mesh_196
from facekit.data.record import FaceRecord
from facekit.nn import backbones
from facekit.nn.backbones import BackboneSpec, Stats
from facekit.nn.landmark_vit import needs_landmarks


def knn_identity_accuracy(
    embeddings: np.ndarray | torch.Tensor, labels: Sequence[int] | np.ndarray, k: int = 1
) -> float:
    """Leave-one-out kNN accuracy: the share of rows whose ``k`` nearest *other* rows (cosine distance) vote
    for their own label.

    embeddings: ``[N, D]`` (any scale; rows are compared by angle); labels: ``[N]`` ints. A row is never its
    own neighbour, also when other rows duplicate it. The vote is the most frequent label among the ``k``
    neighbours; a tie goes to the tied label with the nearest neighbour.
    """
    x = np.asarray(embeddings.detach().cpu() if isinstance(embeddings, torch.Tensor) else embeddings, np.float64)
    y = np.asarray(labels)
    if x.ndim != 2 or y.shape != (x.shape[0],):
        raise ValueError(f"need embeddings [N, D] and labels [N], got {x.shape} and {y.shape}")
    if not 1 <= k < x.shape[0]:
        raise ValueError(f"k must be in 1..N-1 = {x.shape[0] - 1}, got {k}")
    if not np.isfinite(x).all() or (np.linalg.norm(x, axis=1) == 0).any():
        raise ValueError("embeddings must be finite and non-zero (cosine distance is undefined otherwise)")
    # kneighbors() without a query excludes each point itself (by index, so duplicates stay neighbours)
    neighbours = NearestNeighbors(n_neighbors=k, metric="cosine").fit(x).kneighbors(return_distance=False)
    votes = y[neighbours]  # [N, k], nearest first
    counts = (votes[:, :, None] == votes[:, None, :]).sum(-1)  # [N, k]: votes for each neighbour's label
    predicted = votes[np.arange(len(y)), counts.argmax(1)]  # argmax takes the first (nearest) of a tie
    return float((predicted == y).mean())


def majority_baseline(labels: Sequence[int] | np.ndarray) -> float:
    """Accuracy of always answering the most frequent identity: ``max_c count(c) / N``."""
    counts = np.unique(np.asarray(labels), return_counts=True)[1]
    return float(counts.max() / counts.sum())


@dataclass(frozen=True)
class ShardFaces:
    """Every face of a shard folder: images uint8 ``[N, 3, H, W]``, labels ``[N]``, and with ``mesh`` the
    196 LAFS mesh landmarks ``[N, 196, 2]`` (crop pixels), else None."""

    images: torch.Tensor
    labels: np.ndarray
    mesh: torch.Tensor | None


class _ImageAndMesh:
    """Dataset transform: (rgb, record) -> ``{"image": uint8 [3, H, W], "mesh": float32 [196, 2]}``."""

    takes_record = True

    def __call__(self, rgb: np.ndarray, record: FaceRecord) -> dict[str, torch.Tensor]:
        image = torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))
        return {"image": image, "mesh": torch.from_numpy(mesh_196(record))}


def load_faces(shards: Path | str, *, mesh: bool = False) -> ShardFaces:
    """Read every face (and identity) of the packed shards at ``shards``; ``mesh``: also the LAFS landmarks."""
    dataset = FaceShardDataset(Path(shards), transform=_ImageAndMesh() if mesh else None)
    items = [dataset[i] for i in range(len(dataset))]
    if not items:
        raise ValueError(f"{shards}: no faces")
    return ShardFaces(
        images=torch.stack([item["image"] for item in items]),
        labels=np.array([item["identity"] for item in items]),
        mesh=torch.stack([item["mesh"] for item in items]) if mesh else None,
    )


def run_spec(run_dir: Path | str) -> tuple[BackboneSpec, int]:
    """(backbone spec, training seed from ``train_config.json``) of a pre-training run."""
    run_dir = Path(run_dir)
    config_path = run_dir / "train_config.json"
    for path in (run_dir / backbones.SPEC_FILE, config_path):
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: {run_dir} is not a finished pretrain run folder")
    return backbones.read(run_dir), json.loads(config_path.read_text())["seed"]


def random_init_backbone(run_dir: Path | str) -> nn.Module:
    """The run's backbone as it was before training: built from its spec right after ``manual_seed(seed)``,
    as the ``pretrain`` stage (:mod:`facekit.stages.pretrain`) builds the method (whose backbone is built
    first)."""
    spec, seed = run_spec(run_dir)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return backbones.build(spec)


@torch.inference_mode()
def embed_faces(
    backbone: nn.Module,
    faces: ShardFaces,
    normalization: tuple[Stats, Stats],
    *,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
) -> np.ndarray:
    """Embed ``faces`` with ``backbone`` -> float32 ``[N, D]`` (not normalised).

    Inputs are ``(pixels / 255 − mean) / std`` with ``normalization = (mean, std)``; the backbone runs in eval
    mode (BatchNorm running statistics, no drop-path). A LAFS backbone of the ``"mesh"`` source is given the
    faces' mesh landmarks (see the module docstring).
    """
    mesh = needs_landmarks(backbone)
    if mesh and faces.mesh is None:
        raise ValueError("this LAFS backbone takes mesh landmarks: load the faces with load_faces(shards, mesh=True)")
    mean, std = normalization
    backbone = backbone.to(device).eval()
    out = []
    for start in range(0, len(faces.labels), batch_size):
        x = normalize_batch(faces.images[start : start + batch_size].to(device), mean, std)
        if mesh:
            out.append(backbone(x, faces.mesh[start : start + batch_size].to(device)).float().cpu())
        else:
            out.append(backbone(x).float().cpu())
    return torch.cat(out).numpy()


def representation_check(
    run_dir: Path, shards: Path, *, k: int = 1, device: str | torch.device | None = None
) -> dict[str, float]:
    """kNN identity accuracy of a pre-training run's backbone on the faces of ``shards``, learned vs random init.

    Returns ``{"knn_accuracy", "knn_accuracy_random_init", "chance" (majority baseline), "n" (faces),
    "identities", "k"}``.
    """
    spec, _ = run_spec(run_dir)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    trained = backbones.load(run_dir)
    faces = load_faces(shards, mesh=needs_landmarks(trained))
    scores = {}
    for name, backbone in (("knn_accuracy", trained), ("knn_accuracy_random_init", random_init_backbone(run_dir))):
        embedded = embed_faces(backbone, faces, (spec.mean, spec.std), device=device)
        scores[name] = knn_identity_accuracy(embedded, faces.labels, k)
    return {
        **scores,
        "chance": majority_baseline(faces.labels),
        "n": float(len(faces.labels)),
        "identities": float(len(np.unique(faces.labels))),
        "k": float(k),
    }
