"""LAFS pre-training golden tests: the whole ``forward()`` (loss and logged terms) for both landmark sources,
the stop-gradient and the released defaults, against a computation written out here: landmarks jittered
N(0, 5²) each once, the locals' 36 drawn with replacement from them, 8 × 8 patches cut bilinearly, Linear
embedding + positions 1..n, the same global tokens to teacher and student, DINO's head and loss.

Reference loss from the released code (szlbiubiubiu/LAFS_CVPR2024 @ 320c57d), run outside this project in
float64 on the tokens that :meth:`LAFS.view_patches` cut in this test's forward (facekit cuts its patches
half a pixel off the released ``extract_patches_pytorch_gridsample`` and untransposed: see
:mod:`facekit.nn.landmark_patches`) and this test's weights::

    vit = ViT_face_landmark_patch8(loss_type='None', GPU_ID=None, num_class=1, image_size=112, patch_size=8,
                                   dim=32, depth=2, heads=2, dim_head=16, num_patches=196, mlp_dim=85,
                                   dropout=0.0, emb_dropout=0.0)
    (keys mapped from facekit's; facekit's deviations set on it: attention scale head_dim^−½ instead of
    dim^−½, LayerNorm eps 1e-6 instead of 1e-5, drop-path off; eval mode)
    student = MultiCropWrapper(vit, DINOHead(32, 64, hidden_dim=48, bottleneck_dim=16)); teacher likewise
    loss_fn = DINOLoss(64, 4, 0.07, 0.04, 3, 5); loss_fn.center = center          # schedule[1] = 0.055
    loss = loss_fn(student([g0, g1, l0, l1]), teacher([g0, g1]), 1)
"""

from __future__ import annotations

import inspect
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from facekit.data.views import ViewRecipe
from facekit.methods.base import StepValues
from facekit.methods.dino import DINONetwork
from facekit.methods.lafs import LAFS, LAFS_BACKBONE
from facekit.nn.vit import ViT

TINY = dict(embed_dim=32, depth=2, num_heads=2, drop_path_rate=0.0)  # 112 px, 196 positions, Linear(192 → 32)
HEAD = dict(out_dim=64, head_hidden_dim=48, head_bottleneck_dim=16)
BATCH, SEED, SIGMA, SUBSET = 2, 7, 5.0, 36
TEACHER_TEMP = 0.055  # the released schedule linspace(0.07, 0.04, 3) at epoch 1
VIEWS = ("global_0", "global_1", "local_0", "local_1")

#: The released code's loss on this test's weights and tokens (see the module docstring).
RELEASED_LOSS = 9.986188369650


def _hp(momentum: float = 0.996) -> StepValues:
    extra = {"teacher_temp": TEACHER_TEMP}
    return StepValues(step=0, epoch=1.0, progress=0.0, lr=1e-3, weight_decay=0.0, momentum=momentum, extra=extra)


def set_weights(net: nn.Module, seed: int) -> None:
    """Every parameter from its own seeded draw in name order: LayerNorm scales ``1 + 0.1·N``, matrices
    ``N / √fan_in``, the rest ``0.5·N``; the head's weight-norm magnitude stays 1."""
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


def _golden_lafs(**overrides) -> LAFS:
    """A 2-block, 32-wide LAFS ViT with a 64-way head in float64; student and teacher with different
    weights, a non-zero centre."""
    method = LAFS(backbone_kwargs=TINY, n_local=2, **{**HEAD, **overrides}).double()
    set_weights(method.student, seed=1)
    set_weights(method.teacher, seed=2)
    gen = torch.Generator().manual_seed(3)
    method.center.copy_(0.3 * torch.randn(1, HEAD["out_dim"], generator=gen, dtype=torch.float64))
    return method


def _golden_batch() -> dict[str, torch.Tensor]:
    """Smooth normalised views ``[2, 3, 112, 112]`` (float64) with 196 landmarks each, nearly half of them
    outside the view; ``<view>_clean`` copies (a brightness change away) for the learned landmarks."""
    gen = torch.Generator().manual_seed(4)
    batch = {}
    for name in VIEWS:
        coarse = torch.randn(BATCH, 3, 14, 14, generator=gen, dtype=torch.float64)
        batch[name] = F.interpolate(coarse, size=112, mode="bilinear")
        batch[f"{name}_clean"] = batch[name] - 0.3
        batch[f"{name}_landmarks"] = torch.rand(BATCH, 196, 2, generator=gen) * 150 - 19
    return batch


# ---------------------------------------------------------------- the reference, written out


