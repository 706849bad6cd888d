"""Momentum (EMA) targets: BYOL / MoCo-v3 / DINO style ``t ← m·t + (1 − m)·o``.

What each seed averages: MCF (MoCo-v3), FRA (LEWEL/BYOL), LAFS (DINO) and CAMD (SiameseIM) update the
target's *parameters* only; the target's buffers (BatchNorm running statistics) are left alone and, where
the target runs in train mode, keep their own statistics. FaceT has no target network.
``copy_buffers=True`` instead copies the online buffers into the target (timm's ModelEma behaviour).
"""

from __future__ import annotations

import copy

import torch
from torch import nn


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, momentum: float, copy_buffers: bool = False) -> None:
    """In place, for every parameter pair (matched by name): ``t ← momentum·t + (1 − momentum)·o``.

    ``copy_buffers``: also copy the online module's floating-point and integer buffers into the target
    (default False: buffers untouched, as every seed does). Raises if the two modules' names differ.
    """
    target_params = dict(target.named_parameters())
    online_params = dict(online.named_parameters())
    if target_params.keys() != online_params.keys():
        raise ValueError("target and online modules have different parameters")
    for name, t in target_params.items():
        t.mul_(momentum).add_(online_params[name].detach(), alpha=1 - momentum)
    if copy_buffers:
        online_buffers = dict(online.named_buffers())
        for name, buffer in target.named_buffers():
            buffer.copy_(online_buffers[name])


def copy_as_target(module: nn.Module) -> nn.Module:
    """A deep copy of ``module`` with every parameter frozen (``requires_grad=False``), to be updated by
    :func:`ema_update` only. The copy keeps the module's train/eval mode."""
    target = copy.deepcopy(module)
    target.requires_grad_(False)
    return target
