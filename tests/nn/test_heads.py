"""MoCo-v3 / MCF MLP heads and DINO's weight-normalised head."""

from __future__ import annotations

import torch
from torch import nn

from facekit.nn.heads import DINOHead, MLPHead


def test_mcf_projector_and_predictor_layout() -> None:
    projector = MLPHead(768, 4096, 256, last_norm="bn_noaffine")
    assert [type(m) for m in projector] == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear, nn.BatchNorm1d]
    assert projector[0].bias is None and not projector[-1].affine
    assert sum(p.numel() for p in projector.parameters()) == 768 * 4096 + 2 * 4096 + 4096 * 256
    predictor = MLPHead(256, 4096, 256)
    assert sum(p.numel() for p in predictor.parameters()) == 256 * 4096 + 2 * 4096 + 4096 * 256
    assert projector(torch.randn(4, 768)).shape == (4, 256)


def test_mlp_head_three_layers_layer_norm() -> None:
    head = MLPHead(8, 16, 4, num_layers=3, norm="ln", bias=True, act=nn.GELU)
    assert [type(m) for m in head] == [nn.Linear, nn.LayerNorm, nn.GELU, nn.Linear, nn.LayerNorm, nn.GELU, nn.Linear]
    assert head(torch.randn(2, 5, 8)).shape == (2, 5, 4)


def test_dino_head_last_layer_norm_is_frozen_at_one() -> None:
    torch.manual_seed(0)
    head = DINOHead(16, 50, hidden_dim=32, bottleneck_dim=8)
    weight = head.last_layer.parametrizations.weight
    torch.testing.assert_close(head.last_layer.weight.norm(dim=1), torch.ones(50))
    out = head(torch.randn(4, 16))
    assert out.shape == (4, 50) and out.abs().max() <= 1 + 1e-5  # cosine logits
    out.sum().backward()
    assert not weight.original0.requires_grad and weight.original0.grad is None
    assert weight.original1.grad is not None and head.mlp[0].weight.grad is not None


def test_dino_head_norm_trainable_when_asked() -> None:
    head = DINOHead(16, 50, hidden_dim=32, bottleneck_dim=8, norm_last_layer=False)
    head(torch.randn(4, 16)).sum().backward()
    assert head.last_layer.parametrizations.weight.original0.grad is not None