def patches_by_hand(image: torch.Tensor, points: torch.Tensor, p: int = 8) -> torch.Tensor:
    """``image [C, H, W]``, ``points [n, 2]`` (x, y; pixel centres at integers) → ``[n, p·p·C]``: pixel
    ``(x + dx, y + dy)`` for dy, dx in ``−p/2 .. p/2 − 1`` (rows first, channels last), bilinear between the
    four neighbours, zero outside the image."""
    channels, height, width = image.shape
    offsets = torch.arange(p, dtype=torch.float64) - p // 2
    y = points[:, 1, None, None].double() + offsets[None, :, None]  # [n, p, 1]: rows
    x = points[:, 0, None, None].double() + offsets[None, None, :]  # [n, 1, p]: columns
    y, x = torch.broadcast_tensors(y, x)
    x0, y0 = x.floor(), y.floor()
    out = torch.zeros(channels, *x.shape, dtype=image.dtype)
    for dy, dx in ((0, 0), (0, 1), (1, 0), (1, 1)):
        xi, yi = x0 + dx, y0 + dy
        weight = (1 - (x - xi).abs()) * (1 - (y - yi).abs())
        valid = (xi >= 0) & (xi < width) & (yi >= 0) & (yi < height)
        pixels = image[:, yi.long().clamp(0, height - 1), xi.long().clamp(0, width - 1)]  # [C, n, p, p]
        out = out + pixels * (weight * valid)
    return out.permute(1, 2, 3, 0).reshape(len(points), p * p * channels)


def _cls_features(vit: ViT, patches: torch.Tensor) -> torch.Tensor:
    """Patch vectors ``[N, n, 192]`` → the normed cls token ``[N, D]``: Linear embedding + positions 1..n,
    cls token + position 0 in front, the blocks, LayerNorm."""
    dim, n = vit.embed_dim, patches.shape[1]
    tokens = F.linear(patches, vit.patch_embed.proj.weight, vit.patch_embed.proj.bias) + vit.pos_embed[:, 1 : 1 + n]
    cls = (vit.cls_token[0] + vit.pos_embed[0, :1]).expand(len(patches), 1, dim)
    x = torch.cat([cls, tokens], dim=1)
    for block in vit.blocks:
        x = block(x)
    return F.layer_norm(x[:, 0], (dim,), vit.norm.weight, vit.norm.bias, eps=1e-6)


def _head(net: DINONetwork, features: torch.Tensor) -> torch.Tensor:
    """Linear → GELU → Linear → GELU → Linear, L2 normalisation, last layer ``g · v / ‖v‖``: ``[N, D]`` → ``[N, K]``."""
    linears = [m for m in net.head.mlp if isinstance(m, nn.Linear)]
    x = features
    for i, linear in enumerate(linears):
        x = F.linear(x, linear.weight, linear.bias)
        if i < len(linears) - 1:
            x = F.gelu(x)
    x = x / x.norm(dim=-1, keepdim=True)
    weight = net.head.last_layer.parametrizations.weight
    return x @ (weight.original0 * weight.original1 / weight.original1.norm(dim=1, keepdim=True)).T


def _objective(student: list[torch.Tensor], teacher: list[torch.Tensor], center: torch.Tensor, tt: float):
    """(loss, teacher entropy): mean over pairs (g, v ≠ g) of ``mean_b −Σ_k softmax((t_g − c)/τ_t) ·
    log softmax(s_v / 0.1)``; mean entropy of the G·B teacher targets."""
    targets = [torch.exp((t - center) / tt) / torch.exp((t - center) / tt).sum(-1, keepdim=True) for t in teacher]
    total, terms = 0.0, 0
    for g, q in enumerate(targets):
        for v, s in enumerate(student):
            if v != g:
                total = total + (-(q * (s / 0.1 - torch.logsumexp(s / 0.1, -1, keepdim=True))).sum(-1)).mean()
                terms += 1
    return total / terms, torch.stack([-(q * q.log()).sum(-1) for q in targets]).mean()


