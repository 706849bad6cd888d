"""Optimizer groups against the released rules: layer-wise lr decay (FaceT's ``optim_factory`` /
``trainer.py``, MAE's ``util/lr_decay.py``: block i of L gets ``d^(L − i)``, the embeddings ``d^(L + 1)``,
everything else 1) and which parameters each method leaves undecayed."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import pytest
import torch

import facekit.methods  # noqa: F401  (registers the methods)
from facekit.config import load_params
from facekit.methods.finetune import FINETUNE_RECIPES, FineTune
from facekit.nn.backbones import RANDOM_INIT
from facekit.stages.pretrain import build_method
from facekit.train.optim import param_groups

PROJECT = Path(__file__).resolve().parents[2]
FACET = {k: v for k, v in FINETUNE_RECIPES["facet_base"].items() if k not in ("method", "train")}

#: FaceT-B (12 blocks) fine-tuned with layer decay 0.75: FaceT's ``LayerDecayValueAssigner`` values
#: ``0.75 ** (13 - layer)``, layer 0 = patch embedding and positions, block i = layer i + 1, the rest layer 13
FACET_B_SCALES = {
    "backbone.patch_embed.proj.weight": 0.023757264018058777,  # 0.75 ** 13
    "backbone.patch_embed.proj.bias": 0.023757264018058777,
    "backbone.pos_embed": 0.023757264018058777,
    "backbone.blocks.0.attn.qkv.weight": 0.03167635202407837,  # 0.75 ** 12
    "backbone.blocks.0.norm1.bias": 0.03167635202407837,
    "backbone.blocks.5.mlp.fc1.weight": 0.1334838867187500,  # 0.75 ** 7
    "backbone.blocks.10.attn.proj.weight": 0.5625,  # 0.75 ** 2
    "backbone.blocks.11.attn.qkv.weight": 0.75,
    "backbone.blocks.11.norm2.weight": 0.75,
    "backbone.prompts": 1.0,
    "backbone.prompts_pool.queries": 1.0,
    "backbone.prompts_pool.key_proj.weight": 1.0,
    "backbone.head.0.weight": 1.0,
    "backbone.head.0.bias": 1.0,
    "head.weight": 1.0,  # Partial FC's centres
}


def _scales(method: torch.nn.Module, layer_decay: float) -> dict[str, float]:
    group_of = {id(p): g["lr_scale"] for g in param_groups(method, layer_decay) for p in g["params"]}
    return {name: group_of[id(p)] for name, p in method.named_parameters() if p.requires_grad}


def _released_scale(name: str, depth: int, decay: float) -> float:
    """MAE's ``get_layer_id_for_vit`` and FaceT's ``get_num_layer_for_vit`` with the scale of the layer."""
    if re.match(r"backbone\.(cls_token|pos_embed|patch_embed)", name):
        return decay ** (depth + 1)
    block = re.match(r"backbone\.blocks\.(\d+)\.", name)
    return decay ** (depth - int(block[1])) if block else 1.0


def test_facet_b_layer_decay_is_facets_table() -> None:
    with torch.device("meta"):
        method = FineTune(num_classes=100, **FACET)
    scales = _scales(method, FINETUNE_RECIPES["facet_base"]["train"]["layer_decay"])
    assert {name: scales[name] for name in FACET_B_SCALES} == pytest.approx(FACET_B_SCALES, rel=1e-12)
    assert scales == pytest.approx({name: _released_scale(name, 12, 0.75) for name in scales}, rel=1e-12)


@pytest.mark.parametrize("head_dim", [None, 512], ids=["no-head", "head-in-backbone"])
def test_vit_s_layer_decay_in_finetune_is_maes_table(head_dim: int | None) -> None:
    """ViT-S/16 (cls token, sin-cos positions, final norm): the final norm and a head inside the backbone
    get the full lr, as MAE's fine-tuning gives its ``fc_norm`` and head."""
    with torch.device("meta"):
        method = FineTune(num_classes=100, backbone="vit_small_patch16_224", backbone_kwargs={"head_dim": head_dim})
    scales = _scales(method, 0.65)
    table = {
        "backbone.cls_token": 0.65**13,
        "backbone.patch_embed.proj.weight": 0.65**13,
        "backbone.blocks.0.mlp.fc2.weight": 0.65**12,
        "backbone.blocks.11.attn.proj.bias": 0.65,
        "backbone.norm.weight": 1.0,
        "backbone.norm.bias": 1.0,
        "head.weight": 1.0,
    }
    if head_dim:
        table |= {"backbone.head.0.weight": 1.0, "backbone.head.0.bias": 1.0}
    assert "backbone.pos_embed" not in scales  # a fixed sin-cos buffer
    assert {name: scales[name] for name in table} == pytest.approx(table, rel=1e-12)
    assert scales == pytest.approx({name: _released_scale(name, 12, 0.65) for name in scales}, rel=1e-12)


