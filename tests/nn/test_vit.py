"""ViT backbone: parity with timm's VisionTransformer, visible-token encoding, layers, registry."""

from __future__ import annotations

import pytest
import timm
import torch
from timm.models.vision_transformer import VisionTransformer
from timm.optim import param_groups_layer_decay

from facekit.nn.backbones import BACKBONES
from facekit.nn.vit import ViT

TINY = {"img_size": 32, "patch_size": 8, "embed_dim": 64, "depth": 2, "num_heads": 4}


@pytest.fixture
def twins() -> tuple[ViT, VisionTransformer]:
    """A facekit ViT carrying the weights of an equivalent timm model, both in eval mode."""
    torch.manual_seed(0)
    reference = VisionTransformer(**TINY, num_classes=0, global_pool="token").eval()
    model = ViT(**TINY, pos_embed="learned").eval()
    model.load_state_dict(reference.state_dict(), strict=True)
    return model, reference


def timm_tokens(reference: VisionTransformer, x: torch.Tensor, keep: torch.Tensor | None = None) -> list[torch.Tensor]:
    """Token sequences [B, 1 + K, D] after each of timm's blocks, visible tokens chosen by hand."""
    tokens = reference.patch_embed(x) + reference.pos_embed[:, 1:]
    if keep is not None:
        tokens = torch.stack([tokens[b, keep[b]] for b in range(x.shape[0])])
    cls = reference.cls_token + reference.pos_embed[:, :1]
    tokens = torch.cat([cls.expand(x.shape[0], -1, -1), tokens], dim=1)
    outputs = []
    for block in reference.blocks:
        tokens = block(tokens)
        outputs.append(tokens)
    return outputs