def _landmark_tokens(method: LAFS, batch: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    """Per view ``[B, 196 | 36, 192]``, with torch's RNG drawn as the method draws it (seeded with SEED):
    jitter every landmark of the globals, then per local view batch: jitter, then 36 indices with
    replacement among the landmarks inside the view (before jitter)."""
    if method.landmark_head is None:
        points = {name: batch[f"{name}_landmarks"] for name in VIEWS}
    else:
        with torch.no_grad():
            points = {name: method.landmark_head(batch[f"{name}_clean"]).float() for name in VIEWS}
    torch.manual_seed(SEED)
    jitter = {}
    for group in (VIEWS[:2], VIEWS[2:]):
        noise = torch.randn(len(group) * BATCH, 196, 2).split(BATCH)
        jitter.update({name: points[name] + SIGMA * n for name, n in zip(group, noise, strict=True)})
        if group == VIEWS[2:]:
            stacked = torch.cat([points[name] for name in group])
            inside = (stacked > -0.5) & (stacked < 111.5)
            index = torch.multinomial((inside[..., 0] & inside[..., 1]).float(), SUBSET, replacement=True)
            for name, idx in zip(group, index.split(BATCH), strict=True):
                jitter[name] = torch.stack([jitter[name][b, idx[b]] for b in range(BATCH)])
    return [torch.stack([patches_by_hand(batch[name][b], jitter[name][b]) for b in range(BATCH)]) for name in VIEWS]


def _reference(method: LAFS, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, teacher entropy, teacher logits ``[2·B, K]``): the two global token sets to the teacher (no
    gradient), all four to the student."""
    tokens = _landmark_tokens(method, batch)
    with torch.no_grad():
        teacher = [_head(method.teacher, _cls_features(method.teacher.backbone, t)) for t in tokens[:2]]
    student = [_head(method.student, _cls_features(method.student.backbone, t)) for t in tokens]
    loss, entropy = _objective(student, teacher, method.center[0], TEACHER_TEMP)
    return loss, entropy, torch.cat(teacher)


def _forward(method: LAFS, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    torch.manual_seed(SEED)
    return method(batch, _hp())


# ---------------------------------------------------------------- golden forward, gradient, step


def test_forward_matches_the_written_out_lafs_and_the_released_code() -> None:
    method = _golden_lafs()
    batch = _golden_batch()
    out = _forward(method, batch)
    loss, entropy, _ = _reference(method, batch)
    assert out["loss"].item() == pytest.approx(loss.item(), abs=1e-5)
    assert out["loss"].item() == pytest.approx(RELEASED_LOSS, abs=1e-5)
    assert out["teacher_entropy"].item() == pytest.approx(entropy.item(), abs=1e-5)
    assert float(out["teacher_temp"]) == pytest.approx(TEACHER_TEMP)


def test_learned_landmarks_come_from_the_clean_crop_and_cut_the_augmented_one() -> None:
    method = _golden_lafs(landmarks="learned", train_landmark_head=True).eval()
    batch = _golden_batch()
    out = _forward(method, batch)
    loss, entropy, _ = _reference(method, batch)
    assert out["loss"].item() == pytest.approx(loss.item(), abs=1e-5)
    assert out["teacher_entropy"].item() == pytest.approx(entropy.item(), abs=1e-5)


def test_gradient_reaches_the_student_only_and_as_through_the_written_out_loss() -> None:
    method = _golden_lafs()
    batch = _golden_batch()
    _forward(method, batch)["loss"].backward()
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
    assert torch.count_nonzero(grads["backbone.pos_embed"][0, 197:]) == 0  # positions past 196 are never used


def test_after_step_moves_the_teacher_and_the_centre() -> None:
    method = _golden_lafs()
    batch = _golden_batch()
    _, _, teacher_logits = _reference(method, batch)
    old_center = method.center.clone()
    teacher_before = {k: v.clone() for k, v in method.teacher.state_dict().items()}
    _forward(method, batch)
    method.after_step(_hp(momentum=0.8))
    assert torch.allclose(method.center[0], 0.9 * old_center[0] + 0.1 * teacher_logits.mean(0), atol=1e-7)
    student = method.student.state_dict()
    for name, value in method.teacher.state_dict().items():
        assert torch.allclose(value, 0.8 * teacher_before[name] + 0.2 * student[name], atol=1e-12), name


# ---------------------------------------------------------------- the released defaults


def test_defaults_follow_the_released_code() -> None:
    """lafs_train.py @ 320c57d: --out_dim 100000 l.44, --norm_last_layer l.46, teacher temperature 0.07 → 0.04
    over 30 epochs l.57-64, --freeze_last_layer 1 l.82, --drop_path_rate 0.1 l.94, --global_crops_scale
    (0.4, 1) l.97 (also the locals' crop, l.853), 8 locals l.101, DINOLoss student 0.1 / centre 0.9 l.628-629,
    (0.5, 0.5) normalisation l.802; face_pre_pro/ViT_face.py: jitter ``randn·5`` l.1361, 36 local landmarks
    l.1366, ``pos_embedding = randn`` (std 1) l.611, ``to_qkv`` without bias l.147; ViT-B: 768 wide, 12
    blocks, MLP 2048, 8 px patches of 112 px (lafs_train.py l.318-330); DINOHead 2048 / 256 / 3 layers
    (vision_transformer.py l.266)."""
    defaults = {k: p.default for k, p in inspect.signature(LAFS.__init__).parameters.items() if k != "self"}
    assert (defaults["out_dim"], defaults["norm_last_layer"], defaults["n_local"]) == (100_000, True, 8)
    assert (defaults["head_hidden_dim"], defaults["head_bottleneck_dim"], defaults["head_layers"]) == (2048, 256, 3)
    temps = (defaults["warmup_teacher_temp"], defaults["teacher_temp"], defaults["warmup_teacher_temp_epochs"])
    assert temps == (0.07, 0.04, 30)
    assert (defaults["student_temp"], defaults["center_momentum"], defaults["freeze_last_layer"]) == (0.1, 0.9, 1)
    assert (defaults["landmark_jitter"], defaults["num_local_landmarks"]) == (5.0, 36)
    assert defaults["crop_scale"] == (0.4, 1.0) and defaults["landmarks"] == "mesh"
    assert defaults["mean"] == defaults["std"] == (0.5, 0.5, 0.5)
    backbone = {"img_size": 112, "patch_size": 8, "embed_dim": 768, "depth": 12, "mlp_ratio": 2048 / 768}
    backbone |= {"qkv_bias": False, "patch_embed": "linear", "pos_embed": "learned", "pos_embed_std": 1.0}
    assert {k: LAFS_BACKBONE[k] for k in backbone} == backbone and LAFS_BACKBONE["drop_path_rate"] == 0.1


def test_views_follow_the_released_augmentation() -> None:
    """DataAugmentation_LAFS (lafs_train.py l.790-886): every view RandomResizedCrop(112, global scale,
    bicubic) + flip p 0.5, then on the crop ColorJitter(0.4, 0.4, 0.2, 0.1) p 0.8, grayscale p 0.2 and blur
    p 1.0 (global 0) / blur p 0.1 + solarise p 0.2 (global 1) / blur p 0.5 (locals), (0.5, 0.5) normalisation."""
    method = LAFS(backbone_kwargs={**TINY, "depth": 1}, **HEAD)
    views = method.views()
    crop = views.crop
    assert (crop.size, crop.scale, crop.ratio, crop.hflip_p) == (112, (0.4, 1.0), (3 / 4, 4 / 3), 0.5)
    assert crop.interpolation == "bicubic"
    assert (crop.jitter_p, crop.gray_p, crop.blur_p, crop.solarize_p) == (0.0, 0.0, 0.0, 0.0)
    recipes: list[ViewRecipe] = [*views.global_photometric, views.local_photometric]
    for recipe in recipes:
        assert (recipe.scale, recipe.ratio, recipe.hflip_p) == ((1.0, 1.0), (1.0, 1.0), 0.0)  # no second crop
        assert (recipe.jitter, recipe.jitter_p, recipe.gray_p) == ((0.4, 0.4, 0.2, 0.1), 0.8, 0.2)
        assert recipe.blur_sigma == (0.1, 2.0)
        assert (recipe.mean, recipe.std, recipe.normalize) == ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5), True)
    assert [(r.blur_p, r.solarize_p) for r in recipes] == [(1.0, 0.0), (0.1, 0.2), (0.5, 0.0)]
    assert views.n_local == 8 and views.names[:3] == ["global_0", "global_1", "local_0"]


def test_vit_deviations_are_the_documented_ones() -> None:
    """What facekit's ViT does where the released ViT_face differs (lafs.py's docstring): attention scale
    head width^−½ (released: D^−½), LayerNorm eps 1e-6 (1e-5), drop-path 0 → 0.1 over the student's blocks and
    none in the teacher (released: 0.1 in every block of both), no dropout."""
    method = LAFS(backbone_kwargs={**TINY, "depth": 3, "drop_path_rate": 0.1}, **HEAD)
    student, teacher = method.student.backbone, method.teacher.backbone
    assert student.blocks[0].attn.scale == pytest.approx(16**-0.5)
    assert {m.eps for m in student.modules() if isinstance(m, nn.LayerNorm)} == {1e-6}
    rates = [getattr(block.drop_path1, "drop_prob", 0.0) for block in student.blocks]
    assert rates == pytest.approx([0.0, 0.05, 0.1])
    assert all(getattr(block.drop_path1, "drop_prob", 0.0) == 0.0 for block in teacher.blocks)
    assert not any(isinstance(m, nn.Dropout) and m.p > 0 for m in method.student.modules())
