"""Golden forward test of CAMD: the whole ``forward()`` (loss, every logged term, the EMA'd target, the
gradients) against a computation written out here from the paper and the released code, and against the
released model.

Written out (``mumumu-wss/CAMD`` @ 537a7cb, ``models_CAMD.py`` ``forward_CAMD``, ``util/pos_embed.py``,
``CAMD_pretrain_engine.py``): view 1's visible patches (block mask) + row-first sin-cos positions and a cls
token through the online ViT, ``decoder_embed``, the BatchNorm projector; the predictor sees
``[cls + pos₀ | visible + their decoder positions | mask tokens + MLP(view-2 positions in view-1
coordinates, log scales)]``; view 2 whole through the target ViT, ``decoder_embed`` and projector, each
first moved to ``m·target + (1 − m)·online``, with no gradient; UniGrad on the tokens (target LayerNormed),
UniGrad on the batch means, AGMD (top-2 cross-attention from online to target tokens of the distilled
blocks), ``loss = unigrad + 0.25·global + (0.1 if agmd < 1 else 0.01)·agmd``.

facekit's one structural deviation, its ViT's final LayerNorm before ``decoder_embed`` (see
:mod:`facekit.methods.camd`), is written out too (:func:`vit_by_hand`).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from facekit.methods.base import StepValues
from facekit.methods.camd import CAMD

TINY = {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 4, "num_heads": 4}
GRID, PATCH, DIM, HEADS, DEC_DIM, DEC_HEADS = 4, 8, 32, 4, 32, 4
LAYERS, NUM_MASKED, BATCH = (1, 3), 10, 3
HP = StepValues(step=5, epoch=0.0, progress=0.5, lr=1e-3, weight_decay=0.0, momentum=0.9)
VGGFACE2_MEAN, VGGFACE2_STD = (0.5231, 0.4044, 0.3489), (0.2536, 0.2194, 0.2070)  # CAMD_pretrain.py
#: view boxes ``(top, left, height, width, flipped)`` in source fractions: a flipped crop against the whole
#: face, a crop against the flipped whole face, and two flipped crops.
BOX1 = [[0.2, 0.1, 0.5, 0.6, 1.0], [0.3, 0.3, 0.4, 0.4, 0.0], [0.05, 0.4, 0.6, 0.5, 1.0]]
BOX2 = [[0.0, 0.0, 1.0, 1.0, 0.0], [0.0, 0.0, 1.0, 1.0, 1.0], [0.1, 0.0, 0.9, 0.8, 1.0]]

#: ``CAMDViT(img_size=32, patch_size=8, embed_dim=32, depth=4, num_heads=4, decoder_num_heads=4)`` of
#: mumumu-wss/CAMD @ 537a7cb (models_CAMD.py; args: decoder_embed_dim 32, projector_depth 1, predictor_depth
#: 1, dis_lay [1, 3], select_top_k 2, neg_weight 0.02, loss_type CAMD), its ``forward_CAMD`` with the
#: engine's weighting (xi_1 1, xi_2 0.25, beta_dis 0.1), float32 on CPU, train mode; run with this project's
#: torch and timm 1.0.31 (``from turtle import update`` and ``torch._six`` stubbed,
#: ``timm.models.layers.helpers`` aliased to ``timm.layers``, ``np.float`` aliased to ``float``). Given
#: :func:`camd_model`'s state dict (``target_*`` -> ``mm_*``, ``projector`` / ``predictor`` ->
#: ``projector_decoder_blocks`` / ``predictor_decoder_blocks`` with TokenBatchNorm -> PermuteBN's ``bn``,
#: ``topk_attention`` -> ``multihead_attention_topk``, ``out`` -> ``fc_out``; its own position tables, equal
#: to facekit's), :func:`camd_batch` (boxes turned into its ``rel_pos_21`` as in
#: :func:`relative_embedding`), ``mm=0.9, update_mm=True``, and facekit's documented final LayerNorm (the
#: online and the EMA'd target backbone's ``norm``) put before ``decoder_embed`` / ``mm_decoder_embed``.
RELEASED = {
    "unigrad": 2.0965428352355957,
    "global": 1.4420437812805176,
    "agmd": 10.640865325927734,
    "loss": 2.563462257385254,
}


def fill_parameters(module: torch.nn.Module, seed: int) -> None:
    """Overwrite every parameter (frozen ones and the target's too), in name order, with seeded values:
    norm weights ``1 + 0.1·z``, other vectors ``0.1·z``, matrices and tokens ``z / sqrt(fan_in)``."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(module.named_parameters()):
            z = torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p.dtype)
            if p.ndim == 1:
                p.copy_(1 + 0.1 * z if "norm" in name and name.endswith("weight") else 0.1 * z)
            else:
                p.copy_(z / math.sqrt(p[0].numel()))


