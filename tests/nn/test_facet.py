"""FaceT-B pieces: DeepNorm scaling and init, post-norm placement, per-sample prompts, PromptsPool."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from timm.models.vision_transformer import Block

from facekit.nn.backbones import BACKBONES
from facekit.nn.facet import DeepNormBlock, PromptsPool, deepnorm_alpha, deepnorm_beta
from facekit.nn.vit import ViT

TINY_FACET = {
    "img_size": 16,
    "patch_size": 4,
    "embed_dim": 32,
    "depth": 3,
    "num_heads": 4,
    "class_token": False,
    "pos_embed": "learned",
    "patch_embed": "linear",
    "global_pool": "avg",
    "norm": "deepnorm",
}


def test_alpha_and_beta_of_facet_base() -> None:
    assert deepnorm_alpha(12) == pytest.approx(24**0.25) == pytest.approx(2.2134, abs=1e-4)
    assert deepnorm_beta(12) == pytest.approx(96**-0.25) == pytest.approx(0.3195, abs=1e-4)
    model = BACKBONES.create("facet_base", depth=2)
    assert all(isinstance(b, DeepNormBlock) and isinstance(b, Block) for b in model.blocks)
    assert model.blocks[0].alpha == pytest.approx(4**0.25)


def test_deepnorm_xavier_gain_and_head_init() -> None:
    torch.manual_seed(0)
    model = BACKBONES.create("facet_base", depth=2)
    beta = 16**-0.25
    for linear, gain in [
        (model.blocks[0].attn.qkv, beta),
        (model.blocks[1].mlp.fc1, beta),
        (model.patch_embed.proj, beta),
        (model.prompts_pool.key_proj, beta),
        (model.head[0], 1.0),
    ]:
        fan_out, fan_in = linear.weight.shape
        bound = gain * math.sqrt(6 / (fan_in + fan_out))
        assert linear.weight.abs().max() <= bound
        assert linear.weight.std().item() == pytest.approx(gain * math.sqrt(2 / (fan_in + fan_out)), rel=0.03)
        assert torch.all(linear.bias == 0)
    assert torch.all(model.pos_embed == 0)
    assert not model.head[1].affine


def test_deepnorm_block_is_post_norm_with_scaled_skip() -> None:
    torch.manual_seed(0)
    block = DeepNormBlock(32, 4, alpha=1.7).eval()
    x = torch.randn(2, 5, 32) * 3 + 1
    out = block(x)
    mid = F.layer_norm(1.7 * x + block.attn(x), (32,))
    torch.testing.assert_close(out, F.layer_norm(1.7 * mid + block.mlp(mid), (32,)))
    torch.testing.assert_close(out.mean(-1), torch.zeros(2, 5), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.var(-1, unbiased=False), torch.ones(2, 5), atol=1e-3, rtol=0)


def test_deepnorm_model_has_no_final_norm() -> None:
    model = ViT(**TINY_FACET).eval()
    out = model.encode(torch.randn(2, 3, 16, 16), return_layers=(-1,))
    torch.testing.assert_close(out.patches, out.layers[0])
    torch.testing.assert_close(out.pooled, out.patches.mean(1))


def test_prompts_are_prepended_per_block_and_dropped() -> None:
    torch.manual_seed(0)
    model = ViT(**TINY_FACET, num_prompts=3).eval()
    x = torch.randn(2, 3, 16, 16)
    ismask = torch.tensor([1, 0])
    seen: list[tuple[int, int]] = []
    hooks = [b.register_forward_hook(lambda m, i, o: seen.append((i[0].shape[1], o.shape[1]))) for b in model.blocks]
    with torch.no_grad():
        out = model.encode(x, ismask=ismask)
        for hook in hooks:
            hook.remove()
        tokens = model.patch_embed(x) + model.pos_embed
        for i, block in enumerate(model.blocks):
            tokens = block(torch.cat([model.prompts[i, ismask], tokens], dim=1))[:, 3:]
    assert seen == [(16 + 3, 16 + 3)] * 3
    assert out.patches.shape == (2, 16, 32)
    torch.testing.assert_close(out.patches, tokens)
    torch.testing.assert_close(out.pooled, model.prompts_pool(tokens, ismask).mean(1))


def test_prompt_set_follows_ismask_per_sample() -> None:
    torch.manual_seed(0)
    model = ViT(**TINY_FACET, num_prompts=3).eval()
    x = torch.randn(1, 3, 16, 16).expand(2, -1, -1, -1)
    with torch.no_grad():
        mixed = model.encode(x, ismask=torch.tensor([0, 1])).pooled
        holistic = model.encode(x, ismask=torch.tensor([0, 0])).pooled
        default = model.encode(x).pooled
    assert not torch.allclose(mixed[0], mixed[1], atol=1e-3)
    torch.testing.assert_close(holistic[0], holistic[1])
    torch.testing.assert_close(mixed[0], holistic[0])
    torch.testing.assert_close(default, holistic)


def test_prompts_pool_matches_manual_cross_attention() -> None:
    torch.manual_seed(0)
    pool = PromptsPool(embed_dim=8, num_heads=2, num_prompts=3)
    x = torch.randn(2, 5, 8)
    ismask = torch.tensor([1, 0])
    out = pool(x, ismask)
    assert out.shape == (2, 3, 8)
    for b in range(2):
        keys = pool.key_proj(x[b])  # [5, 8]
        for h in range(2):
            cols = slice(4 * h, 4 * h + 4)
            q = pool.queries[ismask[b], h]  # [3, 4]
            weights = torch.softmax(q @ keys[:, cols].T / math.sqrt(8), dim=-1)  # scale over full width 8
            torch.testing.assert_close(out[b, :, cols], weights @ x[b, :, cols])


def test_prompts_require_avg_pooling() -> None:
    with pytest.raises(ValueError, match="global_pool"):
        ViT(img_size=16, patch_size=4, embed_dim=32, depth=1, num_heads=4, num_prompts=2)
