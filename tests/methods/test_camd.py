"""CAMD: views and mask, loss formulas on hand-built tensors, TopK attention, positions, EMA, training."""

from __future__ import annotations

import itertools
import math
import pickle

import numpy as np
import pytest
import torch

from facekit.config import TrainConfig
from facekit.methods.base import StepValues
from facekit.methods.camd import (
    CAMD,
    CAMDViews,
    agmd_weight,
    global_unigrad_loss,
    relative_positions,
    unigrad_loss,
)
from facekit.nn.topk_attention import MultiHeadAttentionTopK
from facekit.train.schedules import cosine_schedule

TINY = dict(img_size=64, embed_dim=32, depth=12, num_heads=4)  # 16 patches, blocks 2, 5, 8, 11 exist


def _hp(step: int = 0, momentum: float = 0.995) -> StepValues:
    return StepValues(step=step, epoch=0.0, progress=0.0, lr=1e-3, weight_decay=0.0, momentum=momentum)


def _tiny_camd() -> CAMD:
    return CAMD("vit_small_patch16_224", TINY, decoder_dim=32, decoder_heads=4)


def _batch(method: CAMD, n: int = 4, seed: int = 0) -> dict[str, torch.Tensor]:
    np.random.seed(seed)
    views = method.views()
    items = [views(np.random.randint(0, 256, (112, 112, 3), dtype=np.uint8)) for _ in range(n)]
    return {k: torch.stack([item[k] for item in items]) for k in items[0]}


# ---------------------------------------------------------------- views and mask


def test_views_shapes_boxes_and_block_mask_of_exactly_118() -> None:
    np.random.seed(1)
    views = pickle.loads(pickle.dumps(CAMDViews()))  # DataLoader workers receive a pickled copy
    for _ in range(3):
        out = views(np.random.randint(0, 256, (112, 112, 3), dtype=np.uint8))
        assert out["view1"].shape == out["view2"].shape == (3, 224, 224)
        assert out["view1"].dtype == torch.float32
        assert out["mask"].shape == (196,) and out["mask"].dtype == torch.bool
        assert int(out["mask"].sum()) == 118
        top, left, height, width, flip = out["view2_box"].tolist()
        assert (top, left, height, width) == (0.0, 0.0, 1.0, 1.0) and flip in (0.0, 1.0)
        area = out["view1_box"][2] * out["view1_box"][3]
        assert 0.07 < float(area) < 0.61


def test_views_follow_the_released_augmentation() -> None:
    """CAMD_pretrain.py ``DataAugmentationForSIM``: view 1 RandomResizedCrop(0.08-0.6, bicubic), jitter
    (0.4, 0.4, 0.2, 0.1) p 0.8, grayscale p 0.2, blur p 1; view 2 the whole face, jitter p 0.8, grayscale
    p 0.2, blur p 0.1, solarize p 0.2; each flipped with p 0.5; VGGFace2 mean / std."""
    views = CAMDViews().views
    one, two = views.recipe1, views.recipe2
    for recipe in (one, two):
        assert (recipe.size, recipe.interpolation, recipe.hflip_p, recipe.ratio) == (
            224,
            "bicubic",
            0.5,
            (3 / 4, 4 / 3),
        )
        assert (recipe.jitter, recipe.jitter_p, recipe.gray_p) == ((0.4, 0.4, 0.2, 0.1), 0.8, 0.2)
        assert (recipe.blur_sigma, recipe.normalize) == ((0.1, 2.0), True)
        assert (recipe.mean, recipe.std) == ((0.5231, 0.4044, 0.3489), (0.2536, 0.2194, 0.2070))
    assert (one.scale, one.blur_p, one.solarize_p) == ((0.08, 0.6), 1.0, 0.0)
    assert (two.scale, two.blur_p, two.solarize_p) == ((1.0, 1.0), 0.1, 0.2)
    assert _tiny_camd().views().views.recipe1.scale == (0.08, 0.6)  # the method's default crop scale


# ---------------------------------------------------------------- losses


