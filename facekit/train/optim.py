"""The engine's optimizer: parameter groups (weight decay, layer-wise lr decay), the timm optimizer over them,
and gradient clipping by the method's clip scope."""

from __future__ import annotations

from typing import Any

import torch
from timm.models._manipulate import group_with_matcher
from timm.optim import create_optimizer_v2, get_optimizer_info

from facekit import distributed
from facekit.config import TrainConfig
from facekit.config.train import FUSED_OPTIMIZERS
from facekit.methods.base import Method


def param_groups(method: torch.nn.Module, layer_decay: float | None = None) -> list[dict[str, Any]]:
    """Optimizer groups over the trainable parameters, each with ``lr_scale`` and ``wd_scale`` (0 or 1).

    No weight decay for 1-d parameters (biases, norms) and for the names ``method.no_weight_decay()`` lists
    (timm's contract, on the module given, as the released code bases call it: a :class:`Method` decides,
    see :meth:`Method.no_weight_decay`). With ``layer_decay`` (FaceT's and MAE's rule, from BEiT), layer
    ids come from :func:`_layer_ids`: ``0 .. n`` with ``n`` the top group, where the parameters no rule of the
    ``group_matcher`` matches and those outside its owner (decoders, Partial FC) sit; layer ``i`` gets
    ``layer_decay ** (n - i)``. For a ViT of L blocks: embeddings ``layer_decay ** (L + 1)``, block ``i``
    ``layer_decay ** (L - i)``, the rest (final norm, prompts, prompt pool, embedding head, heads) 1.
    """
    no_decay = set(method.no_weight_decay()) if hasattr(method, "no_weight_decay") else set()
    layer_of, top = _layer_ids(method) if layer_decay is not None else ({}, 0)
    groups: dict[tuple[int, bool], dict[str, Any]] = {}
    for name, p in method.named_parameters():
        if not p.requires_grad:
            continue
        decay = p.ndim > 1 and name not in no_decay
        layer = layer_of.get(name, top)
        scale = layer_decay ** (top - layer) if layer_decay is not None else 1.0
        group = groups.setdefault((layer, decay), {"params": [], "lr_scale": scale, "wd_scale": float(decay)})
        group["params"].append(p)
    if not groups:
        raise ValueError(f"{type(method).__name__} has no parameter with requires_grad=True")
    return list(groups.values())


#: A parameter name no ``group_matcher`` rule matches: it stands for the parameters outside the matcher's owner.
_OUTSIDE = "<outside the backbone>"


def _layer_ids(method: torch.nn.Module) -> tuple[dict[str, int], int]:
    """(parameter name -> layer id, top id) from timm's ``group_matcher`` of the method, or of its backbone.

    The top id is timm's group of unmatched names, which always exists: the parameters outside the owner
    join it, so it is there even when every parameter of the owner matched a rule.
    """
    owner = method if hasattr(method, "group_matcher") else method.export_backbone()
    prefix = next((f"{n}." if n else "" for n, m in method.named_modules() if m is owner), None)
    if prefix is None or not hasattr(owner, "group_matcher"):
        raise ValueError("layer_decay needs a group_matcher() on the method or on the module export_backbone() returns")
    names = [(name, None) for name, _ in owner.named_parameters()] + [(_OUTSIDE, None)]
    ids = group_with_matcher(names, owner.group_matcher(coarse=False), reverse=True)
    top = ids.pop(_OUTSIDE)
    return {prefix + name: layer for name, layer in ids.items()}, top


def build_optimizer(method: torch.nn.Module, cfg: TrainConfig, lr: float) -> torch.optim.Optimizer:
    """The timm optimizer ``cfg.optimizer`` (``"adamw"``, ``"lars"``, ``"sgd"`` ...) over :func:`param_groups`.

    Betas and momentum are passed where the optimizer takes them; the loop sets each group's lr and weight
    decay every step (scaled by ``lr_scale`` / ``wd_scale``). The fused kernel (:func:`uses_fused_optimizer`)
    computes the same update in one launch per group.
    """
    extra: dict[str, Any] = {"betas": cfg.betas} if get_optimizer_info(cfg.optimizer).has_betas else {}
    if uses_fused_optimizer(cfg, next(method.parameters()).device):
        extra["fused"] = True
    groups = param_groups(method, cfg.layer_decay)
    for group in groups:
        group["weight_decay"] = cfg.weight_decay * group["wd_scale"]
    return create_optimizer_v2(
        groups, opt=cfg.optimizer, lr=lr, weight_decay=cfg.weight_decay, momentum=cfg.momentum, **extra
    )


def uses_fused_optimizer(cfg: TrainConfig, device: torch.device) -> bool:
    """``cfg.fused_optimizer``, or when it is None: on CUDA, for the optimizers with a fused kernel."""
    if cfg.fused_optimizer is not None:
        return cfg.fused_optimizer
    return device.type == "cuda" and cfg.optimizer in FUSED_OPTIMIZERS


def clip_scope_prefix(method: Method, mode: str) -> str:
    """Name prefix (``"backbone."``; ``""`` = the whole method) of the parameters in ``method.clip_scope()``.

    Per-parameter clipping refuses a scope with per-rank parameters (Partial FC's shards): a shard's norm
    is not its parameter's.
    """
    scope = method.clip_scope()
    prefix = next((f"{n}." if n else "" for n, m in method.named_modules() if m is scope), None)
    if prefix is None:
        raise ValueError(f"{type(method).__name__}.clip_scope() is not a submodule of the method")
    sharded = sorted(n for n in distributed.rank_local_names(method) if n.startswith(prefix))
    if mode == "per_parameter" and sharded:
        raise ValueError(f"clip_mode 'per_parameter' cannot clip the per-rank parameters {sharded}")
    return prefix


def clip_gradients_(method: Method, prefix: str, max_norm: float, mode: str, total_norm: torch.Tensor) -> None:
    """Clip, in place, the gradients of ``method``'s parameters whose names start with ``prefix``.

    ``"global"``: all of them by ``max_norm / (‖g‖ + 1e-6)`` if below 1, ``‖g‖`` their joint norm over every
    rank (``total_norm`` when the prefix is empty: the whole method's); ``clip_grad_norm_``. ``"per_parameter"``:
    each gradient on its own, ``g ← g · min(1, max_norm / (‖g‖ + 1e-6))`` (DINO's ``clip_gradients``).
    """
    params = [p for n, p in method.named_parameters() if p.grad is not None and n.startswith(prefix)]
    if mode == "per_parameter":
        for p in params:
            p.grad.mul_((max_norm / (torch.linalg.vector_norm(p.grad) + 1e-6)).clamp(max=1.0))
        return
    norm = distributed.global_grad_norm(method, prefix) if prefix else total_norm
    torch.nn.utils.clip_grads_with_norm_(params, max_norm, norm)
