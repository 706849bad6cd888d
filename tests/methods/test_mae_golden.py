"""Golden forward tests of MAE and FaceT's MAE: the whole ``forward()`` loss against a computation written out
here from the papers and the released code (explicit patch cutting, masking by noise order, position tables,
attention and MLP blocks, norm-pix targets, loss on masked patches), and against the released models.

Every parameter is overwritten from a seeded generator (:func:`fill_parameters`), so the numbers do not
depend on facekit's initialisation; the masking noise is the first ``torch.rand(B, N)`` after a fixed seed.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from facekit.methods.base import StepValues
from facekit.methods.mae import MAE, facet_mae

HP = StepValues(step=0, epoch=0.0, progress=0.0, lr=1e-3, weight_decay=0.0, momentum=0.99)
GRID, PATCH = 4, 4  # 16 × 16 images, 16 patches
MAE_ENCODER = {"img_size": 16, "patch_size": PATCH, "embed_dim": 32, "depth": 2, "num_heads": 4}
MAE_DECODER = {"decoder_dim": 24, "decoder_depth": 2, "decoder_heads": 4}
FACET_ENCODER = {"img_size": 16, "patch_size": PATCH, "embed_dim": 32, "depth": 2, "num_heads": 4}
FACET_DECODER = {"decoder_dim": 24, "decoder_depth": 1, "decoder_heads": 4}
NOISE_SEED = 7

#: ``MaskedAutoencoderViT(img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=4, decoder_embed_dim=24,
#: decoder_depth=2, decoder_num_heads=4, norm_layer=LayerNorm(eps=1e-6), norm_pix_loss=...)`` of
#: facebookresearch/mae @ efb2a80 (models_mae.py; run with this project's torch and timm 1.0.31, its Block
#: calls' ``qk_scale`` dropped and ``np.float`` aliased to ``float``), float64, given :func:`mae_model`'s
#: state dict (``encoder.*`` -> ``*``; ``decoder.embed/pred/norm/blocks/mask_token`` -> ``decoder_embed``,
#: ``decoder_pred``, ``decoder_norm``, ``decoder_blocks``, ``mask_token``; its own position tables, equal to
#: facekit's), ``forward(images(), mask_ratio=0.75)`` right after ``torch.manual_seed(NOISE_SEED)``.
RELEASED_MAE_LOSS = {False: 1.7972526749000357, True: 1.736902575340401}
#: ``MAE(encoder, decoder_dim=24, masking_ratio=0.75, ntype="deepnorm")`` of
#: zyainfal/Joint-Holistic-and-Masked-Face-Recognition @ 3126602 (code/VIT/mim_pytorch.py; einops 0.8.2,
#: ``Tensor.cuda`` made a no-op), encoder ``VisionTransformer(img_size=16, patch_size=4, embed_dim=32,
#: depth=2, num_heads=4, pos_embed="learn", ntype="deepnorm")``, its decoder replaced by
#: ``VisionTransformer(img_size=16, patch_size=4, embed_dim=24, depth=1, num_heads=4, mlp_ratio=3.0,
#: ntype="deepnorm")`` (the released one is fixed at 112 px / 8 blocks), float64, given :func:`facet_model`'s
#: state dict (``patch_embed.proj`` -> ``patch_embed.to_token``, ``decoder.embed`` -> ``enc_to_dec``,
#: ``decoder.pred`` -> ``to_pixels``), ``forward(images())`` with ``torch.rand`` returning ``1 − noise()``
#: (it hides the lowest noise, facekit keeps it: the same patches are hidden). Its position table is
#: computed in float32, hence the 1e-8 tolerance.
RELEASED_FACET_LOSS = 2.0417971625225766


def fill_parameters(module: nn.Module, seed: int) -> None:
    """Overwrite every parameter, in name order, with seeded values: LayerNorm-like weights ``1 + 0.1·z``,
    other vectors ``0.1·z``, matrices and tokens ``z / sqrt(fan_in)`` (z standard normal)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(module.named_parameters()):
            z = torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p.dtype)
            if p.ndim == 1:
                p.copy_(1 + 0.1 * z if "norm" in name and name.endswith("weight") else 0.1 * z)
            else:
                p.copy_(z / math.sqrt(p[0].numel()))


def mae_model(norm_pix: bool) -> MAE:
    model = MAE(backbone_kwargs=MAE_ENCODER, norm_pix_loss=norm_pix, **MAE_DECODER).double()
    fill_parameters(model, 0)
    return model


def facet_model() -> MAE:
    model = facet_mae(backbone_kwargs=FACET_ENCODER, **FACET_DECODER).double()
    fill_parameters(model, 1)
    return model


def images() -> torch.Tensor:
    return torch.randn(2, 3, GRID * PATCH, GRID * PATCH, generator=torch.Generator().manual_seed(3)).double()


def noise() -> torch.Tensor:
    torch.manual_seed(NOISE_SEED)
    return torch.rand(2, GRID * GRID)