def test_a_vit_with_nothing_above_its_blocks_keeps_the_top_layer_for_what_is_outside() -> None:
    """FaceT-B without prompts, head or final norm: its last block still gets ``d``, Partial FC 1."""
    with torch.device("meta"):
        bare = {"depth": 3, "num_prompts": 0, "head_dim": None}  # as FaceT's MAE pre-trains it
        method = FineTune(num_classes=10, backbone="facet_base", backbone_kwargs=bare)
    assert {name.split(".")[1] for name, _ in method.named_parameters()} == {
        "patch_embed",
        "pos_embed",
        "blocks",
        "weight",
    }
    scales = _scales(method, 0.5)
    expected = {"backbone.pos_embed": 0.0625, "backbone.blocks.0.attn.qkv.weight": 0.125}
    expected |= {"backbone.blocks.2.attn.qkv.weight": 0.5, "head.weight": 1.0}
    assert {name: scales[name] for name in expected} == expected


#: the ≥ 2-d trainable parameters each released code leaves undecayed: the pre-training code decays them all
#: (MAE ``add_weight_decay`` / FaceT ``create_optimizer`` on the MAE wrapper / CAMD
#: ``param_groups_weight_decay`` without a skip list; DINO / LAFS ``get_params_groups``: bias and 1-d only)
DECAYED_TOKENS = {
    "mae": ["encoder.cls_token", "decoder.mask_token"],
    "facet_mae": ["encoder.pos_embed", "decoder.mask_token"],
    "mcf": ["encoder.cls_token", "decoder.mask_token"],
    "camd": ["backbone.cls_token", "mask_token"],
    "dino": ["student.backbone.cls_token", "student.backbone.pos_embed"],
    "lafs": ["student.backbone.cls_token", "student.backbone.pos_embed"],
    "fra": [],
}


def _undecayed(method: torch.nn.Module) -> tuple[set[str], set[str]]:
    """(names of ≥ 2-d parameters without weight decay, names of those with it)."""
    wd = {id(p): g["wd_scale"] for g in param_groups(method) for p in g["params"]}
    named = [(n, p) for n, p in method.named_parameters() if p.requires_grad and p.ndim >= 2]
    return {n for n, p in named if wd[id(p)] == 0.0}, {n for n, p in named if wd[id(p)] == 1.0}


@pytest.mark.parametrize("run", list(DECAYED_TOKENS))
def test_pre_training_methods_decay_tokens_and_positions_as_released(run: str) -> None:
    params = load_params(PROJECT / "params.yaml").pretrain
    assert params.runs[run].method != RANDOM_INIT
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MCF's random frozen teacher
        method, _ = build_method(params.run(run))
    undecayed, decayed = _undecayed(method)
    assert undecayed == set()
    assert set(DECAYED_TOKENS[run]) <= decayed


def test_finetune_exempts_the_backbones_positions_and_cls_token() -> None:
    """FaceT's ``no_weight_decay() = {'pos_embed'}`` (FaceT-B has no cls token); MAE's fine-tuning also
    exempts ``cls_token``. Prompts and Partial FC's centres are decayed."""
    with torch.device("meta"):
        facet = FineTune(num_classes=10, **FACET)
        vit_s = FineTune(num_classes=10, backbone="vit_small_patch16_224")
    undecayed, decayed = _undecayed(facet)
    assert undecayed == {"backbone.pos_embed"}
    assert {"backbone.prompts", "backbone.prompts_pool.queries", "head.weight"} <= decayed
    assert _undecayed(vit_s)[0] == {"backbone.cls_token"}
