"""Projection / prediction heads of the self-supervised seeds.

- :class:`MLPHead`: MoCo-v3 / MCF projector (768 -> 4096 -> 256, Linear without bias + BN + ReLU, last
  BN affine=False) and predictor (256 -> 4096 -> 256, no last BN); BYOL-style heads (``bias=True``).
- :class:`DINOHead`: DINO / LAFS head, MLP (GELU, no norm) -> L2-normalised bottleneck -> weight-normalised
  last layer whose norm is frozen to 1 (Caron et al. 2021).
"""

from __future__ import annotations

from itertools import pairwise
from typing import Literal

import torch
import torch.nn.functional as F
from timm.layers import trunc_normal_
from torch import nn
from torch.nn.utils.parametrizations import weight_norm


class MLPHead(nn.Sequential):
    """``num_layers`` Linear layers; between them ``norm`` + ``act``; after the last one ``last_norm``.

    in_dim -> hidden_dim (× num_layers − 1) -> out_dim. norm: "bn" (BatchNorm1d), "ln" (LayerNorm) or
    "none"; last_norm: "bn", "bn_noaffine" (MoCo-v3 / MCF projector) or "none". ``bias`` applies to every
    Linear. x: [B, in_dim] -> [B, out_dim] ("ln"/"none" heads also accept [..., in_dim]).
    Linears keep PyTorch's default init, as MoCo-v3 does.
    """

    def __init__(
        self,
        in_dim: int,
        hidden_dim: int,
        out_dim: int,
        num_layers: int = 2,
        norm: Literal["bn", "ln", "none"] = "bn",
        last_norm: Literal["bn", "bn_noaffine", "none"] = "none",
        bias: bool = False,
        act: type[nn.Module] = nn.ReLU,
    ) -> None:
        if num_layers < 1:
            raise ValueError(f"num_layers must be ≥ 1, got {num_layers}")
        dims = [in_dim] + [hidden_dim] * (num_layers - 1) + [out_dim]
        layers: list[nn.Module] = []
        for i, (d_in, d_out) in enumerate(pairwise(dims)):
            layers.append(nn.Linear(d_in, d_out, bias=bias))
            if i < num_layers - 1:
                layers += [_norm(norm, d_out), act()]
        if last_norm == "bn":
            layers.append(nn.BatchNorm1d(out_dim))
        elif last_norm == "bn_noaffine":
            layers.append(nn.BatchNorm1d(out_dim, affine=False))
        elif last_norm != "none":
            raise ValueError(f"last_norm must be 'bn', 'bn_noaffine' or 'none', got {last_norm!r}")
        super().__init__(*layers)


def _norm(kind: str, dim: int) -> nn.Module:
    if kind == "bn":
        return nn.BatchNorm1d(dim)
    if kind == "ln":
        return nn.LayerNorm(dim)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"norm must be 'bn', 'ln' or 'none', got {kind!r}")


class DINOHead(nn.Module):
    """DINO's projection head.

    x: [B, in_dim] -> MLP (in -> hidden (-> hidden)* -> bottleneck, GELU, no norm, trunc-normal 0.02 init)
    -> L2 normalise -> ``last_layer`` = weight-normalised Linear(bottleneck -> out_dim, no bias) -> [B, out_dim].
    The last layer's norm (``parametrizations.weight.original0``, [out_dim, 1]) is set to 1 and, with
    ``norm_last_layer``, frozen, so the logits are cosine similarities. LAFS: 768 -> 2048 -> 2048 -> 256 ->
    100,000. Freezing the whole last layer during the first epoch is left to the method.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        num_layers: int = 3,
        norm_last_layer: bool = True,
    ) -> None:
        super().__init__()
        self.mlp = MLPHead(in_dim, hidden_dim, bottleneck_dim, num_layers, norm="none", bias=True, act=nn.GELU)
        for m in self.mlp.modules():
            if isinstance(m, nn.Linear):
                trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        self.last_layer = weight_norm(nn.Linear(bottleneck_dim, out_dim, bias=False))
        magnitude = self.last_layer.parametrizations.weight.original0
        with torch.no_grad():
            magnitude.fill_(1.0)
        magnitude.requires_grad_(not norm_last_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last_layer(F.normalize(self.mlp(x), dim=-1))
