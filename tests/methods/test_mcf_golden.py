"""MCF golden forward: the whole ``forward()`` against a computation written out here, and the released code.

A tiny MCF (ViT 32 px / patch 8 / 64-d / 2 blocks, decoder 32-d / 1 block, heads 64→32→16 and 16→32→16,
a 12-block 48-d teacher at 224 px with the default layers 2, 5, 8, 11) in float64, every weight drawn
from a seeded generator (:func:`fill_`), the target differing from the online network, a fixed batch of
four images and fixed masks. The reference (:func:`reference`) assembles the forward from the paper and
the released ``models_mcf.py`` / ``models_moco.py`` using only the model's parameters and its timm blocks
and patch embeddings: MAE's 2-D sin-cos positions, gathering the visible patches, the decoder's mask tokens
and positions, the nearest resize to the teacher's 224 px, token-axis normalised teacher maps, the
momentum step of the target *before* its keys, MoCo-v3's BatchNorm heads and InfoNCE × 2T.

``RELEASED`` holds the same forward's values from the released code (``nomewang/MCF`` @ bc8706f), run
outside the project with this file's :func:`golden_model` / :func:`golden_images` / :func:`fill_`
copied into the released ``MaskedAutoencoderViT`` (encoder 64-d / depth 2 / 4 heads, decoder 32-d /
depth 1, projector and predictor rebuilt with its ``_build_mlp(2, ·, 32, ·)``, ``perceptual_loss.model``
a released ``models_moco.VisionTransformer`` of 48-d / 12 blocks / 3 heads), shims only for what no
longer runs (timm's ``Block`` without ``qk_scale``, ``np.float``, ``.cuda()``, a one-process gloo
group): ``torch.manual_seed(SEED); loss, _, _ = released(images, mask_ratio=0.75)``, torch 2.14 CPU,
float64 (``python released_mcf.py``, a script outside the project that builds both models, maps the
state dicts by name and prints the loss and both terms; the released and facekit forwards agreed to the
last digit, their moved targets to 1e-15 and their gradients to 1e-14 relative).
"""

from __future__ import annotations

import copy
import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from facekit.methods.base import StepValues
from facekit.methods.mcf import MCF

ENCODER = {"img_size": 32, "patch_size": 8, "embed_dim": 64, "depth": 2, "num_heads": 4}
TEACHER = {"embed_dim": 48, "depth": 12, "num_heads": 3}  # vit_tiny_patch16_224's 224 px, patch 16
GRID, PATCH, BATCH, SEED = 4, 8, 4, 7
HP = StepValues(step=0, epoch=0.0, progress=0.0, lr=1e-3, weight_decay=0.0, momentum=0.5)  # MCF ignores it

#: ``nomewang/MCF`` @ bc8706f on :func:`golden_model` (see the module docstring): the first forward's terms,
#: and the total of a second forward (``torch.manual_seed(SEED + 1)``) after the target moved a second time.
RELEASED = {"loss": 22.775762474130115, "loss_perceptual": 0.022311896574623843, "loss_contrastive": 0.4638658995062702}
RELEASED_SECOND_LOSS = 22.825161792227927


