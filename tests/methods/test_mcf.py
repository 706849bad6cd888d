"""MCF: InfoNCE, the perceptual teacher (loading, token-axis normalisation, frozen), EMA, masks, training."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

import facekit.methods  # noqa: F401  (registers the methods)
from facekit.data.views import ResizeFlipView
from facekit.methods.base import METHODS, StepValues
from facekit.methods.mcf import MCF, PerceptualTeacher, info_nce

TINY = {"img_size": 32, "patch_size": 8, "embed_dim": 64, "depth": 2, "num_heads": 4}
TEACHER = {"img_size": 32, "patch_size": 8, "depth": 4, "embed_dim": 48, "num_heads": 3}
LAYERS = (0, 1, 2, 3)


def hp(momentum: float = 0.99) -> StepValues:
    return StepValues(step=0, epoch=0.0, progress=0.0, lr=1e-3, weight_decay=0.0, momentum=momentum)


@pytest.fixture(scope="module")
def teacher_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random tiny timm ViT saved as a MoCo-v3 checkpoint (``state_dict`` with ``module.base_encoder.``)."""
    torch.manual_seed(123)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=10, **TEACHER)
    state = {f"module.base_encoder.{k}": v for k, v in model.state_dict().items()}
    state["module.momentum_encoder.cls_token"] = torch.zeros(1, 1, 48)
    path = tmp_path_factory.mktemp("teacher") / "moco.pth"
    torch.save({"state_dict": state, "epoch": 3}, path)
    return path


def tiny_mcf(teacher_file: Path, **kwargs) -> MCF:
    torch.manual_seed(0)
    return MCF(
        backbone_kwargs=TINY,
        decoder_dim=32,
        decoder_depth=1,
        decoder_heads=4,
        proj_hidden_dim=32,
        proj_dim=16,
        teacher_arch="vit_tiny_patch16_224",
        teacher_checkpoint=str(teacher_file),
        teacher_kwargs=TEACHER,
        teacher_layers=LAYERS,
        **kwargs,
    )


def test_info_nce_matches_manual_cross_entropy() -> None:
    q = torch.tensor([[3.0, 4.0], [1.0, 0.0], [0.0, -2.0]])
    k = torch.tensor([[1.0, 0.0], [0.0, 5.0], [-1.0, -1.0]])
    qn = [[a / math.hypot(*row) for a in row] for row in q.tolist()]
    kn = [[a / math.hypot(*row) for a in row] for row in k.tolist()]
    total = 0.0
    for i in range(3):
        logits = [(qn[i][0] * kn[j][0] + qn[i][1] * kn[j][1]) / 0.2 for j in range(3)]
        total += -(logits[i] - math.log(sum(math.exp(z) for z in logits)))
    expected = total / 3 * (2 * 0.2)
    assert info_nce(q, k, 0.2).item() == pytest.approx(expected, rel=1e-5)


def test_teacher_loads_moco_checkpoint_and_safetensors(teacher_file: Path, tmp_path: Path) -> None:
    teacher = PerceptualTeacher("vit_tiny_patch16_224", teacher_file, LAYERS, **TEACHER)
    saved = torch.load(teacher_file, weights_only=True)["state_dict"]
    fc2 = saved["module.base_encoder.blocks.3.mlp.fc2.weight"]
    torch.testing.assert_close(teacher.model.blocks[3].mlp.fc2.weight, fc2)
    plain = {k.removeprefix("module.base_encoder."): v for k, v in saved.items() if "base_encoder" in k}
    save_file({k: v.contiguous() for k, v in plain.items()}, tmp_path / "t.safetensors")
    again = PerceptualTeacher("vit_tiny_patch16_224", tmp_path / "t.safetensors", LAYERS, **TEACHER)
    torch.testing.assert_close(again.model.pos_embed, saved["module.base_encoder.pos_embed"])


