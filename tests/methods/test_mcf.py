"""MCF: InfoNCE, the perceptual teacher (loading, token-axis normalisation, frozen), the target's momentum step
in every forward (with accumulation and resume through the loop), masks, init, released defaults and recipe."""

from __future__ import annotations

import inspect
import math
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn
from torch.utils.data import Dataset

import facekit.methods  # noqa: F401  (registers the methods)
from facekit.config import TrainConfig
from facekit.data.views import ResizeFlipView
from facekit.methods.base import METHODS, StepValues
from facekit.methods.mcf import MCF, PerceptualTeacher, info_nce
from facekit.train.loop import train

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


def test_every_training_forward_moves_the_target_by_its_own_momentum_and_eval_does_not(teacher_file: Path) -> None:
    model = tiny_mcf(teacher_file)
    with torch.no_grad():  # make online and target differ
        for p in [*model.encoder.parameters(), *model.projector.parameters()]:
            p.add_(torch.randn_like(p))
    pairs = [
        *zip(model.target_encoder.parameters(), model.encoder.parameters(), strict=True),
        *zip(model.target_projector.parameters(), model.projector.parameters(), strict=True),
    ]
    before = [(t.clone(), o.clone()) for t, o in pairs]
    images = torch.randn(4, 3, 32, 32)
    model({"image": images}, hp(momentum=0.5))  # the loop's momentum is not MCF's
    model({"image": images}, hp(momentum=0.5))
    for (t, _), (t0, o0) in zip(pairs, before, strict=True):
        torch.testing.assert_close(t, 0.99**2 * t0 + (1 - 0.99**2) * o0)
    moved = [t.clone() for t, _ in pairs]
    model.eval()
    model({"image": images}, hp())
    assert all(torch.equal(t, m) for (t, _), m in zip(pairs, moved, strict=True))


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
    assert fixed_mask_loss() < 0.9 * before


def test_views_registry_and_export(teacher_file: Path) -> None:
    model = tiny_mcf(teacher_file)
    view = model.views()
    rgb = np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    assert isinstance(view, ResizeFlipView) and view(rgb)["image"].shape == (3, 32, 32)
    grey = np.full((40, 40, 3), (51, 102, 153), dtype=np.uint8)  # normalised with ImageNet's mean / std
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    expected = [(c / 255 - m) / s for c, m, s in zip((51, 102, 153), mean, std, strict=True)]
    torch.testing.assert_close(view(grey)["image"][:, 5, 7], torch.tensor(expected), atol=1e-5, rtol=0)
    np.random.seed(0)  # a random horizontal flip, half the time
    ramp = np.tile(np.arange(40, dtype=np.uint8)[None, :, None] * 6, (40, 1, 3))
    rows = [view(ramp)["image"][0, 0] for _ in range(40)]
    flipped = [bool(row[0] > row[-1]) for row in rows]
    assert 10 < sum(flipped) < 30
    assert METHODS.get("mcf") is MCF and model.export_backbone() is model.encoder
    with pytest.warns(UserWarning, match="random weights"):
        PerceptualTeacher("vit_tiny_patch16_224", None, (0,), **TEACHER)


#: Every default of MCF (and of its teacher) against the released code (``nomewang/MCF`` @ bc8706f):
#: (class, argument, value, where).
RELEASED_DEFAULTS = [
    (MCF, "backbone", "vit_base_patch16_224", "README.md:45-46 (--model mae_vit_base_patch16, --input_size 224)"),
    (MCF, "mask_ratio", 0.75, "models_mcf.py:351, main_pretrain.py:53, README.md:47"),
    (MCF, "decoder_dim", 512, "models_mcf.py:378-383 (mae_vit_base_patch16_dec512d8b), :419"),
    (MCF, "decoder_depth", 8, "models_mcf.py:378-383"),
    (MCF, "decoder_heads", 16, "models_mcf.py:378-383"),
    (MCF, "decoder_mlp_ratio", 4.0, "models_mcf.py:378-383"),
    (MCF, "proj_hidden_dim", 4096, "models_mcf.py:139 (_build_projector_and_predictor_mlps(embed_dim, 256, 4096))"),
    (MCF, "proj_dim", 256, "models_mcf.py:139"),
    (MCF, "temperature", 0.2, "models_mcf.py:121, main_pretrain.py:94 (--moco_t)"),
    (MCF, "momentum", 0.99, "models_mcf.py:351 (forward's m; engine_pretrain.py:38 passes none)"),
    (MCF, "teacher_arch", "vit_base_patch16_224", "models_moco.py:108 (vit_base_patch16), :140 (size=224)"),
    (MCF, "teacher_layers", (2, 5, 8, 11), "models_moco.py:36"),
    (MCF, "teacher_norm_axis", "token", "models_moco.py:145 (normalize(feat, dim=1))"),
    (MCF, "perceptual_weight", 1000.0, "models_mcf.py:349"),
    (MCF, "contrastive_weight", 1.0, "models_mcf.py:349"),
    (MCF, "pixel_loss_weight", 0.0, "models_mcf.py:349 (no pixel term)"),
    (MCF, "norm_pix_loss", False, "main_pretrain.py:56-58"),
    (MCF, "mean", (0.485, 0.456, 0.406), "main_pretrain.py:137"),
    (MCF, "std", (0.229, 0.224, 0.225), "main_pretrain.py:137"),
    (PerceptualTeacher, "arch", "vit_base_patch16_224", "models_moco.py:108, :140"),
    (PerceptualTeacher, "layers", (2, 5, 8, 11), "models_moco.py:36"),
    (PerceptualTeacher, "norm_axis", "token", "models_moco.py:145"),
]