def golden_model(**kwargs) -> MCF:
    """The tiny MCF in float64 with every parameter from :func:`fill_` (no timm / facekit init involved)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "MCF perceptual teacher has no checkpoint")
        model = MCF(
            backbone_kwargs=ENCODER,
            decoder_dim=32,
            decoder_depth=1,
            decoder_heads=4,
            proj_hidden_dim=32,
            proj_dim=16,
            teacher_arch="vit_tiny_patch16_224",
            teacher_kwargs=TEACHER,
            **kwargs,
        )
    model.double().train()
    fill_(model, torch.Generator().manual_seed(0))
    return model


@torch.no_grad()
def fill_(model: nn.Module, generator: torch.Generator) -> None:
    """Every parameter, in ``named_parameters`` order (targets included, so they differ from the online
    network): norm weights ``1 + 0.1·z``, other vectors ``0.1·z``, matrices ``z / √fan_in``, tokens and
    positions ``0.5·z`` (z standard normal, float64)."""
    for name, p in model.named_parameters():
        z = torch.randn(p.shape, generator=generator, dtype=torch.float64)
        leaf = name.rsplit(".", 1)[-1]
        if leaf in ("cls_token", "mask_token", "pos_embed"):
            value = 0.5 * z
        elif p.dim() == 1:
            value = 1 + 0.1 * z if leaf == "weight" else 0.1 * z
        else:
            value = z / math.sqrt(p[0].numel())
        p.copy_(value)


def golden_images() -> torch.Tensor:
    """The fixed batch ``[4, 3, 32, 32]`` (float64)."""
    return torch.randn(BATCH, 3, 32, 32, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


# --- the reference, written out ------------------------------------------------------------------------


def sincos(dim: int) -> torch.Tensor:
    """MAE's fixed 2-D sin-cos positions ``[G·G, dim]``: patch n = row·G + col gets
    ``[sin(col·ω), cos(col·ω), sin(row·ω), cos(row·ω)]``, ω_k = 10000^(−k / (dim/4)), k < dim/4; rounded to
    float32, as the released code stores them."""
    omega = 1.0 / 10000 ** (np.arange(dim // 4) / (dim / 4))
    rows = []
    for n in range(GRID * GRID):
        row, col = divmod(n, GRID)
        x, y = col * omega, row * omega
        rows.append(np.concatenate([np.sin(x), np.cos(x), np.sin(y), np.cos(y)]))
    return torch.tensor(np.stack(rows), dtype=torch.float32).double()


def layer_norm(x: torch.Tensor, norm: nn.LayerNorm) -> torch.Tensor:
    mean = x.mean(-1, keepdim=True)
    var = (x - mean).pow(2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + norm.eps) * norm.weight + norm.bias


def batch_norm(x: torch.Tensor, norm: nn.BatchNorm1d) -> torch.Tensor:
    """Training-mode BatchNorm over the batch (biased variance), affine if the layer is."""
    y = (x - x.mean(0)) / torch.sqrt(x.var(0, unbiased=False) + norm.eps)
    return y * norm.weight + norm.bias if norm.affine else y


def encode(vit: nn.Module, images: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """``[B, 1 + K, D]``: patch tokens + positions, the ``keep`` ones, cls (position 0) in front, blocks, norm."""
    tokens = vit.patch_embed(images) + sincos(vit.embed_dim)  # [B, N, D]
    visible = torch.stack([tokens[b, keep[b]] for b in range(len(keep))])  # [B, K, D]
    x = torch.cat([vit.cls_token.expand(len(keep), 1, -1), visible], dim=1)
    for block in vit.blocks:
        x = block(x)
    return layer_norm(x, vit.norm)


def decode(decoder: nn.Module, latent: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """``[B, N, p·p·3]``: embed, visible tokens at their places among mask tokens, + positions on all N
    patches, the embedded cls (no position) in front, blocks, norm, pixel head, cls dropped."""
    embedded = latent @ decoder.embed.weight.T + decoder.embed.bias  # [B, 1 + K, Dd]
    batch, dim = embedded.shape[0], embedded.shape[-1]
    rows = []
    for b in range(batch):
        row = [decoder.mask_token[0, 0]] * (GRID * GRID)
        for j, n in enumerate(keep[b].tolist()):
            row[n] = embedded[b, 1 + j]
        rows.append(torch.stack(row))
    x = torch.cat([embedded[:, :1], torch.stack(rows) + sincos(dim)], dim=1)
    for block in decoder.blocks:
        x = block(x)
    return (layer_norm(x, decoder.norm) @ decoder.pred.weight.T + decoder.pred.bias)[:, 1:]


def to_image(pred: torch.Tensor) -> torch.Tensor:
    """``[B, N, p·p·3]`` → ``[B, 3, 32, 32]``: patch (row, col), value (u, v, c) at pixel (row·p + u, col·p + v)."""
    x = pred.reshape(len(pred), GRID, GRID, PATCH, PATCH, 3)
    return torch.einsum("brcuvk->bkrucv", x).reshape(len(pred), 3, GRID * PATCH, GRID * PATCH)


def teacher_maps(teacher: nn.Module, images: torch.Tensor) -> list[torch.Tensor]:
    """Nearest resize to 224 (source pixel ⌊d·32 / 224⌋), then [cls, patches] + positions through the
    blocks; after blocks 2, 5, 8, 11 the ``[B, 197, C]`` map divided by its norm over the 197 tokens."""
    index = torch.arange(224) * 32 // 224
    big = images[:, :, index][:, :, :, index]
    x = torch.cat([teacher.cls_token.expand(len(big), 1, -1), teacher.patch_embed(big)], dim=1) + teacher.pos_embed
    maps = []
    for i, block in enumerate(teacher.blocks):
        x = block(x)
        if i in (2, 5, 8, 11):
            maps.append(x / x.norm(dim=1, keepdim=True))
    return maps


def head(x: torch.Tensor, mlp: nn.Sequential, last_bn: bool) -> torch.Tensor:
    """MoCo-v3's 2-layer head: Linear (no bias), BN, ReLU, Linear (no bias), [BN without affine]."""
    hidden = torch.relu(batch_norm(x @ mlp[0].weight.T, mlp[1]))
    out = hidden @ mlp[3].weight.T
    return batch_norm(out, mlp[4]) if last_bn else out