# ---------------------------------------------------------------- the computation written out


def sincos_table(dim: int, grid: int, rows_first: bool) -> torch.Tensor:
    """``[G², dim]``: per half ``[sin(pos·ω_k), cos(pos·ω_k)]``, ``ω_k = 10000^(−k/(dim/4))``; MAE's halves
    are (column, row), FaceT's ``PositionEmbed2D`` (row, column). Token ``r·G + c``."""
    quarter = dim // 4
    table = torch.zeros(grid * grid, dim, dtype=torch.float64)
    for r in range(grid):
        for c in range(grid):
            first, second = (r, c) if rows_first else (c, r)
            for k in range(quarter):
                omega = 10000.0 ** (-k / quarter)
                table[r * grid + c, k] = math.sin(first * omega)
                table[r * grid + c, quarter + k] = math.cos(first * omega)
                table[r * grid + c, 2 * quarter + k] = math.sin(second * omega)
                table[r * grid + c, 3 * quarter + k] = math.cos(second * omega)
    return table.float().double()  # both codes store the table in float32


def cut_patches(img: torch.Tensor) -> torch.Tensor:
    """``[3, H, W]`` -> ``[N, 3, p, p]``, patches in row-major order."""
    return torch.stack(
        [img[:, r * PATCH : (r + 1) * PATCH, c * PATCH : (c + 1) * PATCH] for r in range(GRID) for c in range(GRID)]
    )


def pixels(patches: torch.Tensor) -> torch.Tensor:
    """``[N, 3, p, p]`` -> ``[N, p·p·3]``: pixel rows, then pixel columns, then channels (both codes' layout)."""
    return patches.permute(0, 2, 3, 1).reshape(len(patches), -1)


def linear(x: torch.Tensor, layer: nn.Linear) -> torch.Tensor:
    return x @ layer.weight.T + layer.bias


def layer_norm(x: torch.Tensor, norm: nn.LayerNorm, eps: float) -> torch.Tensor:
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps) * norm.weight + norm.bias