def _unigrad_by_hand(p: torch.Tensor, t: torch.Tensor, neg_weight: float, normalize: bool) -> float:
    """The UniGrad formula with explicit loops over rows and channels, in float64."""
    p, t = p.double().reshape(-1, p.shape[-1]), t.double().reshape(-1, t.shape[-1])
    m, d = t.shape
    if normalize:
        rows = []
        for r in range(m):
            mu = sum(t[r, c] for c in range(d)) / d
            var = sum((t[r, c] - mu) ** 2 for c in range(d)) / d
            rows.append(torch.stack([(t[r, c] - mu) / math.sqrt(var + 1e-5) for c in range(d)]))
        t = torch.stack(rows)
    corr = torch.zeros(d, d, dtype=torch.float64)
    for a, b in itertools.product(range(d), range(d)):
        corr[a, b] = sum(t[r, a] * t[r, b] for r in range(m)) / m
    positive = sum(float(((p[r] - t[r]) ** 2).sum()) for r in range(m)) / m
    negative = sum(float(p[r, a] * corr[a, b] * p[r, b]) for r in range(m) for a in range(d) for b in range(d)) / m
    return (positive + neg_weight * negative) / d


def test_unigrad_loss_matches_its_formula() -> None:
    gen = torch.Generator().manual_seed(0)
    p, t = torch.randn(2, 3, 6, generator=gen), 3 * torch.randn(2, 3, 6, generator=gen) + 1
    assert unigrad_loss(p, t, 0.02).item() == pytest.approx(_unigrad_by_hand(p, t, 0.02, True), rel=1e-5)
    assert unigrad_loss(p, t, 0.5, normalize_target=False).item() == pytest.approx(
        _unigrad_by_hand(p, t, 0.5, False), rel=1e-5
    )


def test_unigrad_hand_values_and_gradient_only_to_pred() -> None:
    # D=2, one row: LayerNorm maps (0, 2) to (-1, 1) (up to eps); C = [[1, -1], [-1, 1]].
    p = torch.tensor([[1.0, 0.0]], requires_grad=True)
    t = torch.tensor([[0.0, 2.0]], requires_grad=True)
    s = 1 / math.sqrt(1 + 1e-5)
    expected = (((1 + s) ** 2 + s**2) + 0.02 * s**2) / 2  # p^T C p = s^2 * (1 - 0)^2
    loss = unigrad_loss(p, t)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    loss.backward()
    assert p.grad is not None and t.grad is None


def test_global_loss_averages_over_the_batch_axis_by_default_and_tokens_as_option() -> None:
    gen = torch.Generator().manual_seed(1)
    p, t = torch.randn(3, 4, 6, generator=gen), torch.randn(3, 4, 6, generator=gen)
    batch_mean = _unigrad_by_hand(p.mean(0), t.mean(0), 0.02, normalize=False)  # 4 rows
    token_mean = _unigrad_by_hand(p.mean(1), t.mean(1), 0.02, normalize=False)  # 3 rows
    assert global_unigrad_loss(p, t).item() == pytest.approx(batch_mean, rel=1e-5)
    assert global_unigrad_loss(p, t, mean="token").item() == pytest.approx(token_mean, rel=1e-5)
    assert batch_mean != pytest.approx(token_mean, rel=1e-3)
    normed = _unigrad_by_hand(p.mean(0), t.mean(0), 0.02, normalize=True)
    assert global_unigrad_loss(p, t, normalize_target=True).item() == pytest.approx(normed, rel=1e-5)
    with pytest.raises(ValueError):
        global_unigrad_loss(p, t, mean="pixel")  # type: ignore[arg-type]


def test_agmd_weight_switches_at_one() -> None:
    assert agmd_weight(torch.tensor(0.999)).item() == pytest.approx(0.1)
    assert agmd_weight(torch.tensor(1.0)).item() == pytest.approx(0.01)  # released: 0 at exactly 1
    assert agmd_weight(torch.tensor(7.0)).item() == pytest.approx(0.01)
    assert agmd_weight(torch.tensor(0.3), threshold=0.2, weights=(1.0, 2.0)).item() == 2.0


# ---------------------------------------------------------------- TopK attention