def info_nce(q: torch.Tensor, k: torch.Tensor, temperature: float) -> torch.Tensor:
    """Mean over i of −log softmax_j(q̂_i · k̂_j / T) at j = i, times 2T."""
    qn, kn = q / q.norm(dim=1, keepdim=True), k / k.norm(dim=1, keepdim=True)
    logits = qn @ kn.T / temperature
    return -(logits.diagonal() - logits.logsumexp(dim=1)).mean() * (2 * temperature)


def keeps() -> tuple[torch.Tensor, torch.Tensor]:
    """Online then target visible patches as drawn after ``torch.manual_seed(SEED)``: per row, the 4 of 16
    patches with the smallest uniform noise."""
    torch.manual_seed(SEED)
    online_noise, target_noise = torch.rand(BATCH, GRID * GRID), torch.rand(BATCH, GRID * GRID)
    return online_noise.argsort(dim=1)[:, :4], target_noise.argsort(dim=1)[:, :4]


def reference(model: MCF, images: torch.Tensor) -> tuple[dict[str, torch.Tensor], MCF]:
    """The forward on a copy of ``model``: its terms, and the copy (its target moved by 0.99, its grads set)."""
    ref = copy.deepcopy(model)
    keep, target_keep = keeps()
    latent = encode(ref.encoder, images, keep)
    pred = decode(ref.decoder, latent, keep)
    q = head(head(latent[:, 0], ref.projector, last_bn=True), ref.predictor, last_bn=False)
    with torch.no_grad():
        for target, online in ((ref.target_encoder, ref.encoder), (ref.target_projector, ref.projector)):
            online_params = dict(online.named_parameters())
            for name, t in target.named_parameters():
                t.copy_(0.99 * t + 0.01 * online_params[name])
        k = head(encode(ref.target_encoder, images, target_keep)[:, 0], ref.target_projector, last_bn=True)
        target_maps = teacher_maps(ref.teacher.model, images)
    contrastive = info_nce(q, k, 0.2)
    pred_maps = teacher_maps(ref.teacher.model, to_image(pred))
    perceptual = sum(((p - t) ** 2).mean() for p, t in zip(pred_maps, target_maps, strict=True))
    terms = {"loss": 1000 * perceptual + contrastive, "loss_perceptual": perceptual, "loss_contrastive": contrastive}
    if model.pixel_loss_weight > 0:
        patches = torch.einsum("bkrucv->brcuvk", images.reshape(BATCH, 3, GRID, PATCH, GRID, PATCH))
        patches = patches.reshape(BATCH, GRID * GRID, -1)
        if model.norm_pix_loss:
            patches = (patches - patches.mean(-1, keepdim=True)) / torch.sqrt(patches.var(-1, keepdim=True) + 1e-6)
        masked = torch.ones(BATCH, GRID * GRID, dtype=torch.bool)
        for b in range(BATCH):
            masked[b, keep[b]] = False
        pixel = ((pred - patches) ** 2).mean(-1)[masked].mean()
        terms["loss_pixel"] = pixel
        terms["loss"] = terms["loss"] + model.pixel_loss_weight * pixel
    terms["loss"].backward()
    return {name: value.detach() for name, value in terms.items()}, ref


