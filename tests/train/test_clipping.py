"""Gradient clipping: the mode (global norm, or DINO's per-parameter ``clip_gradients``) and the method's scope
(fine-tuning clips the backbone only, as FaceT's trainer and ``arcface_torch``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook
from torch.utils.data import Dataset
from train_toy import ToyMethod, ToyPartialFC, ToySamples, toy_config

from facekit.config import TrainConfig
from facekit.methods.base import METHODS
from facekit.methods.camd import CAMD
from facekit.methods.dino import DINO
from facekit.methods.finetune import FINETUNE_RECIPES, FineTune
from facekit.methods.lafs import LAFS
from facekit.methods.mae import MAE
from facekit.train.loop import train
from facekit.train.optim import clip_scope_prefix

SGD = {"optimizer": "momentum", "momentum": 0.0, "weight_decay": 0.0, "max_steps": 1}


def _first_grads(tmp_path: Path, **overrides: Any) -> dict[str, torch.Tensor]:
    """The toy method's gradients as the optimizer takes them on the first step."""
    method = ToyMethod()
    train(method, ToySamples(), toy_config(tmp_path, **SGD, **overrides))
    return method.first_grads


def test_per_parameter_clipping_scales_each_gradient_on_its_own(tmp_path: Path) -> None:
    """DINO's ``clip_gradients``: ``g · min(1, c / (‖g‖ + 1e-6))`` per parameter, here by hand."""
    raw = _first_grads(tmp_path / "raw")
    norms = {name: g.norm().item() for name, g in raw.items()}
    clip = sorted(norms.values())[1]  # two parameters above it, one at it, one below
    clipped = _first_grads(tmp_path / "clip", clip_grad=clip, clip_mode="per_parameter")
    for name, g in raw.items():
        factor = min(1.0, clip / (norms[name] + 1e-6))
        torch.testing.assert_close(clipped[name], g * factor, atol=1e-8, rtol=1e-6)
        assert clipped[name].norm().item() <= clip * (1 + 1e-6)
    above = [name for name in raw if norms[name] > clip]
    assert len(above) == 2 and all(clipped[name].norm().item() == pytest.approx(clip, rel=1e-5) for name in above)
    below = min(norms, key=norms.get)
    assert torch.equal(clipped[below], raw[below])  # factor 1: untouched


def test_global_clipping_scales_every_gradient_by_the_joint_norm(tmp_path: Path) -> None:
    raw = _first_grads(tmp_path / "raw")
    total = torch.linalg.vector_norm(torch.stack([g.norm() for g in raw.values()])).item()
    clipped = _first_grads(tmp_path / "clip", clip_grad=0.5 * total)
    for name, g in raw.items():
        torch.testing.assert_close(clipped[name], g * 0.5 * total / (total + 1e-6), atol=1e-8, rtol=1e-6)


class _Faces(Dataset):
    """8 random 32 px images of 4 identities."""

    def __len__(self) -> int:
        return 8

    def __getitem__(self, i: int) -> dict[str, Any]:
        image = torch.randn(3, 32, 32, generator=torch.Generator().manual_seed(i))
        return {"image": image, "identity": i % 4, "ismask": 0}


def _finetune_step_grads(tmp_path: Path, clip_grad: float | None) -> tuple[FineTune, dict[str, torch.Tensor]]:
    """A tiny FaceT-B fine-tuning, one SGD step; the gradients the optimizer sees, by parameter name."""
    torch.manual_seed(0)
    tiny = {"img_size": 32, "embed_dim": 32, "depth": 2, "num_heads": 2, "num_prompts": 2, "head_dim": 16}
    method = FineTune(num_classes=4, backbone="facet_base", backbone_kwargs=tiny)
    seen: dict[int, torch.Tensor] = {}

    def record(optimizer: torch.optim.Optimizer, *_: Any) -> None:
        seen.update({id(p): p.grad.clone() for g in optimizer.param_groups for p in g["params"] if p.grad is not None})

    hook = register_optimizer_step_pre_hook(record)
    try:
        train(method, _Faces(), toy_config(tmp_path, batch_size=8, clip_grad=clip_grad, **SGD))
    finally:
        hook.remove()
    return method, {name: seen[id(p)] for name, p in method.named_parameters() if id(p) in seen}