def test_topk_attention_weights_only_the_top_two_keys() -> None:
    torch.manual_seed(0)
    attn = MultiHeadAttentionTopK(embed_dim=4, num_heads=2, k=2)
    query, context = torch.randn(1, 3, 4), torch.randn(1, 5, 4)
    with torch.no_grad():
        q, key, value = attn.query(query)[0], attn.key(context)[0], attn.value(context)[0]  # [Nq | Nk, 4]
    expected_out = torch.zeros(3, 4)
    expected_weights = torch.zeros(2, 3, 5)
    for h in range(2):
        cols = slice(2 * h, 2 * h + 2)
        for i in range(3):
            scores = [float(q[i, cols] @ key[j, cols]) / math.sqrt(2) for j in range(5)]
            best = sorted(range(5), key=lambda j: scores[j], reverse=True)[:2]
            z = sum(math.exp(scores[j]) for j in best)
            for j in best:
                expected_weights[h, i, j] = math.exp(scores[j]) / z
                expected_out[i, cols] += expected_weights[h, i, j] * value[j, cols]
    expected_out = attn.out(expected_out)
    weights = attn.attention_weights(query, context)[0]
    assert torch.allclose(weights, expected_weights, atol=1e-6)
    assert ((weights > 0).sum(-1) == 2).all()
    assert torch.allclose(attn(query, context)[0], expected_out, atol=1e-6)


# ---------------------------------------------------------------- relative positions


def _grid(g: int) -> tuple[torch.Tensor, torch.Tensor]:
    i, j = torch.meshgrid(torch.arange(g, dtype=torch.float32), torch.arange(g, dtype=torch.float32), indexing="ij")
    return i.reshape(1, -1), j.reshape(1, -1)


def test_identical_boxes_map_the_grid_onto_itself_and_a_flip_mirrors_columns() -> None:
    i, j = _grid(4)
    box = torch.tensor([[0.1, 0.2, 0.5, 0.6, 0.0]])
    rows, cols, dh, dw = relative_positions(box, box, 4)
    assert torch.allclose(rows, i, atol=1e-5) and torch.allclose(cols, j, atol=1e-5)
    assert dh.item() == pytest.approx(1.0) and dw.item() == pytest.approx(1.0)
    flipped = box.clone()
    flipped[0, 4] = 1.0
    rows, cols, _, _ = relative_positions(box, flipped, 4)
    assert torch.allclose(rows, i, atol=1e-5) and torch.allclose(cols, 3 - j, atol=1e-5)
    rows, cols, _, _ = relative_positions(flipped, flipped, 4)  # both flipped: no relative flip
    assert torch.allclose(cols, j, atol=1e-5)


def test_half_size_crop_scales_positions() -> None:
    whole = torch.tensor([[0.0, 0.0, 1.0, 1.0, 0.0]])
    quarter = torch.tensor([[0.5, 0.25, 0.5, 0.5, 0.0]])  # rows 0.5-1, columns 0.25-0.75 of the face
    rows, cols, dh, dw = relative_positions(quarter, whole, 4)
    # view-2 centres (k + 0.5) / 4 -> view-1 cells: rows 8 * (k + 0.5) / 4 - 4 - 0.5, cols ... - 2 - 0.5
    assert rows.view(4, 4)[:, 0].tolist() == pytest.approx([-3.5, -1.5, 0.5, 2.5])
    assert cols.view(4, 4)[0].tolist() == pytest.approx([-1.5, 0.5, 2.5, 4.5])
    assert (dh.item(), dw.item()) == pytest.approx((2.0, 2.0))
    rows, cols, dh, dw = relative_positions(whole, quarter, 4)  # the inverse: view 2 inside view 1
    assert rows.view(4, 4)[:, 0].tolist() == pytest.approx([1.75, 2.25, 2.75, 3.25])
    assert cols.view(4, 4)[0].tolist() == pytest.approx([0.75, 1.25, 1.75, 2.25])
    assert (dh.item(), dw.item()) == pytest.approx((0.5, 0.5))


