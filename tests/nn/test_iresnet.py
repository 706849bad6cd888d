"""iResNet (IR-50 / IR-100): shapes, parameter counts against a count from the architecture, registry, grads."""

from __future__ import annotations

import pytest
import torch

from facekit.nn.backbones import BACKBONES, ir50
from facekit.nn.iresnet import IBasicBlock, IResNet
from facekit.train.optim import param_groups


def expected_params(layers: tuple[int, ...]) -> int:
    """Parameters of insightface's iResNet at 112 px, counted layer by layer (BN: weight + bias; PReLU: 1/channel)."""

    def block(cin: int, cout: int, down: bool) -> int:
        n = 2 * cin + cin * cout * 9 + 2 * cout + cout + cout * cout * 9 + 2 * cout
        return n + (cin * cout + 2 * cout if down else 0)

    total = 3 * 64 * 9 + 2 * 64 + 64  # stem conv, BN, PReLU
    cin = 64
    for cout, depth in zip((64, 128, 256, 512), layers, strict=True):
        total += block(cin, cout, True) + (depth - 1) * block(cout, cout, False)
        cin = cout
    return total + 2 * 512 + (512 * 7 * 7 * 512 + 512) + 2 * 512  # BN, fc, features BN


def test_ir50_embeds_112_faces_into_512_d_with_insightface_parameter_count() -> None:
    torch.manual_seed(0)
    model = ir50().eval()
    count = sum(p.numel() for p in model.parameters())
    assert count == expected_params((3, 4, 14, 3)) == 43_590_848  # insightface reports 43.6M for r50
    assert sum(isinstance(m, IBasicBlock) for m in model.modules()) == 24
    with torch.no_grad():
        out = model(torch.randn(2, 3, 112, 112))
    assert out.shape == (2, 512) and torch.isfinite(out).all()
    assert model.fc.in_features == 512 * 7 * 7


def test_ir100_parameter_count_and_registry() -> None:
    model = BACKBONES.create("ir100")
    assert isinstance(model, IResNet) and model.out_dim == 512 and model.img_size == 112
    assert sum(p.numel() for p in model.parameters()) == expected_params((3, 13, 30, 3)) == 65_156_160
    assert isinstance(BACKBONES.create("ir50", layers=(1, 1, 1, 1)), IResNet)


def test_tiny_iresnet_trains_every_parameter_but_the_frozen_feature_scale() -> None:
    torch.manual_seed(0)
    model = ir50(layers=(1, 1, 1, 1), embedding_size=16, img_size=32)
    out = model(torch.randn(4, 3, 32, 32))
    assert out.shape == (4, 16)
    out.pow(2).sum().backward()
    assert not model.features.weight.requires_grad and model.features.weight.grad is None
    assert torch.equal(model.features.weight, torch.ones(16))
    missing = [
        n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or p.grad.abs().sum() == 0)
    ]
    assert missing == []


def test_first_block_of_each_stage_halves_the_resolution() -> None:
    model = ir50(layers=(2, 1, 1, 1), embedding_size=8, img_size=32)
    sizes = []
    for stage in (model.layer1, model.layer2, model.layer3, model.layer4):
        stage.register_forward_hook(lambda _m, _i, out: sizes.append(tuple(out.shape[1:])))
    model.eval()(torch.randn(1, 3, 32, 32))
    assert sizes == [(64, 16, 16), (128, 8, 8), (256, 4, 4), (512, 2, 2)]
    assert model.layer1[0].downsample is not None and model.layer1[1].downsample is None


def test_group_matcher_gives_layer_decay_from_stem_to_head() -> None:
    model = ir50(layers=(1, 1, 1, 1), embedding_size=8, img_size=32)
    groups = param_groups(model, layer_decay=0.5)
    scale = {id(p): g["lr_scale"] for g in groups for p in g["params"]}
    stem, block, head = model.conv1.weight, model.layer2[0].conv1.weight, model.fc.weight
    # stem = layer 0, the 4 blocks 1..4, bn2/fc/features join the last block (timm's MATCH_PREV_GROUP);
    # parameters outside the backbone (Partial FC) sit at 5 with the full lr
    assert [scale[id(p)] for p in (stem, block, head)] == pytest.approx([0.5**5, 0.5**3, 0.5])


def test_bad_configuration_is_named() -> None:
    with pytest.raises(ValueError, match="4 stage depths"):
        IResNet((3, 4, 14))
    with pytest.raises(ValueError, match="multiple of 16"):
        IResNet((1, 1, 1, 1), img_size=100)