def test_parity_with_timm_vision_transformer(twins: tuple[ViT, VisionTransformer]) -> None:
    model, reference = twins
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), atol=1e-5, rtol=1e-5)
        features = reference.forward_features(x)
        out = model.encode(x)
        torch.testing.assert_close(out.cls, features[:, 0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(out.patches, features[:, 1:], atol=1e-5, rtol=1e-5)
    assert out.patches.shape == (3, 16, 64)


def test_encode_keep_runs_only_the_visible_tokens(twins: tuple[ViT, VisionTransformer]) -> None:
    model, reference = twins
    x = torch.randn(2, 3, 32, 32)
    keep = torch.stack([torch.randperm(16)[:5] for _ in range(2)])
    with torch.no_grad():
        out = model.encode(x, keep=keep, return_layers=(0,))
        expected = timm_tokens(reference, x, keep)
    assert out.patches.shape == (2, 5, 64)
    torch.testing.assert_close(out.layers[0], expected[0][:, 1:], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.patches, reference.norm(expected[-1])[:, 1:], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.cls, reference.norm(expected[-1])[:, 0], atol=1e-5, rtol=1e-5)


def test_return_layers_order_and_shapes(twins: tuple[ViT, VisionTransformer]) -> None:
    model, reference = twins
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out = model.encode(x, return_layers=(1, 0, -1))
        expected = timm_tokens(reference, x)
    assert [t.shape for t in out.layers] == [(2, 16, 64)] * 3
    torch.testing.assert_close(out.layers[0], expected[1][:, 1:], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.layers[1], expected[0][:, 1:], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.layers[2], out.layers[0])
    with pytest.raises(IndexError):
        model.encode(x, return_layers=(2,))


def test_avg_pool_means_the_normed_patches() -> None:
    model = ViT(**TINY, global_pool="avg", head_dim=8).eval()
    x = torch.randn(2, 3, 32, 32)
    out = model.encode(x)
    torch.testing.assert_close(out.pooled, out.patches.mean(dim=1))
    assert model(x).shape == (2, 8)


def test_patchify_layout_and_round_trip() -> None:
    model = ViT(**TINY)
    imgs = torch.randn(2, 3, 32, 32)
    patches = model.patchify(imgs)
    assert patches.shape == (2, 16, 8 * 8 * 3)
    # patch (row 1, col 2), pixel (3, 5), channel 2 -> token 1·4 + 2, feature (3·8 + 5)·3 + 2
    assert patches[1, 6, (3 * 8 + 5) * 3 + 2] == imgs[1, 2, 8 + 3, 16 + 5]
    torch.testing.assert_close(model.unpatchify(patches), imgs, rtol=0, atol=0)


@pytest.mark.parametrize("pool", ["token", "avg"])
def test_token_api_reproduces_forward(pool: str) -> None:
    """Patches cut by patchify, embedded by embed_patches and encoded by encode_tokens give forward's output."""
    torch.manual_seed(0)
    model = ViT(**TINY, patch_embed="linear", pos_embed="learned", global_pool=pool, head_dim=8).eval()
    x = torch.randn(2, 3, 32, 32)
    tokens = model.embed_patches(model.patchify(x))
    assert tokens.shape == (2, 16, model.embed_dim)
    torch.testing.assert_close(model.encode_tokens(tokens), model(x))
    assert model.encode_tokens(tokens[:, :5]).shape == (2, 8)  # fewer tokens, at the first positions
    with pytest.raises(ValueError, match="16 positions"):
        model.embed_patches(torch.randn(2, 17, 8 * 8 * 3))
    with pytest.raises(ValueError, match="patch_embed='linear'"):
        ViT(**TINY).embed_patches(model.patchify(x))


def test_sincos_buffer_and_weight_decay_names() -> None:
    sincos = ViT(**TINY)
    assert "pos_embed" not in dict(sincos.named_parameters())
    assert sincos.pos_embed.shape == (1, 17, 64)
    assert torch.all(sincos.pos_embed[0, 0] == 0)
    assert sincos.no_weight_decay() == {"cls_token"}
    assert ViT(**TINY, pos_embed="learned").no_weight_decay() == {"cls_token", "pos_embed"}


def test_freeze_patch_embed_gets_no_gradient() -> None:
    model = ViT(**TINY, freeze_patch_embed=True)
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    assert all(p.grad is None and not p.requires_grad for p in model.patch_embed.parameters())
    assert model.blocks[0].attn.qkv.weight.grad is not None


def test_group_matcher_drives_timm_layer_decay() -> None:
    model = ViT(
        **TINY, norm="deepnorm", class_token=False, pos_embed="learned", global_pool="avg", head_dim=8, num_prompts=2
    )
    groups = param_groups_layer_decay(model, weight_decay=0.05, layer_decay=0.5)
    group_of = {id(p): g["lr_scale"] for g in groups for p in g["params"]}
    scale = {name: group_of[id(p)] for name, p in model.named_parameters()}
    # layers: stem 0, block 0 -> 1, block 1 -> 2, everything else (prompts, pool, head) -> 3
    assert scale["patch_embed.proj.weight"] == scale["pos_embed"] == pytest.approx(0.5**3)
    assert scale["blocks.0.attn.qkv.weight"] == scale["blocks.0.norm1.bias"] == pytest.approx(0.5**2)
    assert scale["blocks.1.mlp.fc2.weight"] == pytest.approx(0.5)
    assert scale["prompts"] == scale["head.0.weight"] == scale["prompts_pool.key_proj.weight"] == 1.0


def test_full_size_parameter_counts() -> None:
    def count(model: torch.nn.Module) -> int:
        return sum(p.numel() for p in model.parameters())

    with torch.device("meta"):  # shapes only: no memory, no init cost
        vit_b = BACKBONES.create("vit_base_patch16_224")
        vit_s = BACKBONES.create("vit_small_patch16_224")
        facet = BACKBONES.create("facet_base")
        references = [timm.create_model(f"vit_{size}_patch16_224", num_classes=0) for size in ("base", "small")]
    assert count(vit_b) == 85_647_360
    assert count(vit_s) == 21_590_016
    # timm's learned position table is a parameter, ours a fixed sin-cos buffer
    assert [count(vit_b) + vit_b.pos_embed.numel(), count(vit_s) + vit_s.pos_embed.numel()] == [
        count(r) for r in references
    ]

    d, n, depth, prompts = 768, 196, 12, 32
    block = (3 * d * d + 3 * d) + (d * d + d) + (8 * d * d + 4 * d + d) + 4 * d  # qkv, proj, mlp, 2 LN
    expected = (192 * d + d) + n * d + depth * block + depth * 2 * prompts * d + (2 * prompts * d + d * d + d)
    expected += d * 512 + 512  # head Linear; its BN has no affine
    assert count(facet) == expected == 86_976_512


VIT_BACKBONES = ["facet_base", "vit_base_patch16_224", "vit_small_patch16_224"]


def test_the_sweep_covers_every_registered_vit() -> None:
    """A newly registered ViT must join the sweep below (IR nets, ResNet trunks and LAFS's landmark_vit have their
    own tests)."""
    others = {"ir50", "ir100", "resnet18", "resnet34", "resnet50", "landmark_vit"}
    assert set(BACKBONES.names()) == {*VIT_BACKBONES, *others}


@pytest.mark.parametrize("name", VIT_BACKBONES)
def test_every_backbone_trains_at_depth_two(name: str) -> None:
    torch.manual_seed(0)
    model = BACKBONES.create(name, depth=2, drop_path_rate=0.1)
    x = torch.randn(2, 3, model.img_size, model.img_size)
    out = model(x, ismask=torch.tensor([0, 1]))
    assert out.shape == (2, model.out_dim)
    out.square().mean().backward()
    for param_name, p in model.named_parameters():
        assert p.grad is not None, param_name
        assert torch.isfinite(p.grad).all(), param_name
