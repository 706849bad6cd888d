"""DINO golden tests: the whole ``forward()`` (loss and logged terms), the stop-gradient, the step after it and
the local crops' position embeddings against computations written out here, plus the released defaults.

Reference values from the released code (facebookresearch/dino @ 7c446df) were obtained by running its
``main_dino.DINOLoss``, ``utils.MultiCropWrapper``, ``vision_transformer.VisionTransformer`` and
``vision_transformer.DINOHead`` outside this project on the same weights and views (loaded from
:func:`_golden_dino` / :func:`_golden_batch`), in float64, with a one-process gloo group for the centre's
``all_reduce``::

    student = MultiCropWrapper(VisionTransformer(img_size=[32], patch_size=8, embed_dim=32, depth=2,
                               num_heads=2, qkv_bias=True), DINOHead(32, 64, hidden_dim=48, bottleneck_dim=16))
    (teacher likewise; backbone keys as facekit's; head mlp.0/3/6 → mlp.0/2/4, last_layer.weight_g / weight_v
    ← parametrizations.weight.original0 / original1)
    loss_fn = DINOLoss(64, 4, 0.04, 0.07, 3, 5); loss_fn.center = center   # schedule[1] = 0.055
    loss = loss_fn(student([g0, g1, l0, l1]), teacher([g0, g1]), epoch=1)
"""

from __future__ import annotations

import inspect
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from facekit.data.views import IMAGENET_MEAN, IMAGENET_STD
from facekit.methods.base import StepValues
from facekit.methods.dino import DINO, DINO_FACE_BACKBONE, DINONetwork, dino_loss
from facekit.nn.pos_embed import interpolate_pos_embed
from facekit.nn.vit import ViT

TINY = dict(img_size=32, embed_dim=32, depth=2, num_heads=2, drop_path_rate=0.0)  # 4 × 4 tokens of 8 px
HEAD = dict(out_dim=64, head_hidden_dim=48, head_bottleneck_dim=16)
BATCH = 3
TEACHER_TEMP = 0.055  # the released schedule linspace(0.04, 0.07, 3) at epoch 1

#: The released code's numbers on :func:`_golden_dino` / :func:`_golden_batch` (see the module docstring):
#: the loss, and the centre after the step (entries 0, 1, 63).
RELEASED_LOSS = 4.689642258259
RELEASED_CENTER = (-0.0853686487, 0.0347449292, 0.2123893291)


def _hp(momentum: float = 0.996, **extra: float) -> StepValues:
    return StepValues(step=0, epoch=1.0, progress=0.0, lr=1e-3, weight_decay=0.0, momentum=momentum, extra=extra)


def set_weights(net: nn.Module, seed: int) -> None:
    """Every parameter from its own seeded draw in name order (independent of how the modules initialise):
    LayerNorm scales ``1 + 0.1·N``, matrices ``N / √fan_in``, the rest ``0.5·N``; the head's weight-norm
    magnitude stays 1 (DINO fixes it)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(net.named_parameters()):
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float64)
            if name.endswith("original0"):
                continue
            if "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.1 * noise)
            elif p.ndim >= 2 and name.endswith(("weight", "original1")):
                p.copy_(noise / math.sqrt(p[0].numel()))
            else:
                p.copy_(0.5 * noise)


def _golden_dino() -> DINO:
    """A 2-block ViT (32 px, 8 px patches) with a 64-way head, in float64; student and teacher with different
    weights, a non-zero centre."""
    method = DINO(backbone_kwargs=TINY, local_size=16, n_local=2, **HEAD).double()
    set_weights(method.student, seed=1)
    set_weights(method.teacher, seed=2)
    gen = torch.Generator().manual_seed(3)
    method.center.copy_(0.3 * torch.randn(1, HEAD["out_dim"], generator=gen, dtype=torch.float64))
    return method


def _golden_batch() -> dict[str, torch.Tensor]:
    """Two global views (32 px) and two local views (16 px) of 3 faces, already normalised (float64)."""
    gen = torch.Generator().manual_seed(4)
    sizes = {"global_0": 32, "global_1": 32, "local_0": 16, "local_1": 16}
    return {name: torch.randn(BATCH, 3, s, s, generator=gen, dtype=torch.float64) for name, s in sizes.items()}


# ---------------------------------------------------------------- the reference, written out


def _cubic(distance: float, a: float = -0.75) -> float:
    """Keys' cubic convolution kernel (a = −0.75, PyTorch's bicubic)."""
    d = abs(distance)
    if d <= 1:
        return (a + 2) * d**3 - (a + 3) * d**2 + 1
    return a * d**3 - 5 * a * d**2 + 8 * a * d - 4 * a if d < 2 else 0.0


def bicubic_by_hand(table: torch.Tensor, out_hw: tuple[int, int], scale: tuple[float, float]) -> torch.Tensor:
    """``table [G, G, D]`` → ``[h, w, D]``: output pixel i reads source coordinate ``(i + ½) / scale − ½``,
    four taps per axis with Keys' weights, indices clamped at the border (explicit loops)."""
    side = table.shape[0]

    def taps(i: int, s: float) -> list[tuple[int, float]]:
        src = (i + 0.5) / s - 0.5
        base = math.floor(src)
        return [(min(max(base + k, 0), side - 1), _cubic(src - (base + k))) for k in (-1, 0, 1, 2)]

    rows = []
    for i in range(out_hw[0]):
        row = []
        for j in range(out_hw[1]):
            value = torch.zeros_like(table[0, 0])
            for r, wr in taps(i, scale[0]):
                for c, wc in taps(j, scale[1]):
                    value = value + wr * wc * table[r, c]
            row.append(value)
        rows.append(torch.stack(row))
    return torch.stack(rows)


