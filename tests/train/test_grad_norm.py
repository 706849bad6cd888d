"""The clipping norm covers DDP-ignored (per-rank sharded) parameters too."""

from __future__ import annotations

import math

import torch
from torch.nn.parallel import DistributedDataParallel

from facekit.distributed import global_grad_norm


def test_norm_counts_shared_and_ignored_gradients_once_in_one_process() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 1))
    for p in model.parameters():
        p.grad = torch.full_like(p, 2.0)
    model[0].bias.grad = None  # a parameter without gradient is skipped
    DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, ["1.weight", "1.bias"])
    count = sum(p.numel() for p in model.parameters() if p.grad is not None)
    assert math.isclose(global_grad_norm(model).item(), 2.0 * math.sqrt(count), rel_tol=1e-6)