def camd_model(**overrides: float) -> CAMD:
    model = CAMD(
        "vit_small_patch16_224",
        TINY,
        decoder_dim=DEC_DIM,
        decoder_heads=DEC_HEADS,
        projector_depth=1,
        predictor_depth=1,
        num_masked=NUM_MASKED,
        distill_layers=LAYERS,
        **overrides,
    )
    fill_parameters(model, 0)
    return model.train()


def camd_batch() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(5)
    size = GRID * PATCH
    mask = torch.zeros(BATCH, GRID * GRID, dtype=torch.bool)
    for b in range(BATCH):
        mask[b, torch.randperm(GRID * GRID, generator=gen)[:NUM_MASKED]] = True
    return {
        "view1": torch.randn(BATCH, 3, size, size, generator=gen),
        "view2": torch.randn(BATCH, 3, size, size, generator=gen),
        "view1_box": torch.tensor(BOX1),
        "view2_box": torch.tensor(BOX2),
        "mask": mask,
    }


# ---------------------------------------------------------------- the computation written out

Weights = dict[str, torch.Tensor]


def sincos(positions: list[float], dim: int) -> torch.Tensor:
    """``[M, dim]``: ``[sin(p·ω_k), cos(p·ω_k)]``, ``ω_k = 10000^(−k/(dim/2))``, k < dim/2."""
    half = dim // 2
    omega = [10000.0 ** (-k / half) for k in range(half)]
    rows = [[math.sin(p * w) for w in omega] + [math.cos(p * w) for w in omega] for p in positions]
    return torch.tensor(rows, dtype=torch.float64)