def _cls_features(vit: ViT, images: torch.Tensor) -> torch.Tensor:
    """``images [N, 3, H, W]`` → the normed cls token ``[N, D]``: conv patch embedding, positions (the
    table, or DINO's bicubic with the +0.1 scale for other grids), cls with position 0, the blocks."""
    p, side, dim = vit.patch_size, vit.grid_size, vit.embed_dim
    tokens = F.conv2d(images, vit.patch_embed.proj.weight, vit.patch_embed.proj.bias, stride=p)
    h, w = tokens.shape[-2:]
    tokens = tokens.flatten(2).transpose(1, 2)  # [N, h·w, D], row-major
    table = vit.pos_embed[0, 1:].reshape(side, side, dim)
    if (h, w) != (side, side):
        table = bicubic_by_hand(table, (h, w), ((h + 0.1) / side, (w + 0.1) / side))
    cls = (vit.cls_token[0] + vit.pos_embed[0, :1]).expand(len(images), 1, dim)
    x = torch.cat([cls, tokens + table.reshape(1, h * w, dim)], dim=1)
    for block in vit.blocks:
        x = block(x)
    return F.layer_norm(x[:, 0], (dim,), vit.norm.weight, vit.norm.bias, eps=1e-6)


def head_by_hand(net: DINONetwork, features: torch.Tensor) -> torch.Tensor:
    """DINO's head: Linear → GELU → Linear → GELU → Linear, L2 normalisation, then the weight-normed last
    layer ``g · v / ‖v‖`` (rows) without bias: ``[N, D]`` → ``[N, K]``."""
    linears = [m for m in net.head.mlp if isinstance(m, nn.Linear)]
    x = features
    for i, linear in enumerate(linears):
        x = F.linear(x, linear.weight, linear.bias)
        if i < len(linears) - 1:
            x = F.gelu(x)
    x = x / x.norm(dim=-1, keepdim=True)
    weight = net.head.last_layer.parametrizations.weight
    v, g = weight.original1, weight.original0  # [K, bottleneck], [K, 1]
    return x @ (g * v / v.norm(dim=1, keepdim=True)).T


def dino_objective(
    student: list[torch.Tensor], teacher: list[torch.Tensor], center: torch.Tensor, tt: float, ts: float = 0.1
) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, teacher entropy) from per-view logits: student ``V × [B, K]``, teacher ``G × [B, K]``. Loss: the
    mean over pairs (g, v ≠ g) of the batch mean of ``−Σ_k q_gk log p_vk``, ``q = softmax((t − c)/τ_t)``,
    ``p = softmax(s/τ_s)``; entropy: the mean over the G·B teacher rows of ``−Σ_k q log q``."""
    targets = [torch.exp((t - center) / tt) / torch.exp((t - center) / tt).sum(-1, keepdim=True) for t in teacher]
    total, terms = 0.0, 0
    for g, q in enumerate(targets):
        for v, s in enumerate(student):
            if v == g:
                continue
            log_p = s / ts - torch.logsumexp(s / ts, dim=-1, keepdim=True)
            total = total + (-(q * log_p).sum(-1)).mean()
            terms += 1
    entropy = torch.stack([-(q * q.log()).sum(-1) for q in targets]).mean()
    return total / terms, entropy


def _reference(method: DINO, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, teacher entropy, teacher logits ``[2·B, K]``): globals to the teacher (no gradient), every view
    to the student."""
    globals_ = [batch["global_0"], batch["global_1"]]
    views = [*globals_, batch["local_0"], batch["local_1"]]
    with torch.no_grad():
        teacher = [head_by_hand(method.teacher, _cls_features(method.teacher.backbone, x)) for x in globals_]
    student = [head_by_hand(method.student, _cls_features(method.student.backbone, x)) for x in views]
    loss, entropy = dino_objective(student, teacher, method.center[0], TEACHER_TEMP)
    return loss, entropy, torch.cat(teacher)


