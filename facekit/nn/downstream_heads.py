"""Downstream heads on a facekit backbone, small and standard as the papers use them, and the features they read.

:class:`BackboneFeatures` turns any facekit backbone into two features: ``pooled`` ``[B, D]`` (a ViT's pooled
token, a ResNet's averaged map, an iResNet's embedding, a LAFS network's output) and, where the network has one,
a spatial ``grid`` ``[B, C, h, w]`` (a ViT's patch tokens on their grid, a ResNet trunk's last map).

Heads (:func:`make_head`):

- expression: :class:`ClassifierHead`, linear, or an MLP with ``hidden > 0`` -> logits ``[B, classes]``;
- attributes: :class:`ClassifierHead` (linear, multi-label) -> logits ``[B, A]`` (one sigmoid each);
- alignment: :class:`RegressionHead` -> ``[B, K, 2]`` points in units of the image side (0..1), a linear map of
  the flattened grid (the pooled feature where there is none). Regression, not heatmaps: every backbone has a
  feature to regress from (the embedding-only reference model too, which has no map), so one head compares them
  all and its linear probe stays linear; heatmaps need a map decoded back to full resolution, which is what
  :class:`ParsingDecoder` does for parsing. The flattened grid keeps where each token is, which a pooled
  feature averages away. (FaRL's alignment uses heatmaps; this head is the simpler regression baseline.)
- pose: :class:`RegressionHead` -> ``[B, 3]`` (yaw, pitch, roll) / :data:`POSE_SCALE` degrees;
- parsing: :class:`ParsingDecoder` over the grid (1×1 conv to ``hidden``, a 3×3 conv block, a 1×1 classifier,
  bilinear upsampling to the image) -> logits ``[B, classes, S, S]``. A backbone without a grid gets its
  pooled feature mapped linearly to a ``hidden`` × 7 × 7 map first (a weak, global baseline).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from facekit.nn.landmark_vit import LandmarkViT
from facekit.nn.resnet import ResNetTrunk
from facekit.nn.vit import ViT

#: Degrees per unit of the pose head's output (targets are divided by it for training).
POSE_SCALE = 90.0
#: Side of the map a grid-less backbone's pooled feature is spread onto for parsing.
GLOBAL_GRID = 7


@dataclass(frozen=True)
class Features:
    """What a backbone gives a head: ``pooled`` ``[B, D]``, ``grid`` ``[B, C, h, w]`` or None."""

    pooled: torch.Tensor
    grid: torch.Tensor | None

    def flat(self) -> torch.Tensor:
        """``[B, C·h·w]`` the grid flattened (where the spatial layout matters: landmarks, pose), else pooled."""
        return self.pooled if self.grid is None else self.grid.flatten(1)


class BackboneFeatures(nn.Module):
    """``forward(x [B, 3, S, S] normalised, landmarks [B, 196, 2] | None) -> Features`` of a facekit backbone.

    ViT: pooled = ``encode(x).pooled``, grid = patch tokens ``[B, D, S/p, S/p]``; ResNet trunk: grid = the last
    map, pooled = its mean; anything else (iResNet, LAFS, other modules): pooled = ``forward`` output, no grid.
    ``landmarks`` go to a LAFS network of the ``"mesh"`` source only.
    """

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone

    @property
    def has_grid(self) -> bool:
        return isinstance(self.backbone, ViT | ResNetTrunk)

    def forward(self, x: torch.Tensor, landmarks: torch.Tensor | None = None) -> Features:
        net = self.backbone
        if isinstance(net, ViT):
            out = net.encode(x)
            side = net.grid_size
            grid = out.patches.transpose(1, 2).reshape(x.shape[0], -1, side, side)
            return Features(out.pooled, grid)
        if isinstance(net, ResNetTrunk):
            grid = net.forward_features(x)
            return Features(grid.mean(dim=(2, 3)), grid)
        if isinstance(net, LandmarkViT) and net.needs_landmarks:
            return Features(net(x, landmarks), None)
        return Features(net(x), None)


class ClassifierHead(nn.Module):
    """``[B, D] -> [B, classes]`` logits: ``Linear(D, classes)``, or with ``hidden > 0``
    ``Linear(D, hidden) -> BatchNorm1d -> ReLU -> Linear(hidden, classes)`` (FaRL's / SwinFace's MLP)."""

    def __init__(self, in_dim: int, num_classes: int, hidden: int = 0) -> None:
        super().__init__()
        if hidden:
            self.net: nn.Module = nn.Sequential(
                nn.Linear(in_dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True), nn.Linear(hidden, num_classes)
            )
        else:
            self.net = nn.Linear(in_dim, num_classes)

    def forward(self, features: Features) -> torch.Tensor:
        return self.net(features.pooled)


class RegressionHead(nn.Module):
    """``[B, F] -> [B, *shape]``: ``Linear(F, prod(shape))`` on :meth:`Features.flat` (F = C·h·w with a grid,
    else D; landmarks: shape ``(K, 2)``; pose: ``(3,)``)."""

    def __init__(self, in_dim: int, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.shape = shape
        self.linear = nn.Linear(in_dim, math.prod(shape))

    def forward(self, features: Features) -> torch.Tensor:
        return self.linear(features.flat()).reshape(-1, *self.shape)


class ParsingDecoder(nn.Module):
    """Grid ``[B, C, h, w]`` (or, with ``in_grid=False``, the pooled ``[B, C]``) -> logits ``[B, classes, S, S]``.

    ``Conv1x1(C, hidden) -> BN -> ReLU -> Conv3x3(hidden, hidden) -> BN -> ReLU -> Conv1x1(hidden, classes)``, then
    bilinear upsampling to ``out_size``; without a grid, ``Linear(C, hidden · 7 · 7)`` makes the first map.
    """

    def __init__(self, in_dim: int, num_classes: int, out_size: int, hidden: int = 64, in_grid: bool = True) -> None:
        super().__init__()
        self.out_size, self.in_grid, self.hidden = out_size, in_grid, hidden
        self.project: nn.Module = (
            nn.Conv2d(in_dim, hidden, 1) if in_grid else nn.Linear(in_dim, hidden * GLOBAL_GRID * GLOBAL_GRID)
        )
        self.block = nn.Sequential(
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, 3, padding=1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, num_classes, 1),
        )

    def forward(self, features: Features) -> torch.Tensor:
        if self.in_grid:
            if features.grid is None:
                raise ValueError("this parsing decoder reads a feature map; the backbone gave none")
            x = self.project(features.grid)
        else:
            x = self.project(features.pooled).reshape(-1, self.hidden, GLOBAL_GRID, GLOBAL_GRID)
        logits = self.block(x)
        return F.interpolate(logits, size=(self.out_size, self.out_size), mode="bilinear", align_corners=False)


def make_head(
    task: str,
    num_outputs: int,
    pooled_dim: int,
    *,
    grid_shape: tuple[int, int, int] | None = None,
    image_size: int = 112,
    hidden: int = 0,
) -> nn.Module:
    """The head of ``task`` (``num_outputs``: classes, attributes, landmarks K, or 3 angles; ``grid_shape``: the
    grid's (C, h, w), None without a grid; ``hidden``: the expression MLP's width, 0 = linear; the parsing
    decoder's width, 0 = 64)."""
    flat_dim = math.prod(grid_shape) if grid_shape else pooled_dim
    if task in ("expression", "attributes"):
        return ClassifierHead(pooled_dim, num_outputs, hidden if task == "expression" else 0)
    if task == "alignment":
        return RegressionHead(flat_dim, (num_outputs, 2))
    if task == "pose":
        return RegressionHead(flat_dim, (num_outputs,))
    if task == "parsing":
        in_dim = grid_shape[0] if grid_shape else pooled_dim
        return ParsingDecoder(in_dim, num_outputs, image_size, hidden or 64, in_grid=grid_shape is not None)
    raise ValueError(f"unknown downstream task {task!r}")
