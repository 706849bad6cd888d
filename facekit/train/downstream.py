"""Downstream protocols: a linear probe (frozen backbone) or full fine-tuning of a head on any facekit backbone.

A :class:`TaskData` holds one task's faces at the backbone's input size (uint8 RGB), targets and splits. The
protocol (:func:`run_protocol`) trains :func:`~facekit.nn.downstream_heads.make_head`'s head on the ``train``
items (a seeded ``few_shot`` fraction of them) and predicts the ``test`` items, before (the untrained head) and
after training; the stage scores the predictions with :mod:`facekit.eval.downstream_metrics`.

- ``linear``: the backbone is frozen in eval mode (no gradient, BatchNorm statistics fixed); its features are
  computed once, standardised by the train items' statistics (:func:`standardise`) and the head trained on
  them. An embedding-only model (the ONNX reference) is a :class:`FrozenFeatures` and can only be probed so.
- ``finetune``: backbone and head trained end to end (AdamW, the backbone at ``backbone_lr_scale`` × lr).

Losses: cross-entropy (expression, parsing per pixel), binary cross-entropy per attribute, smooth L1 on points in
units of the image side (alignment) and on angles / 90° (pose). AdamW with a cosine schedule, no augmentation:
a CPU-sized recipe, not the papers' (their 25-100 epochs of fine-tuning with RandAugment at 224 px). Everything
random (head init, few-shot subset, batch order) follows ``seed``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from facekit.data.augment import normalize_batch
from facekit.nn.backbones import Stats
from facekit.nn.downstream_heads import POSE_SCALE, BackboneFeatures, Features, RegressionHead, make_head

Protocol = Literal["linear", "finetune"]
PROTOCOLS: tuple[Protocol, ...] = ("linear", "finetune")
#: The head's learning rate by task: the regression heads read the flattened grid (thousands of inputs) and
#: overfit the medium set at 1e-3 (alignment NME above the mean shape's), not at 1e-4; the parsing decoder
#: learns little in 30 epochs at 1e-3 (medium set, linear probe: mean F1 0.62 at 1e-3, 0.73 at 1e-2).
DEFAULT_LR = {"expression": 1e-3, "attributes": 1e-3, "parsing": 1e-2, "alignment": 1e-4, "pose": 1e-4}


@dataclass(frozen=True)
class TaskData:
    """One task's faces. images: uint8 ``[N, S, S, 3]`` RGB; targets: ``[N, ...]`` (expression ``[N]`` int64,
    attributes ``[N, A]`` {0, 1}, alignment ``[N, K, 2]`` pixels, pose ``[N, 3]`` degrees, parsing ``[N, S, S]``
    class ids); split: ``[N]`` of "train" / "val" / "test"; num_outputs: classes, attributes, K or 3;
    landmarks: ``[N, 196, 2]`` mesh points for a LAFS backbone of the mesh source, else None."""

    task: str
    images: np.ndarray
    targets: np.ndarray
    split: np.ndarray
    num_outputs: int
    landmarks: np.ndarray | None = None


@dataclass(frozen=True)
class ProtocolConfig:
    """protocol: ``linear`` or ``finetune``; lr: the head's (None: :data:`DEFAULT_LR` of the task); few_shot: the
    fraction of the train items used (0 < f ≤ 1); hidden: the expression MLP's width (0 = linear) and the parsing
    decoder's (0 = 64)."""

    protocol: Protocol = "linear"
    epochs: int = 30
    batch_size: int = 64
    lr: float | None = None
    weight_decay: float = 1e-4
    backbone_lr_scale: float = 0.1
    few_shot: float = 1.0
    hidden: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {', '.join(PROTOCOLS)}, got {self.protocol!r}")
        if not 0.0 < self.few_shot <= 1.0:
            raise ValueError(f"few_shot must be a fraction in (0, 1], got {self.few_shot}")
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")


@dataclass
class ProtocolResult:
    """Test-split predictions of the trained head (``predictions``) and of the same head untrained
    (``untrained``), in the targets' units; ``test_index``: their rows of the data; ``train_index``: the rows
    trained on; ``losses``: the mean training loss of each epoch."""

    predictions: np.ndarray
    untrained: np.ndarray
    test_index: np.ndarray
    train_index: np.ndarray
    losses: list[float] = field(default_factory=list)


class FrozenFeatures:
    """An embedding-only model as a frozen feature source: ``embed(images uint8 [N, S, S, 3]) -> [N, D]``."""

    def __init__(self, embed: Callable[[np.ndarray], np.ndarray], dim: int) -> None:
        self.embed, self.dim = embed, dim