# ---------------------------------------------------------------- golden forward, gradient, step


def test_forward_matches_the_written_out_dino_and_the_released_code() -> None:
    method = _golden_dino()
    batch = _golden_batch()
    out = method(batch, _hp(teacher_temp=TEACHER_TEMP))
    loss, entropy, _ = _reference(method, batch)
    assert out["loss"].item() == pytest.approx(loss.item(), abs=1e-5)
    assert out["loss"].item() == pytest.approx(RELEASED_LOSS, abs=1e-5)
    assert out["teacher_entropy"].item() == pytest.approx(entropy.item(), abs=1e-5)
    assert out["teacher_temp"] == pytest.approx(TEACHER_TEMP)
    assert math.log(HEAD["out_dim"]) - 1 < loss.item() < math.log(HEAD["out_dim"]) + 1  # not degenerate


def test_gradient_reaches_the_student_only_and_as_through_the_written_out_loss() -> None:
    method = _golden_dino()
    batch = _golden_batch()
    method(batch, _hp(teacher_temp=TEACHER_TEMP))["loss"].backward()
    assert all(not p.requires_grad and p.grad is None for p in method.teacher.parameters())
    assert {id(p) for p in method.parameters() if p.requires_grad} == {
        id(p) for p in method.student.parameters() if p.requires_grad
    }
    grads = {name: p.grad.clone() for name, p in method.student.named_parameters() if p.requires_grad}
    method.zero_grad(set_to_none=True)
    _reference(method, batch)[0].backward()
    for name, p in method.student.named_parameters():
        if p.requires_grad:
            assert torch.allclose(grads[name], p.grad, rtol=1e-4, atol=1e-7), name
    assert grads["backbone.pos_embed"][0, 1:].abs().sum(-1).min() > 0  # every position, via globals and locals


def test_dino_loss_passes_no_gradient_to_the_teacher_logits() -> None:
    gen = torch.Generator().manual_seed(5)
    student = torch.randn(4, 2, 8, generator=gen, requires_grad=True)
    teacher = torch.randn(2, 2, 8, generator=gen, requires_grad=True)
    dino_loss(student, teacher, torch.zeros(8), 0.1, 0.04).backward()
    assert teacher.grad is None and student.grad is not None


def test_after_step_moves_the_teacher_and_the_centre_as_the_released_code() -> None:
    """The step after the loss: teacher ← m·teacher + (1 − m)·student (m = ``hp.momentum``), then the centre ←
    0.9·centre + 0.1·(mean teacher output of the step); the loss itself used the centre from before."""
    method = _golden_dino()
    batch = _golden_batch()
    _, _, teacher_logits = _reference(method, batch)
    old_center = method.center.clone()
    teacher_before = {k: v.clone() for k, v in method.teacher.state_dict().items()}
    method(batch, _hp(teacher_temp=TEACHER_TEMP))
    assert torch.equal(method.center, old_center)  # nothing moves before the optimizer step
    method.after_step(_hp(momentum=0.8))
    expected = 0.9 * old_center[0] + 0.1 * teacher_logits.mean(0)
    assert torch.allclose(method.center[0], expected, atol=1e-10)
    assert method.center[0, [0, 1, 63]].tolist() == pytest.approx(RELEASED_CENTER, abs=1e-7)
    student = method.student.state_dict()
    for name, value in method.teacher.state_dict().items():
        assert torch.allclose(value, 0.8 * teacher_before[name] + 0.2 * student[name], atol=1e-12), name


# ---------------------------------------------------------------- local crops' positions


