"""Downstream heads: output shapes, and each forward against the same computation written out by hand."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from facekit.nn.backbones import BACKBONES
from facekit.nn.downstream_heads import (
    BackboneFeatures,
    ClassifierHead,
    Features,
    ParsingDecoder,
    RegressionHead,
    make_head,
)

TINY_VIT = {"img_size": 32, "patch_size": 8, "depth": 1, "embed_dim": 32, "num_heads": 2}


def test_vit_features_are_its_pooled_token_and_its_patch_grid() -> None:
    torch.manual_seed(0)
    vit = BACKBONES.create("vit_small_patch16_224", **TINY_VIT).eval()
    x = torch.randn(2, 3, 32, 32)
    features = BackboneFeatures(vit)(x)
    out = vit.encode(x)
    assert features.pooled.shape == (2, 32) and features.grid.shape == (2, 32, 4, 4)
    torch.testing.assert_close(features.pooled, out.pooled)
    torch.testing.assert_close(features.grid[1, :, 2, 3], out.patches[1, 2 * 4 + 3])  # row-major tokens


def test_resnet_features_are_its_map_and_the_map_mean() -> None:
    trunk = BACKBONES.create("resnet18", channels=(8, 8, 16, 16)).eval()
    x = torch.randn(2, 3, 64, 64)
    features = BackboneFeatures(trunk)(x)
    assert features.grid.shape == (2, 16, 2, 2)
    torch.testing.assert_close(features.pooled, trunk.forward_features(x).mean(dim=(2, 3)))


def test_classifier_heads_linear_and_mlp() -> None:
    pooled = torch.randn(4, 16)
    linear = ClassifierHead(16, 7)
    torch.testing.assert_close(linear(Features(pooled, None)), pooled @ linear.net.weight.T + linear.net.bias)
    mlp = ClassifierHead(16, 7, hidden=8).eval()
    first, bn, _, last = mlp.net
    hidden = F.relu((pooled @ first.weight.T + first.bias - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps))
    hidden = hidden * bn.weight + bn.bias
    torch.testing.assert_close(mlp(Features(pooled, None)), hidden @ last.weight.T + last.bias)


def test_regression_reads_the_flattened_grid_or_the_pooled_feature() -> None:
    grid = torch.randn(3, 4, 2, 2)
    head = RegressionHead(16, (5, 2))
    out = head(Features(torch.randn(3, 4), grid))
    assert out.shape == (3, 5, 2)
    expected = (grid.reshape(3, 16) @ head.linear.weight.T + head.linear.bias).reshape(3, 5, 2)
    torch.testing.assert_close(out, expected)
    pose = make_head("pose", 3, 4)
    assert pose(Features(torch.randn(3, 4), None)).shape == (3, 3)


def test_parsing_decoder_matches_its_layers_and_upsamples() -> None:
    torch.manual_seed(0)
    decoder = ParsingDecoder(8, 6, 32, hidden=4).eval()
    grid = torch.randn(2, 8, 4, 4)
    out = decoder(Features(torch.randn(2, 8), grid))
    assert out.shape == (2, 6, 32, 32)

    def bn(x: torch.Tensor, layer: torch.nn.BatchNorm2d) -> torch.Tensor:
        scale = layer.weight / torch.sqrt(layer.running_var + layer.eps)
        return (x - layer.running_mean[:, None, None]) * scale[:, None, None] + layer.bias[:, None, None]

    b1, _, conv, b2, _, classify = decoder.block
    x = F.relu(bn(F.conv2d(grid, decoder.project.weight, decoder.project.bias), b1))
    x = F.relu(bn(F.conv2d(x, conv.weight, padding=1), b2))
    logits = F.conv2d(x, classify.weight, classify.bias)
    torch.testing.assert_close(out, F.interpolate(logits, size=(32, 32), mode="bilinear", align_corners=False))
    with pytest.raises(ValueError, match="feature map"):
        decoder(Features(torch.randn(2, 8), None))


def test_make_head_gives_each_task_its_head() -> None:
    assert make_head("parsing", 6, 16, image_size=32)(Features(torch.randn(2, 16), None)).shape == (2, 6, 32, 32)
    alignment = make_head("alignment", 68, 16, grid_shape=(8, 2, 2))
    assert alignment.linear.in_features == 32
    assert make_head("attributes", 40, 16)(Features(torch.randn(2, 16), None)).shape == (2, 40)
    with pytest.raises(ValueError, match="unknown downstream task"):
        make_head("age", 1, 16)