def forward(model: MCF, images: torch.Tensor) -> dict[str, torch.Tensor]:
    torch.manual_seed(SEED)
    return model({"image": images}, HP)


# --- the tests -----------------------------------------------------------------------------------------


def test_forward_matches_the_written_out_computation_terms_gradients_and_target_step() -> None:
    model, images = golden_model(), golden_images()
    online = {n: p.clone() for n, p in model.named_parameters() if p.requires_grad}
    targets = {n: p.clone() for n, p in model.named_parameters() if n.startswith("target_")}
    expected, ref = reference(model, images)
    out = forward(model, images)
    assert set(out) == set(expected)
    for name, value in expected.items():
        torch.testing.assert_close(out[name].detach(), value, rtol=1e-10, atol=1e-12, msg=name)
    out["loss"].backward()
    ref_params = dict(ref.named_parameters())
    for name, p in model.named_parameters():  # gradients: the same on every online parameter, none elsewhere
        if name in online:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
            torch.testing.assert_close(p.grad, ref_params[name].grad, rtol=1e-8, atol=1e-12, msg=name)
            assert torch.equal(p, online[name])  # the forward leaves the online network alone
        else:
            assert p.grad is None, name  # target and teacher: no gradient
    for name, t0 in targets.items():  # the target moved once, by 0.99, towards the online network
        o0 = online[name.replace("target_encoder.", "encoder.").replace("target_projector.", "projector.")]
        torch.testing.assert_close(model.get_parameter(name), 0.99 * t0 + 0.01 * o0, rtol=0, atol=1e-15)


def test_forward_matches_the_released_code_also_on_the_second_micro_batch() -> None:
    model, images = golden_model(), golden_images()
    out = forward(model, images)
    for name, value in RELEASED.items():
        assert out[name].item() == pytest.approx(value, rel=1e-9), name
    torch.manual_seed(SEED + 1)  # no optimizer step between: the target moves again, as with accumulation
    assert model({"image": images}, HP)["loss"].item() == pytest.approx(RELEASED_SECOND_LOSS, rel=1e-9)


def test_pixel_option_matches_the_written_out_masked_mse() -> None:
    model = golden_model(pixel_loss_weight=0.5, norm_pix_loss=True)
    images = golden_images()
    expected, _ = reference(model, images)
    out = forward(model, images)
    assert set(out) == {"loss", "loss_perceptual", "loss_contrastive", "loss_pixel"}
    for name, value in expected.items():
        torch.testing.assert_close(out[name].detach(), value, rtol=1e-10, atol=1e-12, msg=name)


def test_the_released_keys_differ_from_the_keys_of_an_unmoved_target() -> None:
    """The golden target is far enough from the online network that moving it changes the loss, so the
    golden test sees where (and by how much) the target moves."""
    model, images = golden_model(), golden_images()
    moved = forward(model, images)["loss_contrastive"].item()
    unmoved = forward(golden_model(momentum=1.0), images)["loss_contrastive"].item()
    assert abs(moved - unmoved) > 1e-6
