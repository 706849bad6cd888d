"""Improved ResNets for face recognition: IR-50 / IR-100 (Duta et al. 2020, as insightface ``arcface_torch``'s
``iresnet.py``; ArcFace, Deng et al. CVPR 2019).

112×112 input -> 3×3 stem (64 channels, stride 1) + BN + PReLU -> 4 stages of :class:`IBasicBlock`
(64/128/256/512 channels, each starting with stride 2: 56, 28, 14, 7 px) -> BN -> flatten ->
Linear(512·7·7 -> 512) -> BatchNorm1d(512) with its scale frozen at 1 (insightface's ``features``).
Blocks per stage: IR-50 (3, 4, 14, 3), IR-100 (3, 13, 30, 3). Init as insightface: convolutions
N(0, 0.1²), BN weight 1 / bias 0. insightface's optional fp16 trunk and dropout (0 by default) are left out;
autocast covers the former.

Both are registered in :data:`facekit.nn.backbones.BACKBONES` (``"ir50"``, ``"ir100"``) next to the ViTs and
ResNet trunks, so a backbone name in a config or a run folder's ``backbone.json`` can be any of them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

_BN_EPS = 1e-5


def _conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)


class IBasicBlock(nn.Module):
    """BN -> Conv3×3 -> BN -> PReLU -> Conv3×3 (stride) -> BN, plus the (downsampled) input; no final activation.

    x: [B, C_in, H, W] -> [B, C_out, H/stride, W/stride].
    """

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes, eps=_BN_EPS)
        self.conv1 = _conv3x3(in_planes, planes)
        self.bn2 = nn.BatchNorm2d(planes, eps=_BN_EPS)
        self.prelu = nn.PReLU(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn3 = nn.BatchNorm2d(planes, eps=_BN_EPS)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes, eps=_BN_EPS)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        identity = x if self.downsample is None else self.downsample(x)
        return out + identity


class IResNet(nn.Module):
    """insightface's iResNet embedding network: x [B, 3, 112, 112] -> [B, embedding_size] (BN'd, not L2-normalised).

    layers: blocks per stage; state-dict keys follow insightface (``conv1``, ``bn1``, ``prelu``,
    ``layer1..4``, ``bn2``, ``fc``, ``features``), so its released ``.pth`` weights load directly.
    """

    def __init__(self, layers: Sequence[int], embedding_size: int = 512, img_size: int = 112) -> None:
        super().__init__()
        if len(layers) != 4:
            raise ValueError(f"iResNet needs 4 stage depths, got {list(layers)}")
        if img_size % 16:
            raise ValueError(f"img_size must be a multiple of 16 (4 stride-2 stages), got {img_size}")
        self.img_size = img_size
        self.out_dim = self.num_features = embedding_size
        self.conv1 = _conv3x3(3, 64)
        self.bn1 = nn.BatchNorm2d(64, eps=_BN_EPS)
        self.prelu = nn.PReLU(64)
        widths = (64, 128, 256, 512)
        in_planes = 64
        for i, (planes, depth) in enumerate(zip(widths, layers, strict=True), start=1):
            blocks = [IBasicBlock(in_planes, planes, stride=2)]
            blocks += [IBasicBlock(planes, planes) for _ in range(depth - 1)]
            self.add_module(f"layer{i}", nn.Sequential(*blocks))
            in_planes = planes
        self.bn2 = nn.BatchNorm2d(512, eps=_BN_EPS)
        side = img_size // 16
        self.fc = nn.Linear(512 * side * side, embedding_size)
        self.features = nn.BatchNorm1d(embedding_size, eps=_BN_EPS)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.1)
            elif isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        self.features.weight.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, 3, S, S] normalised to [−1, 1] -> embedding [B, embedding_size]."""
        x = self.prelu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = self.bn2(x).flatten(1)
        return self.features(self.fc(x))

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """timm's layer grouping (for layer-wise lr decay): stem = layer 0, then each block; the embedding
        head (``bn2``, ``fc``, ``features``) joins the last block, as a ViT's final norm does."""
        return {
            "stem": r"^conv1|^bn1|^prelu",
            "blocks": [(r"^layer(\d+)\.(\d+)", None), (r"^bn2|^fc|^features", (99999,))],
        }