def test_finetune_clips_the_backbone_and_not_the_partial_fc_centres(tmp_path: Path) -> None:
    method, raw = _finetune_step_grads(tmp_path / "raw", None)
    backbone = [name for name in raw if name.startswith("backbone.")]
    centres = "head.weight"
    assert set(raw) == {*backbone, centres}
    backbone_norm = torch.linalg.vector_norm(torch.stack([raw[name].norm() for name in backbone])).item()
    assert raw[centres].norm().item() > 0.1 * backbone_norm  # the centres have a gradient worth clipping
    clip = 0.25 * backbone_norm
    method, clipped = _finetune_step_grads(tmp_path / "clip", clip)
    assert method.clip_scope() is method.backbone
    factor = clip / (backbone_norm + 1e-6)  # the backbone's own norm, not the joint one with the centres
    for name in backbone:
        torch.testing.assert_close(clipped[name], raw[name] * factor, atol=1e-7, rtol=1e-5)
    torch.testing.assert_close(clipped[centres], raw[centres], atol=0, rtol=0)


def test_per_parameter_clipping_refuses_per_rank_shards_in_its_scope() -> None:
    method = ToyPartialFC()
    method._ddp_params_and_buffers_to_ignore = ["head.weight"]  # as under DDP
    assert clip_scope_prefix(method, "global") == ""
    with pytest.raises(ValueError, match=r"per-rank parameters \['head.weight'\]"):
        clip_scope_prefix(method, "per_parameter")
    method.clip_scope = lambda: method.net
    assert clip_scope_prefix(method, "per_parameter") == "net."


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"clip_mode": "per-tensor"}, r"clip_mode must be one of \('global', 'per_parameter'\), got 'per-tensor'"),
        ({"clip_grad": 0.0}, "clip_grad must be > 0"),
        ({"clip_grad": -1.0}, "clip_grad must be > 0"),
    ],
)
def test_config_rejects_bad_clipping(tmp_path: Path, overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TrainConfig(epochs=1, batch_size=2, out_dir=tmp_path, lr=0.1, **overrides)


def test_recipes_carry_the_released_clipping(tmp_path: Path) -> None:
    """DINO / LAFS ``--clip_grad 3.0`` through ``clip_gradients`` (per parameter); CAMD and FaceT-B
    ``clip_grad_norm_`` at 1.0; MAE's pre-training and FaceT's IR-100 (MagFace, 1 warm-up epoch) do not clip."""
    classes = [METHODS.get(name) for name in METHODS.names()]
    recipes = [cls.recipe for cls in classes if isinstance(cls, type)]  # facet_mae is a function (an MAE)
    assert len(recipes) == len(classes) - 1 and all(isinstance(recipe, dict) for recipe in recipes)
    for recipe in [*recipes, *(r["train"] for r in FINETUNE_RECIPES.values())]:
        if recipe:
            TrainConfig(**recipe, out_dir=tmp_path)
    clipping = {
        "dino": (DINO.recipe["clip_grad"], DINO.recipe["clip_mode"]),
        "lafs": (LAFS.recipe["clip_grad"], LAFS.recipe["clip_mode"]),
        "camd": (CAMD.recipe["clip_grad"], CAMD.recipe.get("clip_mode", "global")),
        "facet_base": (FINETUNE_RECIPES["facet_base"]["train"]["clip_grad"], "global"),
        "mae": (MAE.recipe.get("clip_grad"), MAE.recipe.get("clip_mode", "global")),
        "ir100": (FINETUNE_RECIPES["ir100"]["train"].get("clip_grad"), "global"),
    }
    expected = {"dino": (3.0, "per_parameter"), "lafs": (3.0, "per_parameter"), "camd": (1.0, "global")}
    expected |= {"facet_base": (1.0, "global"), "mae": (None, "global"), "ir100": (None, "global")}
    assert clipping == expected
    assert FINETUNE_RECIPES["facet_base"]["train"]["clip_mode"] == "global"
    ir100 = FINETUNE_RECIPES["ir100"]
    assert (ir100["margin"], ir100["train"]["warmup_epochs"]) == ("magface", 1)  # FaceT's README command