def test_teacher_features_token_axis_normalised(teacher_file: Path) -> None:
    teacher = PerceptualTeacher("vit_tiny_patch16_224", teacher_file, (1, 3), **TEACHER)
    images = torch.randn(2, 3, 32, 32)
    feats = teacher.features(images)
    # independent forward through the timm model: tokens [cls, patches] + positions, then the blocks
    m = teacher.model
    x = torch.cat([m.cls_token.expand(2, -1, -1), m.patch_embed(images)], dim=1) + m.pos_embed
    manual = []
    for i, block in enumerate(m.blocks):
        x = block(x)
        if i in (1, 3):
            manual.append(x / x.pow(2).sum(dim=1, keepdim=True).sqrt())  # along the 17 tokens
    assert [f.shape for f in feats] == [(2, 17, 48)] * 2
    for f, ref in zip(feats, manual, strict=True):
        torch.testing.assert_close(f, ref, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(f.norm(dim=1), torch.ones(2, 48))
    channel = PerceptualTeacher("vit_tiny_patch16_224", teacher_file, (1,), norm_axis="channel", **TEACHER)
    torch.testing.assert_close(channel.features(images)[0].norm(dim=-1), torch.ones(2, 17))


def test_perceptual_loss_zero_iff_prediction_equals_input(teacher_file: Path) -> None:
    teacher = PerceptualTeacher("vit_tiny_patch16_224", teacher_file, LAYERS, **TEACHER)
    images = torch.randn(2, 3, 32, 32)
    assert teacher(images.clone(), images).item() == pytest.approx(0.0, abs=1e-12)
    pred = (images + 0.5 * torch.randn_like(images)).requires_grad_()
    loss = teacher(pred, images)
    assert loss.item() > 1e-6
    loss.backward()
    assert pred.grad is not None and pred.grad.abs().sum() > 0
    # the released code resizes (nearest) to the teacher's input size
    big = F.interpolate(images, size=64)
    assert teacher(big, images).item() == pytest.approx(0.0, abs=1e-12)


def test_teacher_and_target_frozen(teacher_file: Path) -> None:
    model = tiny_mcf(teacher_file)
    model.train()
    assert not model.teacher.training
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    frozen = [*model.teacher.parameters(), *model.target_encoder.parameters(), *model.target_projector.parameters()]
    assert frozen and not any(p.requires_grad or id(p) in trainable for p in frozen)
    out = model({"image": torch.randn(4, 3, 32, 32)}, hp())
    out["loss"].backward()
    assert all(p.grad is None for p in frozen)
    assert model.encoder.blocks[0].attn.qkv.weight.grad.abs().sum() > 0
    assert model.predictor[0].weight.grad.abs().sum() > 0


def test_target_ema_update_by_formula(teacher_file: Path) -> None:
    model = tiny_mcf(teacher_file)
    with torch.no_grad():  # make online and target differ
        for p in [*model.encoder.parameters(), *model.projector.parameters()]:
            p.add_(torch.randn_like(p))
    pairs = [
        *zip(model.target_encoder.parameters(), model.encoder.parameters(), strict=True),
        *zip(model.target_projector.parameters(), model.projector.parameters(), strict=True),
    ]
    before = [(t.clone(), o.clone()) for t, o in pairs]
    model.after_step(hp(momentum=0.9))
    for (t, _), (t0, o0) in zip(pairs, before, strict=True):
        torch.testing.assert_close(t, 0.9 * t0 + 0.1 * o0)


def test_online_and_target_masks_are_independent(teacher_file: Path) -> None:
    model = tiny_mcf(teacher_file)
    seen: dict[str, torch.Tensor] = {}
    for name in ("encoder", "target_encoder"):
        encode = getattr(model, name).encode
        getattr(model, name).encode = lambda x, keep=None, _e=encode, _n=name, **kw: (
            seen.__setitem__(_n, keep) or _e(x, keep=keep, **kw)
        )
    torch.manual_seed(5)
    model({"image": torch.randn(8, 3, 32, 32)}, hp())
    online, target = seen["encoder"], seen["target_encoder"]
    assert online.shape == target.shape == (8, 4)
    same = [set(a.tolist()) == set(b.tolist()) for a, b in zip(online, target, strict=True)]
    assert not all(same)


def test_loss_terms_and_pixel_option(teacher_file: Path) -> None:
    images = torch.randn(4, 3, 32, 32)
    model = tiny_mcf(teacher_file)
    out = model({"image": images}, hp())
    assert set(out) == {"loss", "loss_perceptual", "loss_contrastive"}
    combined = 1000 * out["loss_perceptual"] + out["loss_contrastive"]
    torch.testing.assert_close(out["loss"].detach(), combined)
    with_pixel = tiny_mcf(teacher_file, pixel_loss_weight=0.5)
    out = with_pixel({"image": images}, hp())
    combined = 1000 * out["loss_perceptual"] + out["loss_contrastive"] + 0.5 * out["loss_pixel"]
    torch.testing.assert_close(out["loss"].detach(), combined)
    out["loss"].backward()
    assert all(torch.isfinite(v) for v in out.values())


def test_a_few_steps_reduce_the_loss(teacher_file: Path) -> None:
    model = tiny_mcf(teacher_file)
    torch.manual_seed(1)
    images = torch.randn(4, 3, 32, 32)

    def fixed_mask_loss() -> float:
        torch.manual_seed(0)  # same masks every time
        with torch.no_grad():
            return model({"image": images}, hp())["loss"].item()

    before = fixed_mask_loss()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-3)
    for _ in range(8):
        optimizer.zero_grad()
        model({"image": images}, hp())["loss"].backward()
        optimizer.step()
        model.after_step(hp())
    assert fixed_mask_loss() < 0.9 * before


def test_views_registry_and_export(teacher_file: Path) -> None:
    model = tiny_mcf(teacher_file)
    view = model.views()
    rgb = np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    assert isinstance(view, ResizeFlipView) and view(rgb)["image"].shape == (3, 32, 32)
    assert view.mean == (0.485, 0.456, 0.406)
    assert METHODS.get("mcf") is MCF and model.export_backbone() is model.encoder
    with pytest.warns(UserWarning, match="random weights"):
        PerceptualTeacher("vit_tiny_patch16_224", None, (0,), **TEACHER)
