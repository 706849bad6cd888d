"""ResNet trunks (He et al., CVPR 2016) without average pooling or classifier: FRA's backbone.

FRA (and LEWEL, which it builds on) trains a ResNet-50 whose last stage is kept as a feature map:
``[B, 3, 224, 224] -> [B, 2048, 7, 7]``. The trunk is timm's ResNet (random init, ``pretrained=False``)
with its pooling and classifier dropped. Its state-dict keys (``conv1``, ``bn1``, ``layer1`` .. ``layer4``,
``downsample.0/1``) are torchvision's as well as timm's, so a torchvision ResNet checkpoint loads with
``strict=False`` reporting only ``fc.*`` as unexpected.

Init follows torchvision's default (Kaiming-normal fan-out convs, BN γ = 1, β = 0, no zero-init of the
last BN of each block: ``zero_init_last=False`` unless overridden). timm keyword arguments pass through,
e.g. ``channels=(16, 32, 64, 128)`` for a narrow trunk in tests and smoke runs. ``resnet18/34/50`` are
registered in :data:`facekit.nn.backbones.BACKBONES`.
"""

from __future__ import annotations

from typing import Any

import timm
import torch
from torch import nn


class ResNetTrunk(nn.Module):
    """A timm ResNet up to ``layer4``: ``forward_features`` gives the feature map, ``forward`` its mean.

    name: a timm ResNet (``"resnet18"``, ``"resnet50"`` ...); kwargs: timm ``ResNet`` overrides.
    ``num_features`` (= ``out_dim``, the embedding size): the output channels (2048 for ResNet-50); the map
    is ``H / 32 × W / 32``.
    """

    def __init__(self, name: str, **kwargs: Any) -> None:
        super().__init__()
        options = {"zero_init_last": False, **kwargs, "pretrained": False, "num_classes": 0, "global_pool": ""}
        net = timm.create_model(name, **options)
        self.conv1, self.bn1, self.act1, self.maxpool = net.conv1, net.bn1, net.act1, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        self.num_features: int = net.num_features
        self.out_dim = self.num_features  # the embedding size of ``forward``

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """x: ``[B, 3, H, W]`` -> ``[B, C, H/32, W/32]`` (``[B, 2048, 7, 7]`` for ResNet-50 at 224)."""
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"ResNetTrunk expects images [B, 3, H, W], got {tuple(x.shape)}")
        x = self.maxpool(self.act1(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: ``[B, 3, H, W]`` -> ``[B, C]``: the globally averaged feature map (FRA's inference embedding)."""
        return self.forward_features(x).mean(dim=(2, 3))