def few_shot_indices(train_index: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """A seeded ``fraction`` of ``train_index`` (at least one item), sorted."""
    count = max(1, math.ceil(fraction * len(train_index)))
    chosen = np.random.default_rng(seed).permutation(len(train_index))[:count]
    return np.sort(np.asarray(train_index)[chosen])


def loss_fn(task: str, output: torch.Tensor, target: torch.Tensor, image_size: int) -> torch.Tensor:
    """The training loss of a head's ``output`` against the targets' batch (units: module docstring)."""
    if task in ("expression", "parsing"):
        return F.cross_entropy(output, target.long())
    if task == "attributes":
        return F.binary_cross_entropy_with_logits(output, target.float())
    scale = image_size if task == "alignment" else POSE_SCALE
    return F.smooth_l1_loss(output, target.float() / scale, beta=0.02)


def decode(task: str, output: torch.Tensor, image_size: int) -> np.ndarray:
    """A head's output -> predictions in the targets' units and dtype."""
    if task == "expression":
        return output.argmax(1).numpy().astype(np.int64)
    if task == "parsing":
        return output.argmax(1).numpy().astype(np.uint8)
    if task == "attributes":
        return (output > 0).numpy().astype(np.int8)
    scale = image_size if task == "alignment" else POSE_SCALE
    return (output * scale).numpy().astype(np.float32)


def _images(data: TaskData, rows: np.ndarray, mean: Stats, std: Stats) -> torch.Tensor:
    x = torch.from_numpy(np.ascontiguousarray(data.images[rows].transpose(0, 3, 1, 2)))
    return normalize_batch(x, mean, std)


def _landmarks(data: TaskData, rows: np.ndarray) -> torch.Tensor | None:
    return None if data.landmarks is None else torch.from_numpy(data.landmarks[rows]).float()


@torch.no_grad()
def extract_features(
    encoder: BackboneFeatures | FrozenFeatures,
    data: TaskData,
    rows: np.ndarray,
    normalization: tuple[Stats, Stats],
    batch_size: int = 64,
) -> Features:
    """Frozen features of ``data``'s ``rows``: pooled ``[n, D]`` and grid ``[n, C, h, w]`` (None without one)."""
    if isinstance(encoder, FrozenFeatures):
        pooled = [encoder.embed(data.images[rows[i : i + batch_size]]) for i in range(0, len(rows), batch_size)]
        return Features(torch.from_numpy(np.concatenate(pooled).astype(np.float32)), None)
    encoder.eval()
    parts = [
        encoder(_images(data, rows[i : i + batch_size], *normalization), _landmarks(data, rows[i : i + batch_size]))
        for i in range(0, len(rows), batch_size)
    ]
    grid = torch.cat([p.grid for p in parts]) if parts[0].grid is not None else None
    return Features(torch.cat([p.pooled for p in parts]), grid)


def standardise(train: Features, test: Features) -> tuple[Features, Features]:
    """Both feature sets shifted and scaled by the train features' per-channel mean and std (MAE's linear probe:
    a BatchNorm without affine before the linear layer, frozen after training)."""

    def stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        dims = [0, *range(2, x.ndim)]
        return x.mean(dims, keepdim=True), x.std(dims, keepdim=True).clamp_min(1e-6)

    pooled_mean, pooled_std = stats(train.pooled)
    out = []
    for f in (train, test):
        grid = None
        if f.grid is not None:
            grid_mean, grid_std = stats(train.grid)
            grid = (f.grid - grid_mean) / grid_std
        out.append(Features((f.pooled - pooled_mean) / pooled_std, grid))
    return out[0], out[1]


def _head_for(data: TaskData, config: ProtocolConfig, probe: Features, train_index: np.ndarray) -> nn.Module:
    """The task's head; a regression head starts at the train targets' mean (zero weights, the mean as bias),
    so that training refines the mean shape / pose instead of first finding it."""
    grid_shape = tuple(probe.grid.shape[1:]) if probe.grid is not None else None
    size = data.images.shape[1]
    head = make_head(
        data.task, data.num_outputs, probe.pooled.shape[1], grid_shape=grid_shape, image_size=size, hidden=config.hidden
    )
    if isinstance(head, RegressionHead):
        scale = size if data.task == "alignment" else POSE_SCALE
        mean = torch.from_numpy(data.targets[train_index].astype(np.float32).mean(0) / scale)
        with torch.no_grad():
            head.linear.weight.zero_()
            head.linear.bias.copy_(mean.reshape(-1))
    return head


def _subset(features: Features, index: torch.Tensor) -> Features:
    return Features(features.pooled[index], None if features.grid is None else features.grid[index])


@torch.no_grad()
def _predict_frozen(head: nn.Module, task: str, features: Features, size: int, batch_size: int) -> np.ndarray:
    head.eval()
    n = features.pooled.shape[0]
    outs = [head(_subset(features, torch.arange(i, min(i + batch_size, n)))) for i in range(0, n, batch_size)]
    return decode(task, torch.cat(outs), size)


def _cosine(optimizer: torch.optim.Optimizer, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * step / total_steps)))