def attention(x: torch.Tensor, attn: nn.Module, heads: int) -> torch.Tensor:
    """Multi-head self-attention of ``x [L, D]`` with the block's ``qkv`` and ``proj`` layers."""
    length, dim = x.shape
    q, k, v = linear(x, attn.qkv).reshape(length, 3, heads, dim // heads).permute(1, 2, 0, 3)  # [H, L, d] each
    weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(dim // heads), dim=-1)
    return linear((weights @ v).transpose(0, 1).reshape(length, dim), attn.proj)


def mlp(x: torch.Tensor, block: nn.Module) -> torch.Tensor:
    return linear(F.gelu(linear(x, block.mlp.fc1)), block.mlp.fc2)


def pre_norm_block(x: torch.Tensor, block: nn.Module, heads: int) -> torch.Tensor:
    """timm / MAE: ``x + Attn(LN(x))``, ``x + MLP(LN(x))``, LayerNorm eps 1e-6."""
    x = x + attention(layer_norm(x, block.norm1, 1e-6), block.attn, heads)
    return x + mlp(layer_norm(x, block.norm2, 1e-6), block)


def deepnorm_block(x: torch.Tensor, block: nn.Module, heads: int, depth: int) -> torch.Tensor:
    """FaceT's DeepNorm: ``LN(α·x + Attn(x))``, ``LN(α·x + MLP(x))``, α = (2·depth)^¼, LayerNorm eps 1e-5."""
    alpha = (2 * depth) ** 0.25
    x = layer_norm(alpha * x + attention(x, block.attn, heads), block.norm1, 1e-5)
    return layer_norm(alpha * x + mlp(x, block), block.norm2, 1e-5)


def masked_patch_loss(pred: torch.Tensor, target: torch.Tensor, masked: list[int], norm_pix: bool) -> torch.Tensor:
    """Sum over the masked patches of the per-patch mean squared error (targets standardised per patch with
    the unbiased variance + 1e-6 under ``norm_pix``); the caller divides by the number of masked patches."""
    total = torch.zeros((), dtype=torch.float64)
    for n in masked:
        t = target[n]
        if norm_pix:
            t = (t - t.mean()) / torch.sqrt(((t - t.mean()) ** 2).sum() / (len(t) - 1) + 1e-6)
        total = total + ((pred[n] - t) ** 2).mean()
    return total


def kept_and_masked(noise_row: torch.Tensor, num_keep: int) -> tuple[list[int], list[int]]:
    """MAE's rule: the ``num_keep`` patches of lowest noise are seen, in ascending noise order."""
    order = sorted(range(len(noise_row)), key=lambda n: float(noise_row[n]))
    return order[:num_keep], sorted(order[num_keep:])


def mae_loss_by_hand(model: MAE, imgs: torch.Tensor, noise: torch.Tensor, norm_pix: bool) -> torch.Tensor:
    """MAE (models_mae.py): conv patch embedding + column-first sin-cos, keep 25 % by noise, cls (zero
    position) in front, pre-norm blocks, final LN; decoder: embed, mask tokens at the hidden places, decoder
    sin-cos on every patch token, cls in front, blocks, LN, pixel head; MSE on the masked patches."""
    enc, dec = model.encoder, model.decoder
    heads, dec_heads = MAE_ENCODER["num_heads"], MAE_DECODER["decoder_heads"]
    num = GRID * GRID
    num_keep = int(num * 0.25)
    enc_pos = sincos_table(MAE_ENCODER["embed_dim"], GRID, rows_first=False)
    dec_pos = sincos_table(MAE_DECODER["decoder_dim"], GRID, rows_first=False)
    conv = enc.patch_embed.proj
    total, count = torch.zeros((), dtype=torch.float64), 0
    for b in range(len(imgs)):
        patches = cut_patches(imgs[b])  # [N, 3, p, p]
        tokens = torch.einsum("nchw,dchw->nd", patches, conv.weight) + conv.bias + enc_pos
        keep, masked = kept_and_masked(noise[b], num_keep)
        x = torch.cat([enc.cls_token[0], tokens[keep]])  # the cls slot's position is zero
        for block in enc.blocks:
            x = pre_norm_block(x, block, heads)
        x = linear(layer_norm(x, enc.norm, 1e-6), dec.embed)
        seq = [x[1 + keep.index(n)] if n in keep else dec.mask_token[0, 0] for n in range(num)]
        y = torch.cat([x[:1], torch.stack(seq) + dec_pos])
        for block in dec.blocks:
            y = pre_norm_block(y, block, dec_heads)
        pred = linear(layer_norm(y, dec.norm, 1e-6), dec.pred)[1:]
        total = total + masked_patch_loss(pred, pixels(patches), masked, norm_pix)
        count += len(masked)
    return total / count


def facet_loss_by_hand(model: MAE, imgs: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """FaceT (mim_pytorch.MAE): Linear patch embedding on (p1 p2 c) pixels + learned positions, keep 25 %,
    DeepNorm encoder blocks (no final norm, no cls); decoder: ``enc_to_dec`` on the seen tokens (no decoder
    position), mask tokens + row-first sin-cos at the hidden places, DeepNorm blocks, ``to_pixels``; plain
    MSE over the masked patches."""
    enc, dec = model.encoder, model.decoder
    heads, dec_heads = FACET_ENCODER["num_heads"], FACET_DECODER["decoder_heads"]
    num = GRID * GRID
    num_keep = num - int(0.75 * num)
    dec_pos = sincos_table(FACET_DECODER["decoder_dim"], GRID, rows_first=True)
    total, count = torch.zeros((), dtype=torch.float64), 0
    for b in range(len(imgs)):
        target = pixels(cut_patches(imgs[b]))  # [N, 48]
        tokens = linear(target, enc.patch_embed.proj) + enc.pos_embed[0]
        keep, masked = kept_and_masked(noise[b], num_keep)
        x = tokens[keep]
        for block in enc.blocks:
            x = deepnorm_block(x, block, heads, FACET_ENCODER["depth"])
        x = linear(x, dec.embed)
        seq = [x[keep.index(n)] if n in keep else dec.mask_token[0, 0] + dec_pos[n] for n in range(num)]
        y = torch.stack(seq)
        for block in dec.blocks:
            y = deepnorm_block(y, block, dec_heads, FACET_DECODER["decoder_depth"])
        total = total + masked_patch_loss(linear(y, dec.pred), target, masked, norm_pix=False)
        count += len(masked)
    return total / count


# ---------------------------------------------------------------- the tests


@pytest.mark.parametrize("norm_pix", [False, True])
def test_mae_forward_matches_the_written_out_mae(norm_pix: bool) -> None:
    model = mae_model(norm_pix)
    torch.manual_seed(NOISE_SEED)
    out = model({"image": images()}, HP)
    assert set(out) == {"loss"}
    expected = mae_loss_by_hand(model, images(), noise(), norm_pix)
    assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-9)


@pytest.mark.parametrize("norm_pix", [False, True])
def test_mae_forward_matches_the_released_model(norm_pix: bool) -> None:
    model = mae_model(norm_pix)
    torch.manual_seed(NOISE_SEED)
    loss = model({"image": images()}, HP)["loss"]
    assert loss.item() == pytest.approx(RELEASED_MAE_LOSS[norm_pix], rel=1e-9)


def test_facet_forward_matches_the_written_out_facet_mae() -> None:
    model = facet_model()
    torch.manual_seed(NOISE_SEED)
    out = model({"image": images()}, HP)
    assert set(out) == {"loss"}
    expected = facet_loss_by_hand(model, images(), noise())
    assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-9)


def test_facet_forward_matches_the_released_model() -> None:
    model = facet_model()
    torch.manual_seed(NOISE_SEED)
    loss = model({"image": images()}, HP)["loss"]
    assert loss.item() == pytest.approx(RELEASED_FACET_LOSS, rel=1e-8)  # its table is computed in float32