def test_relative_positions_agree_with_the_released_flipped_frame_formula() -> None:
    gen = torch.Generator().manual_seed(3)
    g, n = 14, 8
    size = 0.2 + 0.8 * torch.rand(n, 4, generator=gen)
    corner = torch.rand(n, 4, generator=gen) * (1 - size)
    flips = torch.randint(0, 2, (n, 2), generator=gen).float()
    box1 = torch.stack([corner[:, 0], corner[:, 1], size[:, 0], size[:, 1], flips[:, 0]], 1)
    box2 = torch.stack([corner[:, 2], corner[:, 3], size[:, 2], size[:, 3], flips[:, 1]], 1)
    rows, cols, _, _ = relative_positions(box1, box2, g)
    # Released: each view's left edge measured in its own (possibly flipped) source.
    j1 = torch.where(flips[:, 0] > 0, 1 - box1[:, 1] - box1[:, 3], box1[:, 1])
    j2 = torch.where(flips[:, 1] > 0, 1 - box2[:, 1] - box2[:, 3], box2[:, 1])
    rel_flip = (flips[:, 0] != flips[:, 1]).float()[:, None]
    i, j = _grid(g)
    dw = (box2[:, 3] / box1[:, 3])[:, None]
    straight = (j2 - j1)[:, None] / box1[:, 3, None] * g + dw * (j + 0.5)
    mirrored = (1 - j1 - j2)[:, None] / box1[:, 3, None] * g - dw * (j + 0.5)
    expected_cols = rel_flip * mirrored + (1 - rel_flip) * straight - 0.5
    expected_rows = (
        (box2[:, 0] - box1[:, 0])[:, None] / box1[:, 2, None] * g + (box2[:, 2] / box1[:, 2])[:, None] * (i + 0.5) - 0.5
    )
    assert torch.allclose(cols, expected_cols, atol=1e-4) and torch.allclose(rows, expected_rows, atol=1e-4)


# ---------------------------------------------------------------- EMA (the loop's schedule: tests/train/test_loop.py)


def test_the_recipe_starts_the_loops_ema_momentum_at_the_released_base(tmp_path) -> None:
    assert TrainConfig(**CAMD.recipe, out_dir=tmp_path).ema_momentum == 0.995


# ---------------------------------------------------------------- the Method


def test_forward_backward_gradients_only_on_the_online_branch() -> None:
    torch.manual_seed(0)
    method = _tiny_camd()
    batch = _batch(method)
    assert batch["mask"].shape == (4, 16) and (batch["mask"].sum(1) == 10).all()
    out = method(batch, _hp())
    assert set(out) >= {"loss", "unigrad", "global", "agmd", "agmd_weight", "momentum"}
    assert torch.isfinite(out["loss"]) and out["loss"].ndim == 0
    out["loss"].backward()
    named = dict(method.named_parameters())
    for name in ("decoder_embed.weight", "mask_token", "decoder_pos_mlp.weight", "decoder_pred.weight",
                 "topk_attention.query.weight", "topk_attention.value.weight"):  # fmt: skip
        assert named[name].grad is not None and named[name].grad.abs().sum() > 0, name
    assert any(p.grad is not None for n, p in named.items() if n.startswith("backbone.") and "blocks" in n)
    assert any(p.grad is not None for n, p in named.items() if n.startswith("predictor."))
    for name, p in named.items():
        if name.startswith("target_") or "patch_embed" in name:
            assert not p.requires_grad and p.grad is None, name
    assert method.export_backbone() is method.backbone


def test_target_is_an_ema_of_the_online_branch_once_per_step() -> None:
    torch.manual_seed(0)
    method = _tiny_camd()
    batch = _batch(method, n=2)
    online = dict(method.backbone.named_parameters())
    target = dict(method.target_backbone.named_parameters())
    name = next(n for n in online if "blocks" in n and n.endswith("weight"))
    with torch.no_grad():
        online[name].add_(1.0)
    before = target[name].detach().clone()
    out = method(batch, _hp(step=1, momentum=0.9975))  # the loop's hp.momentum halfway from 0.995 to 1
    expected = 0.9975 * before + 0.0025 * online[name].detach()
    assert torch.allclose(target[name], expected, atol=1e-6)
    assert out["momentum"] == pytest.approx(0.9975)
    method(batch, _hp(step=1, momentum=0.9975))  # same optimizer step (gradient accumulation): no update
    assert torch.allclose(target[name], expected, atol=1e-6)


def test_a_few_optimizer_steps_lower_the_loss_on_a_fixed_batch() -> None:
    torch.manual_seed(0)
    method = _tiny_camd()
    batch = _batch(method)
    optimizer = torch.optim.AdamW([p for p in method.parameters() if p.requires_grad], lr=1e-3)
    losses = []
    momenta = cosine_schedule(CAMD.recipe["ema_momentum"], 1.0, 8)  # as the loop schedules hp.momentum
    for step in range(8):
        loss = method(batch, _hp(step=step, momentum=float(momenta[step])))["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.9 * losses[0], losses