def run_protocol(
    data: TaskData,
    encoder: BackboneFeatures | FrozenFeatures,
    normalization: tuple[Stats, Stats],
    config: ProtocolConfig,
    *,
    progress: bool = False,
) -> ProtocolResult:
    """Train a head on ``data``'s train items with ``encoder`` frozen (``linear``) or trained (``finetune``) and
    predict its test items (see the module docstring). ``normalization``: the backbone's input (mean, std)."""
    train_all = np.flatnonzero(data.split == "train")
    test_index = np.flatnonzero(data.split == "test")
    if not len(train_all) or not len(test_index):
        raise ValueError(f"{data.task}: needs train and test items, got {len(train_all)} and {len(test_index)}")
    if config.protocol == "finetune" and isinstance(encoder, FrozenFeatures):
        raise ValueError("an embedding-only model (the ONNX reference) can only be linear-probed")
    train_index = few_shot_indices(train_all, config.few_shot, config.seed)
    torch.manual_seed(config.seed)
    size = data.images.shape[1]
    if config.protocol == "linear":
        train_features = extract_features(encoder, data, train_index, normalization)
        test_features = extract_features(encoder, data, test_index, normalization)
        train_features, test_features = standardise(train_features, test_features)
        head = _head_for(data, config, train_features, train_index)
        untrained = _predict_frozen(head, data.task, test_features, size, config.batch_size)
        losses = _train(head, None, data, train_index, config, normalization, train_features, progress)
        predictions = _predict_frozen(head, data.task, test_features, size, config.batch_size)
    else:
        assert isinstance(encoder, BackboneFeatures)
        probe = extract_features(encoder, data, train_index[:2], normalization)
        head = _head_for(data, config, probe, train_index)
        untrained = _predict_live(encoder, head, data, test_index, normalization, config.batch_size)
        losses = _train(head, encoder, data, train_index, config, normalization, None, progress)
        predictions = _predict_live(encoder, head, data, test_index, normalization, config.batch_size)
    return ProtocolResult(predictions, untrained, test_index, train_index, losses)


@torch.no_grad()
def _predict_live(
    encoder: BackboneFeatures,
    head: nn.Module,
    data: TaskData,
    rows: np.ndarray,
    normalization: tuple[Stats, Stats],
    batch_size: int,
) -> np.ndarray:
    encoder.eval()
    head.eval()
    features = extract_features(encoder, data, rows, normalization, batch_size)
    return _predict_frozen(head, data.task, features, data.images.shape[1], batch_size)


def _train(
    head: nn.Module,
    encoder: BackboneFeatures | None,
    data: TaskData,
    train_index: np.ndarray,
    config: ProtocolConfig,
    normalization: tuple[Stats, Stats],
    frozen: Features | None,
    progress: bool,
) -> list[float]:
    """Train ``head`` (and ``encoder`` when given) for ``config.epochs``; returns the mean loss per epoch.
    ``frozen``: the train items' precomputed features (linear probe)."""
    lr = config.lr or DEFAULT_LR[data.task]
    groups = [{"params": list(head.parameters()), "lr": lr}]
    if encoder is not None:
        trainable = [p for p in encoder.parameters() if p.requires_grad]
        groups.append({"params": trainable, "lr": lr * config.backbone_lr_scale})
    optimizer = torch.optim.AdamW(groups, weight_decay=config.weight_decay)
    steps_per_epoch = math.ceil(len(train_index) / config.batch_size)
    schedule = _cosine(optimizer, config.epochs * steps_per_epoch)
    generator = torch.Generator().manual_seed(config.seed)
    targets = torch.from_numpy(np.ascontiguousarray(data.targets[train_index]))
    size = data.images.shape[1]
    losses = []
    epochs = tqdm(range(config.epochs), desc=f"{data.task} {config.protocol}", unit="epoch", disable=not progress)
    for _ in epochs:
        head.train()
        if encoder is not None:
            encoder.train()
        total = 0.0
        order = torch.randperm(len(train_index), generator=generator)
        for start in range(0, len(order), config.batch_size):
            batch = order[start : start + config.batch_size]
            if len(batch) < 2 and len(order) >= 2:  # BatchNorm needs two items: fold a lone one into the next epoch
                continue
            if frozen is not None:
                features = _subset(frozen, batch)
            else:
                rows = train_index[batch.numpy()]
                features = encoder(_images(data, rows, *normalization), _landmarks(data, rows))
            loss = loss_fn(data.task, head(features), targets[batch], size)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total += float(loss.detach()) * len(batch)
        losses.append(total / len(order))
        epochs.set_postfix(loss=f"{losses[-1]:.4f}")
    return losses