def test_local_crop_positions_are_dinos_bicubic_with_the_point_one_offset() -> None:
    """DINO's ``interpolate_pos_encoding``: bicubic, no antialiasing, scale factor (n + 0.1)/G (not the size)."""
    gen = torch.Generator().manual_seed(0)
    pos = torch.randn(1, 1 + 14 * 14, 8, generator=gen, dtype=torch.float64)
    table = pos[0, 1:].reshape(14, 14, 8)
    for grid in ((6, 6), (2, 2), (6, 4)):
        out = interpolate_pos_embed(pos, grid, num_prefix_tokens=1)
        scale = ((grid[0] + 0.1) / 14, (grid[1] + 0.1) / 14)
        by_hand = bicubic_by_hand(table, grid, scale).reshape(1, -1, 8)
        assert out.shape == (1, 1 + grid[0] * grid[1], 8)
        assert torch.equal(out[:, :1], pos[:, :1])
        assert torch.allclose(out[:, 1:], by_hand, atol=1e-12), grid
        size_based = bicubic_by_hand(table, grid, (grid[0] / 14, grid[1] / 14)).reshape(1, -1, 8)
        assert not torch.allclose(out[:, 1:], size_based, atol=1e-3)  # the +0.1 matters
    assert interpolate_pos_embed(pos, (14, 14), 1) is pos
    # the released interpolate_pos_encoding on this table (float64), 14 × 14 → 6 × 6, channel 0 of tokens 1..3
    released = [0.1584348622, -0.1579172855, -0.5140496723]
    assert interpolate_pos_embed(pos, (6, 6), 1)[0, 1:4, 0].tolist() == pytest.approx(released, abs=1e-9)


# ---------------------------------------------------------------- the released defaults


def test_defaults_follow_the_released_code() -> None:
    """DINO (main_dino.py @ 7c446df: --out_dim 65536 l.55, --norm_last_layer l.57, --freeze_last_layer 1 l.93,
    --drop_path_rate 0.1 l.105, crops scales l.108/115, 8 locals l.112, DINOLoss student_temp 0.1 and
    center_momentum 0.9 l.364-366; DINOHead(hidden 2048, bottleneck 256, nlayers 3) vision_transformer.py
    l.258; README l.188: teacher 0.04 → 0.07 over 30 epochs) with the face sizes of LAFS's
    DataAugmentationDINO (lafs_train.py @ 320c57d l.743-780: 112 px globals, 48 px locals, ImageNet
    normalisation, patch 8 l.39)."""
    defaults = {k: p.default for k, p in inspect.signature(DINO.__init__).parameters.items() if k != "self"}
    assert defaults["out_dim"] == 65536 and defaults["norm_last_layer"] is True
    assert (defaults["head_hidden_dim"], defaults["head_bottleneck_dim"], defaults["head_layers"]) == (2048, 256, 3)
    assert (defaults["n_local"], defaults["local_size"]) == (8, 48)
    assert defaults["global_scale"] == (0.4, 1.0) and defaults["local_scale"] == (0.05, 0.4)
    assert (defaults["student_temp"], defaults["center_momentum"], defaults["freeze_last_layer"]) == (0.1, 0.9, 1)
    temps = (defaults["warmup_teacher_temp"], defaults["teacher_temp"], defaults["warmup_teacher_temp_epochs"])
    assert temps == (0.04, 0.07, 30)
    assert defaults["mean"] == IMAGENET_MEAN == (0.485, 0.456, 0.406)
    assert defaults["std"] == IMAGENET_STD == (0.229, 0.224, 0.225)
    face = {"img_size": 112, "patch_size": 8, "pos_embed": "learned", "drop_path_rate": 0.1}
    assert face == DINO_FACE_BACKBONE


def test_crop_recipes_follow_the_released_augmentation() -> None:
    """DataAugmentationDINO (main_dino.py l.419-456; LAFS's face copy lafs_train.py l.743-780): every crop
    RandomResizedCrop (bicubic) + flip p 0.5 + ColorJitter(0.4, 0.4, 0.2, 0.1) p 0.8 + grayscale p 0.2; blur
    p 1.0 (global 0), blur p 0.1 + solarise p 0.2 (global 1), blur p 0.5 (locals), sigma 0.1-2."""
    method = DINO(backbone_kwargs={**TINY, "img_size": 112}, **HEAD)
    (global_0, global_1), local = method.recipes()
    for recipe, size, scale in ((global_0, 112, (0.4, 1.0)), (global_1, 112, (0.4, 1.0)), (local, 48, (0.05, 0.4))):
        assert (recipe.size, recipe.scale, recipe.ratio) == (size, scale, (3 / 4, 4 / 3))
        assert recipe.interpolation == "bicubic"
        assert (recipe.hflip_p, recipe.jitter, recipe.jitter_p, recipe.gray_p) == (0.5, (0.4, 0.4, 0.2, 0.1), 0.8, 0.2)
        assert recipe.blur_sigma == (0.1, 2.0) and recipe.normalize
        assert (recipe.mean, recipe.std) == (IMAGENET_MEAN, IMAGENET_STD)
    assert [(r.blur_p, r.solarize_p) for r in (global_0, global_1, local)] == [(1.0, 0.0), (0.1, 0.2), (0.5, 0.0)]
    assert (method.n_global, method.n_local) == (2, 8)