#: The released pre-training recipe as TrainConfig fields: 64 per GPU on 8 GPUs, 8 accumulated micro-batches.
RELEASED_RECIPE = {
    "batch_size": 64 * 8,  # README.md:42-43 (--nproc_per_node=8, --batch_size 64)
    "accum_steps": 8,  # README.md:44
    "epochs": 16,  # README.md:48
    "warmup_epochs": 1,  # README.md:49
    "blr": 1.5e-4,  # README.md:50
    "min_lr": 0.0,  # main_pretrain.py:68
    "betas": (0.9, 0.95),  # main_pretrain.py:194
    "weight_decay": 0.05,  # README.md:51
    "clip_grad": None,  # engine_pretrain.py:47 (loss_scaler without clip_grad)
    "amp": True,  # engine_pretrain.py:37
}


@pytest.mark.parametrize(
    ("owner", "name", "value", "where"), RELEASED_DEFAULTS, ids=[f"{r[0].__name__}.{r[1]}" for r in RELEASED_DEFAULTS]
)
def test_default_is_the_released_value(owner: type, name: str, value: object, where: str) -> None:
    assert inspect.signature(owner).parameters[name].default == value, where


def test_recipe_is_the_released_one_and_builds_a_train_config(tmp_path: Path) -> None:
    assert MCF.recipe == RELEASED_RECIPE
    cfg = TrainConfig(**MCF.recipe, out_dir=tmp_path)
    assert cfg.batch_size * cfg.accum_steps == 4096 and cfg.lr_schedule == "cosine"


def test_projector_and_predictor_linears_are_xavier_uniform_and_the_target_a_copy(teacher_file: Path) -> None:
    model = tiny_mcf(teacher_file)  # projector 64 -> 32 -> 16, predictor 16 -> 32 -> 16
    for head in (model.projector, model.predictor):
        for layer in head:
            if isinstance(layer, nn.Linear):
                bound = math.sqrt(6 / (layer.in_features + layer.out_features))
                w = layer.weight
                assert layer.bias is None and w.abs().max() <= bound and w.abs().max() > 0.95 * bound
                assert w.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.1)
            elif isinstance(layer, nn.BatchNorm1d) and layer.affine:  # PyTorch's BatchNorm init, untouched
                assert torch.equal(layer.weight, torch.ones_like(layer.weight)) and not layer.bias.any()
    for t, o in zip(model.target_projector.parameters(), model.projector.parameters(), strict=True):
        assert torch.equal(t, o)


class FaceTensors(Dataset):
    """``n`` fixed random "views" ``{"image": [3, 32, 32]}``."""

    def __init__(self, n: int = 16) -> None:
        self.images = torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(3))

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"image": self.images[i]}


def loop_config(out_dir: Path, **overrides) -> TrainConfig:
    """2 micro-batches of 2 per step, 4 steps per epoch; the loop's EMA momentum set far from MCF's."""
    base = {"epochs": 1, "batch_size": 2, "accum_steps": 2, "lr": 1e-3, "log_every": 1, "checkpoint_every": None}
    base |= {"ema_momentum": 0.5, "ema_momentum_end": 0.5, "progress": False}
    return TrainConfig(out_dir=out_dir, **{**base, **overrides})


def test_an_accumulated_step_moves_the_target_once_per_micro_batch(teacher_file: Path, tmp_path: Path) -> None:
    model = tiny_mcf(teacher_file)
    with torch.no_grad():
        for p in model.target_encoder.parameters():
            p.add_(torch.randn_like(p))
    online = {n: p.clone() for n, p in model.encoder.named_parameters()}
    target = {n: p.clone() for n, p in model.target_encoder.named_parameters()}
    train(model, FaceTensors(), loop_config(tmp_path, max_steps=1))
    m = 0.99**2  # two forwards with the online weights of before the optimizer step
    for name, t in model.target_encoder.named_parameters():
        torch.testing.assert_close(t, m * target[name] + (1 - m) * online[name])
    assert not torch.equal(model.encoder.blocks[0].attn.qkv.weight, online["blocks.0.attn.qkv.weight"])


def test_a_resumed_run_ends_where_the_uninterrupted_one_does(teacher_file: Path, tmp_path: Path) -> None:
    whole = tiny_mcf(teacher_file)
    train(whole, FaceTensors(), loop_config(tmp_path / "whole"))
    train(tiny_mcf(teacher_file), FaceTensors(), loop_config(tmp_path / "split", max_steps=2))
    resumed = tiny_mcf(teacher_file)
    result = train(resumed, FaceTensors(), loop_config(tmp_path / "split"))
    assert result.steps_run == 2 and result.steps == 4
    expected = whole.state_dict()
    for name, tensor in resumed.state_dict().items():  # the targets and their BatchNorm statistics included
        assert torch.equal(tensor, expected[name]), name


def test_a_skipped_non_finite_step_has_moved_the_target_already(teacher_file: Path, tmp_path: Path) -> None:
    model = tiny_mcf(teacher_file)
    with torch.no_grad():
        for p in model.target_encoder.parameters():
            p.add_(torch.randn_like(p))
    online = {n: p.clone() for n, p in model.encoder.named_parameters()}
    target = {n: p.clone() for n, p in model.target_encoder.named_parameters()}
    data = FaceTensors(4)
    data.images[:] = float("nan")
    result = train(model, data, loop_config(tmp_path, max_steps=1))
    assert result.skipped_steps == 1
    m = 0.99**2
    for name, t in model.target_encoder.named_parameters():
        assert torch.equal(model.encoder.get_parameter(name), online[name])
        torch.testing.assert_close(t, m * target[name] + (1 - m) * online[name])