def position_table(dim: int) -> torch.Tensor:
    """``[1 + N, dim]``: a zero cls row, then CAMD's 2-D table, the row's half before the column's."""
    rows = [float(n // GRID) for n in range(GRID * GRID)]
    cols = [float(n % GRID) for n in range(GRID * GRID)]
    table = torch.cat([sincos(rows, dim // 2), sincos(cols, dim // 2)], dim=1)
    return torch.cat([torch.zeros(1, dim, dtype=torch.float64), table.float().double()])


def relative_embedding(box1: list[float], box2: list[float]) -> torch.Tensor:
    """``[N, 2·Dd]``: released ``get_2d_sincos_pos_embed_relative`` from the dataset's ``rel_pos_21``.

    The released dataset flips before cropping, so a flipped view's left edge is ``1 − left − width`` of
    the source; ``delta_* = (view 2 − view 1) / view-1 size``, ``flip_delta_j = (1 − j1 − j2) / w1``.
    """
    t1, l1, h1, w1, f1 = box1
    t2, l2, h2, w2, f2 = box2
    j1 = 1 - l1 - w1 if f1 else l1
    j2 = 1 - l2 - w2 if f2 else l2
    di, dj, dh, dw = (t2 - t1) / h1 * GRID, (j2 - j1) / w1 * GRID, h2 / h1, w2 / w1
    flip_dj = (1 - j1 - j2) / w1 * GRID
    rows, cols = [], []
    for n in range(GRID * GRID):
        r, c = n // GRID + 0.5, n % GRID + 0.5
        rows.append(dh * r + di - 0.5)
        cols.append((flip_dj - dw * c if f1 != f2 else dw * c + dj) - 0.5)
    part = DEC_DIM // 2
    scales = [sincos([10 * math.log(s)] * len(rows), part) for s in (dh, dw)]
    return torch.cat([sincos(rows, part), sincos(cols, part), *scales], dim=1)


def linear(x: torch.Tensor, w: Weights, name: str) -> torch.Tensor:
    return x @ w[f"{name}.weight"].T + w[f"{name}.bias"]


def layer_norm(x: torch.Tensor, eps: float, w: Weights | None = None, name: str = "") -> torch.Tensor:
    mean = x.mean(-1, keepdim=True)
    out = (x - mean) / torch.sqrt(((x - mean) ** 2).mean(-1, keepdim=True) + eps)
    return out * w[f"{name}.weight"] + w[f"{name}.bias"] if w is not None else out


def batch_norm(x: torch.Tensor, w: Weights, name: str) -> torch.Tensor:
    """BatchNorm over every token of the batch (train mode: batch mean, biased variance, eps 1e-5)."""
    mean = x.mean((0, 1), keepdim=True)
    var = ((x - mean) ** 2).mean((0, 1), keepdim=True)
    return (x - mean) / torch.sqrt(var + 1e-5) * w[f"{name}.weight"] + w[f"{name}.bias"]


def attention(x: torch.Tensor, w: Weights, name: str, heads: int) -> torch.Tensor:
    """Self-attention of ``x [B, L, D]`` with ``{name}.qkv`` and ``{name}.proj``."""
    b, length, dim = x.shape
    q, k, v = linear(x, w, f"{name}.qkv").reshape(b, length, 3, heads, dim // heads).permute(2, 0, 3, 1, 4)
    weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(dim // heads), dim=-1)
    return linear((weights @ v).transpose(1, 2).reshape(b, length, dim), w, f"{name}.proj")


def block(x: torch.Tensor, w: Weights, name: str, heads: int, batch_norms: bool) -> torch.Tensor:
    """Pre-norm block: LayerNorm eps 1e-6 (encoder) or token BatchNorm (projector, predictor)."""

    def norm(y: torch.Tensor, which: str) -> torch.Tensor:
        return batch_norm(y, w, f"{name}.{which}") if batch_norms else layer_norm(y, 1e-6, w, f"{name}.{which}")

    x = x + attention(norm(x, "norm1"), w, f"{name}.attn", heads)
    hidden = F.gelu(linear(norm(x, "norm2"), w, f"{name}.mlp.fc1"))
    return x + linear(hidden, w, f"{name}.mlp.fc2")


def vit_by_hand(
    w: Weights, prefix: str, images: torch.Tensor, keep: list[list[int]] | None
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Conv patch embedding + position, the ``keep`` patches (ascending), cls (zero position) in front,
    the blocks (patch tokens after the distilled ones kept), then the final LayerNorm (facekit's)."""
    weight, bias = w[f"{prefix}.patch_embed.proj.weight"], w[f"{prefix}.patch_embed.proj.bias"]
    pos = position_table(DIM)
    sequences = []
    for b, img in enumerate(images):
        patches = [
            img[:, r * PATCH : (r + 1) * PATCH, c * PATCH : (c + 1) * PATCH] for r in range(GRID) for c in range(GRID)
        ]
        tokens = torch.einsum("nchw,dchw->nd", torch.stack(patches), weight) + bias + pos[1:]
        tokens = tokens[keep[b]] if keep is not None else tokens
        sequences.append(torch.cat([w[f"{prefix}.cls_token"][0] + pos[:1], tokens]))
    x = torch.stack(sequences)
    layers = []
    for i in range(TINY["depth"]):
        x = block(x, w, f"{prefix}.blocks.{i}", HEADS, batch_norms=False)
        if i in LAYERS:
            layers.append(x[:, 1:])
    return layers, layer_norm(x, 1e-6, w, f"{prefix}.norm")


def unigrad_by_hand(pred: torch.Tensor, target: torch.Tensor, normalize: bool) -> torch.Tensor:
    """``(mean ||p − t||² + 0.02 · mean pᵀ C p) / D``, ``C = tᵀt / M`` (t LayerNormed, no affine, eps 1e-5)."""
    p, t = pred.reshape(-1, pred.shape[-1]), target.reshape(-1, target.shape[-1])
    t = layer_norm(t, 1e-5) if normalize else t
    correlation = t.T @ t / len(t)
    positive = ((p - t) ** 2).sum(-1).mean()
    negative = torch.einsum("md,de,me->m", p, correlation, p).mean()
    return (positive + 0.02 * negative) / p.shape[-1]


def agmd_by_hand(w: Weights, local: list[torch.Tensor], glob: list[torch.Tensor]) -> torch.Tensor:
    """Per distilled block: every local token attends to its top-2 global tokens per head (softmax over
    those two scores, scale head_dim^-½), ``out`` projection; MSE of the token means; summed."""
    total = torch.zeros((), dtype=torch.float64)
    d = DIM // HEADS
    for lo, gl in zip(local, glob, strict=True):
        q, k, v = (linear(x, w, f"topk_attention.{n}") for x, n in ((lo, "query"), (gl, "key"), (gl, "value")))
        attended = torch.zeros_like(q)
        for b in range(lo.shape[0]):
            for h in range(HEADS):
                cols = slice(h * d, (h + 1) * d)
                scores = q[b, :, cols] @ k[b, :, cols].T / math.sqrt(d)  # [K, N]
                for i in range(scores.shape[0]):
                    best = sorted(range(scores.shape[1]), key=lambda j: float(scores[i, j].detach()), reverse=True)[:2]
                    weights = torch.softmax(scores[i, best], dim=0)
                    attended[b, i, cols] = sum(weights[n] * v[b, j, cols] for n, j in enumerate(best))
        out = linear(attended, w, "topk_attention.out")
        total = total + ((lo.mean(1) - out.mean(1)) ** 2).mean()
    return total


def camd_by_hand(
    model: CAMD, batch: dict[str, torch.Tensor], momentum: float, threshold: float = 1.0
) -> tuple[dict, Weights, Weights]:
    """The logged terms (AGMD weighted 0.1 below ``threshold``, else 0.01), the online weights (float64
    leaves, for gradients) and the target weights after the EMA step."""
    online = {
        n: p.detach().double().requires_grad_() for n, p in model.named_parameters() if not n.startswith("target_")
    }
    target = {
        n: momentum * p.detach().double() + (1 - momentum) * online[n.removeprefix("target_")].detach()
        for n, p in model.named_parameters()
        if n.startswith("target_")
    }
    view1, view2, mask = batch["view1"].double(), batch["view2"].double(), batch["mask"]
    keep = [[n for n in range(GRID * GRID) if not mask[b, n]] for b in range(BATCH)]

    local, tokens = vit_by_hand(online, "backbone", view1, keep)
    x = linear(tokens, online, "decoder_embed")
    x = block(x, online, "projector.0", DEC_HEADS, batch_norms=True)
    pos = position_table(DEC_DIM)
    rel = torch.stack([relative_embedding(BOX1[b], BOX2[b]) for b in range(BATCH)])
    queries = online["mask_token"][0] + linear(rel, online, "decoder_pos_mlp")
    visible_pos = torch.stack([pos[[1 + n for n in keep[b]]] for b in range(BATCH)])
    x = torch.cat([x[:, :1] + pos[0], x[:, 1:] + visible_pos, queries], dim=1)
    x = block(x, online, "predictor.0", DEC_HEADS, batch_norms=True)
    pred = linear(x[:, -GRID * GRID :], online, "decoder_pred")

    glob, tokens2 = vit_by_hand(target, "target_backbone", view2, None)
    y = linear(tokens2, target, "target_decoder_embed")
    target_tokens = block(y, target, "target_projector.0", DEC_HEADS, batch_norms=True)[:, 1:]

    unigrad = unigrad_by_hand(pred, target_tokens, normalize=True)
    global_ = unigrad_by_hand(pred.mean(0), target_tokens.mean(0), normalize=False)
    agmd = agmd_by_hand(online, local, glob)
    weight = 0.1 if agmd.detach().item() < threshold else 0.01
    loss = unigrad + 0.25 * global_ + weight * agmd
    terms = {"loss": loss, "unigrad": unigrad, "global": global_, "agmd": agmd, "agmd_weight": weight}
    return terms, online, target


# ---------------------------------------------------------------- the tests


@pytest.fixture(scope="module")
def golden() -> tuple[CAMD, dict, dict, Weights, Weights]:
    """The model after one forward + backward on :func:`camd_batch` (view 2 requiring a gradient), its
    outputs, and the written-out terms, online weights (with gradients) and EMA'd target weights."""
    model, batch = camd_model(), camd_batch()
    terms, online, target = camd_by_hand(model, batch, HP.momentum)
    terms["loss"].backward()
    batch["view1"].requires_grad_()
    batch["view2"].requires_grad_()
    out = model(batch, HP)
    out["loss"].backward()
    return model, {**out, "batch": batch}, terms, online, target


@pytest.mark.parametrize("name", ["loss", "unigrad", "global", "agmd", "agmd_weight"])
def test_forward_terms_match_the_written_out_camd(golden, name: str) -> None:
    _, out, terms, _, _ = golden
    assert out[name].item() == pytest.approx(float(torch.as_tensor(terms[name]).detach()), rel=2e-5, abs=1e-6)
    assert out["momentum"] == pytest.approx(HP.momentum)


def test_below_the_threshold_agmd_weighs_the_released_beta_dis() -> None:
    """The fixed batch's AGMD (≈ 10.6) is above the released threshold 1 (weight 0.01); with a threshold
    above it the forward weighs it 0.1 (the released ``beta_dis``)."""
    model = camd_model(distill_threshold=20.0)
    terms, _, _ = camd_by_hand(model, camd_batch(), HP.momentum, threshold=20.0)
    with torch.no_grad():
        out = model(camd_batch(), HP)
    assert terms["agmd_weight"] == 0.1 and out["agmd_weight"].item() == pytest.approx(0.1)
    assert out["loss"].item() == pytest.approx(terms["loss"].item(), rel=2e-5)


def test_forward_moves_the_target_to_the_ema_of_the_online_branch_first(golden) -> None:
    model, _, _, _, target = golden
    for name, p in model.named_parameters():
        if name.startswith("target_"):
            torch.testing.assert_close(p.detach().double(), target[name], rtol=1e-6, atol=1e-7, msg=name)
    assert {n.split(".")[0] for n in target} == {"target_backbone", "target_decoder_embed", "target_projector"}


def test_gradients_match_the_written_out_camd_and_stop_at_the_target(golden) -> None:
    model, out, _, online, _ = golden
    named = dict(model.named_parameters())
    for name in (
        "backbone.blocks.0.attn.qkv.weight",
        "backbone.blocks.3.mlp.fc2.weight",
        "backbone.cls_token",
        "backbone.norm.weight",
        "decoder_embed.weight",
        "projector.0.norm1.weight",
        "mask_token",
        "decoder_pos_mlp.weight",
        "predictor.0.attn.proj.weight",
        "decoder_pred.bias",
        "topk_attention.query.weight",
        "topk_attention.out.weight",
    ):
        torch.testing.assert_close(named[name].grad.double(), online[name].grad, rtol=1e-3, atol=1e-6, msg=name)
    assert named["backbone.patch_embed.proj.weight"].grad is None  # frozen at its random init, as released
    assert all(p.grad is None and not p.requires_grad for n, p in named.items() if n.startswith("target_"))
    assert out["batch"]["view2"].grad is None  # the target branch runs without a graph
    assert out["batch"]["view1"].grad is not None and out["batch"]["view1"].grad.abs().sum() > 0


def test_forward_matches_the_released_model(golden) -> None:
    _, out, _, _, _ = golden
    for name, value in RELEASED.items():
        assert out[name].item() == pytest.approx(value, rel=2e-5), name


def test_uint8_views_are_normalised_with_vggface2_statistics() -> None:
    """Views shipped as uint8 are normalised on the device: ``(x / 255 − mean) / std`` per channel."""
    batch = camd_batch()
    gen = torch.Generator().manual_seed(9)
    raw = {k: torch.randint(0, 256, batch[k].shape, generator=gen, dtype=torch.uint8) for k in ("view1", "view2")}
    mean, std = torch.tensor(VGGFACE2_MEAN).view(1, 3, 1, 1), torch.tensor(VGGFACE2_STD).view(1, 3, 1, 1)
    by_hand = {**batch, **{k: (v.float() / 255 - mean) / std for k, v in raw.items()}}
    with torch.no_grad():
        expected = camd_model()(by_hand, HP)
        got = camd_model()({**batch, **raw}, HP)
    for name in ("loss", "unigrad", "global", "agmd"):
        assert got[name].item() == pytest.approx(expected[name].item(), rel=1e-5), name
