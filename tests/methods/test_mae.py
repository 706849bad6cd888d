"""MAE and FaceT's MAE preset: masked-patch loss, per-patch normalisation, decoder assembly, shapes, training."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import facekit.methods  # noqa: F401  (registers the methods)
from facekit.data.views import MAEView, ResizeFlipView
from facekit.methods.base import METHODS, StepValues
from facekit.methods.mae import MAE, MAEDecoder, facet_mae, masked_mse, patch_targets
from facekit.nn.facet import DeepNormBlock

TINY = {"img_size": 32, "patch_size": 8, "embed_dim": 64, "depth": 2, "num_heads": 4}
HP = StepValues(step=0, epoch=0.0, progress=0.0, lr=1e-3, weight_decay=0.0, momentum=0.99)


def tiny_mae(**kwargs) -> MAE:
    torch.manual_seed(0)
    return MAE(backbone_kwargs=TINY, decoder_dim=32, decoder_depth=1, decoder_heads=4, **kwargs)


def test_masked_mse_counts_masked_patches_only() -> None:
    target = torch.zeros(1, 4, 2)
    pred = torch.tensor([[[1.0, 1.0], [2.0, 0.0], [1e3, -1e3], [0.0, 3.0]]])
    mask = torch.tensor([[True, True, False, True]])
    # masked patches' MSEs: (1 + 1)/2 = 1, (4 + 0)/2 = 2, (0 + 9)/2 = 4.5; the visible one (1e6) is ignored
    assert masked_mse(pred, target, mask).item() == pytest.approx((1 + 2 + 4.5) / 3)
    # over a batch the mean runs over every masked patch of every sample
    pred2 = torch.cat([pred, torch.full((1, 4, 2), 2.0)])
    mask2 = torch.tensor([[True, True, False, True], [False, True, False, False]])
    assert masked_mse(pred2, torch.zeros(2, 4, 2), mask2).item() == pytest.approx((1 + 2 + 4.5 + 4) / 4)


def test_norm_pix_targets_match_manual() -> None:
    patches = torch.tensor([[[1.0, 2.0, 3.0, 6.0], [0.5, 0.5, 0.5, 0.5]]])
    values = [1.0, 2.0, 3.0, 6.0]
    mean = sum(values) / 4
    var = sum((v - mean) ** 2 for v in values) / 3  # unbiased, as the MAE code
    expected = [(v - mean) / math.sqrt(var + 1e-6) for v in values]
    out = patch_targets(patches, norm_pix=True)
    assert out[0, 0].tolist() == pytest.approx(expected, rel=1e-5)
    assert out[0, 1].tolist() == pytest.approx([0.0] * 4)  # a flat patch: zero, not NaN
    assert torch.equal(patch_targets(patches, norm_pix=False), patches)


@pytest.mark.parametrize("pos_on_visible", [True, False])
@pytest.mark.parametrize("with_cls", [True, False])
def test_decoder_places_visible_and_mask_tokens(pos_on_visible: bool, with_cls: bool) -> None:
    torch.manual_seed(0)
    # no blocks: output = pred(norm(embed(visible token) or mask token, + positions))
    dec = MAEDecoder(in_dim=6, grid_size=2, patch_size=1, dim=8, depth=0, pos_on_visible=pos_on_visible)
    tokens = torch.randn(2, 2, 6)
    keep = torch.tensor([[3, 0], [1, 2]])
    cls = torch.randn(2, 6) if with_cls else None
    out = dec(tokens, keep, cls)
    assert out.shape == (2, 4, 3)
    pos = dec.pos_embed[0]  # [4, 8]
    for b in range(2):
        for n in range(4):
            if n in keep[b].tolist():
                x = dec.embed(tokens[b, keep[b].tolist().index(n)]) + (pos[n] if pos_on_visible else 0)
            else:
                x = dec.mask_token[0, 0] + pos[n]
            torch.testing.assert_close(out[b, n], dec.pred(dec.norm(x)))


def test_encoder_sees_quarter_of_patches_and_decoder_predicts_all() -> None:
    model = tiny_mae()
    seen = []
    encode = model.encoder.encode
    model.encoder.encode = lambda x, keep=None, **kw: seen.append(keep) or encode(x, keep=keep, **kw)
    images = torch.randn(3, 3, 32, 32)
    pred, mask = model.predict(images)
    assert model.encoder.num_patches == 16
    assert seen[0].shape == (3, 4)  # 16 · (1 − 0.75)
    assert mask.sum(dim=1).tolist() == [12, 12, 12]
    assert pred.shape == (3, 16, 8 * 8 * 3)
    for b in range(3):  # visible = exactly the kept indices
        assert sorted(seen[0][b].tolist()) == torch.nonzero(~mask[b]).flatten().tolist()


def test_forward_backward_and_reconstruct() -> None:
    model = tiny_mae(norm_pix_loss=True)
    images = torch.randn(2, 3, 32, 32)
    out = model({"image": images}, HP)
    assert set(out) == {"loss"} and torch.isfinite(out["loss"])
    out["loss"].backward()
    assert model.decoder.mask_token.grad is not None
    assert model.encoder.blocks[0].attn.qkv.weight.grad.abs().sum() > 0
    recon, mask = model.reconstruct(images)
    assert recon.shape == images.shape and mask.shape == (2, 16) and mask.dtype == torch.bool
    assert model.export_backbone() is model.encoder


def test_a_few_steps_reduce_the_loss() -> None:
    model = tiny_mae()
    torch.manual_seed(1)
    images = torch.randn(4, 3, 32, 32)

    def fixed_mask_loss() -> float:
        with torch.no_grad():
            pred, mask = model.predict(images, torch.Generator().manual_seed(0))
            return model.loss(images, pred, mask).item()

    before = fixed_mask_loss()
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    for _ in range(15):
        optimizer.zero_grad()
        model({"image": images}, HP)["loss"].backward()
        optimizer.step()
    assert fixed_mask_loss() < 0.9 * before


def test_facet_preset_shapes() -> None:
    torch.manual_seed(0)
    model = METHODS.create("facet_mae", backbone_kwargs={"depth": 2})
    enc = model.encoder
    assert (enc.img_size, enc.patch_size, enc.num_patches, enc.has_cls) == (112, 8, 196, False)
    assert enc.prompts is None and isinstance(enc.head, torch.nn.Identity)  # pre-trained without them
    assert isinstance(enc.norm, torch.nn.Identity)  # DeepNorm: no final norm
    dec = model.decoder
    assert dec.embed.out_features == 516 and len(dec.blocks) == 8
    assert all(isinstance(b, DeepNormBlock) for b in dec.blocks) and dec.blocks[0].attn.num_heads == 12
    assert dec.blocks[0].mlp.fc1.out_features == 3 * 516 and isinstance(dec.norm, torch.nn.Identity)
    assert not dec.pos_on_visible and not model.norm_pix_loss
    images = torch.randn(2, 3, 112, 112)
    with torch.no_grad():
        pred, mask = model.predict(images)
        assert torch.isfinite(model.loss(images, pred, mask))
    assert pred.shape == (2, 196, 192) and mask.sum(dim=1).tolist() == [147, 147]


def test_views() -> None:
    """MAE's main_pretrain.py: RandomResizedCrop(scale=(0.2, 1), bicubic), flip, ImageNet mean / std; FaceT's
    data_pipe.py: flip and (0.5, 0.5) normalisation of the whole 112 px face."""
    rgb = np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    view = tiny_mae().views()
    assert isinstance(view, MAEView) and view(rgb)["image"].shape == (3, 32, 32)
    recipe = view.recipe
    assert (recipe.scale, recipe.ratio, recipe.interpolation, recipe.hflip_p) == (
        (0.2, 1.0),
        (3 / 4, 4 / 3),
        "bicubic",
        0.5,
    )
    assert (recipe.mean, recipe.std) == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    assert (recipe.jitter_p, recipe.gray_p, recipe.blur_p, recipe.solarize_p) == (0.0, 0.0, 0.0, 0.0)
    facet_view = facet_mae(backbone_kwargs={"depth": 1}, decoder_depth=1).views()
    assert isinstance(facet_view, ResizeFlipView) and facet_view(rgb)["image"].shape == (3, 112, 112)
    assert (facet_view.mean, facet_view.std, facet_view.normalize) == ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5), True)


def test_decoder_init_follows_each_released_code() -> None:
    """MAE: Xavier-uniform Linears, zero biases, mask token ~ N(0, 0.02²). FaceT: ``enc_to_dec`` and
    ``to_pixels`` keep PyTorch's default Linear init (weights and biases in ±1/sqrt(fan_in), kaiming-uniform
    with a = √5), the blocks DeepNorm's Xavier gain (8·depth)^−¼, mask token ~ N(0, 1)."""
    mae = tiny_mae().decoder
    for layer in (mae.embed, mae.pred, mae.blocks[0].attn.qkv):
        fan_out, fan_in = layer.weight.shape
        bound = math.sqrt(6 / (fan_in + fan_out))
        assert layer.weight.abs().max() <= bound and layer.weight.abs().max() > 0.9 * bound
        assert torch.all(layer.bias == 0)
    assert 0.01 < mae.mask_token.std().item() < 0.03
    torch.manual_seed(0)
    facet = facet_mae(backbone_kwargs={"depth": 1}, decoder_depth=2).decoder
    for layer in (facet.embed, facet.pred):
        bound = 1 / math.sqrt(layer.in_features)
        assert layer.weight.abs().max() <= bound and layer.weight.abs().max() > 0.9 * bound
        assert layer.bias.abs().max() <= bound and layer.bias.abs().max() > 0.5 * bound
    qkv = facet.blocks[0].attn.qkv
    bound = (8 * 2) ** -0.25 * math.sqrt(6 / (qkv.in_features + qkv.out_features))
    assert qkv.weight.abs().max() <= bound and qkv.weight.abs().max() > 0.9 * bound
    assert 0.9 < facet.mask_token.std().item() < 1.1  # 516 draws
