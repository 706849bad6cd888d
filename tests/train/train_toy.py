"""A tiny Method and Dataset for the training-engine tests; run as a script for the subprocess tests.

``ToySamples``: per-index fixed inputs plus an augmentation drawn from the global ``np.random`` and torch
RNGs (as real views do). ``ToyMethod``: a 2-layer MLP regressing a fixed random function, with optional
dropout drawn from torch's global RNG, an optional cross-batch term over gathered features, injected NaN
losses, an EMA target updated in ``after_step``, and a per-step delay (to be killed mid-run).
``ToyPartialFC``: an MLP embedding trained with Partial FC on ``index % CLASSES`` (sharded centres under DDP).
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Dataset

from facekit import distributed
from facekit.config import TrainConfig
from facekit.methods.base import Method, StepValues
from facekit.nn.margins import ArcFace
from facekit.nn.partial_fc import PartialFC
from facekit.train.loop import train

DIM, HIDDEN, OUT = 8, 16, 4
EMB, CLASSES = 6, 23  # Partial FC: 23 classes split 12 / 11 over two ranks


class ToySamples(Dataset):
    """``n`` items ``{"x": [DIM], "y": [OUT], "index": int}``; ``y`` is a fixed function of the clean input."""

    def __init__(self, n: int = 64, augment: bool = True) -> None:
        self.n, self.augment = n, augment
        self.mixing = torch.from_numpy(np.random.default_rng(1234).standard_normal((DIM, OUT))).float()

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, Any]:
        x = torch.from_numpy(np.random.default_rng(i).standard_normal(DIM)).float()
        y = torch.tanh(0.5 * (x @ self.mixing))
        if self.augment:  # the global RNGs, seeded per sample by the loop
            x = x + 0.05 * torch.from_numpy(np.random.standard_normal(DIM)).float() + 0.05 * torch.randn(DIM)
        return {"x": x, "y": y, "index": i}


class ToyMethod(Method):
    def __init__(
        self,
        dropout: float = 0.0,
        cross_batch: bool = False,
        nan_steps: frozenset[int] = frozenset(),
        step_delay_s: float = 0.0,
        grad_dump: Path | None = None,
    ) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(DIM, HIDDEN), nn.GELU(), nn.Linear(HIDDEN, OUT))
        self.target = copy.deepcopy(self.net).requires_grad_(False)
        self.dropout, self.cross_batch, self.nan_steps = dropout, cross_batch, nan_steps
        self.step_delay_s, self.grad_dump = step_delay_s, grad_dump
        self.after_step_calls = 0
        self.first_grads: dict[str, torch.Tensor] = {}

    def forward(self, batch: dict[str, Any], hp: StepValues) -> dict[str, torch.Tensor]:
        hidden = self.net[1](self.net[0](batch["x"]))  # [B, HIDDEN]
        if self.dropout:
            keep = (torch.rand_like(hidden) > self.dropout).float()
            hidden = hidden * keep / (1 - self.dropout)
        mse = ((self.net[2](hidden) - batch["y"]) ** 2).mean()
        loss = mse
        if self.cross_batch:  # an InfoNCE-like term against the whole (gathered) batch
            gathered = distributed.all_gather_cat_with_grad(hidden)  # [world * B, HIDDEN]
            loss = loss + 0.1 * torch.logsumexp(hidden @ gathered.T / 4, dim=1).mean()
        if hp.step in self.nan_steps:
            loss = loss * torch.tensor(float("nan"))
        if self.step_delay_s:
            time.sleep(self.step_delay_s)
        return {"loss": loss, "mse": mse}

    def after_step(self, hp: StepValues) -> None:
        if self.after_step_calls == 0:
            self.first_grads = {n: p.grad.detach().clone() for n, p in self.named_parameters() if p.grad is not None}
            if self.grad_dump is not None and distributed.is_main():
                torch.save(self.first_grads, self.grad_dump)
        self.after_step_calls += 1
        with torch.no_grad():
            for t, s in zip(self.target.parameters(), self.net.parameters(), strict=True):
                t.mul_(hp.momentum).add_(s, alpha=1 - hp.momentum)

    def export_backbone(self) -> nn.Module:
        return self.net


class ToyPartialFC(Method):
    """An MLP embedding ``[B, EMB]`` with a Partial FC ArcFace head (sample rate 0.5) over ``CLASSES`` classes,
    label ``index % CLASSES``; under DDP each rank's centres are hidden from DDP, as in ``FineTune``.
    ``first_centres``: this rank's centres at the first forward (after a resume: as restored)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(DIM, HIDDEN), nn.GELU(), nn.Linear(HIDDEN, EMB))
        self.head = PartialFC(ArcFace(), CLASSES, EMB, sample_rate=0.5)
        ignored = [f"head.{n}" for n in self.head.local_parameter_names()]
        if ignored:
            DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(self, ignored)
        self.first_centres: torch.Tensor | None = None

    def forward(self, batch: dict[str, Any], hp: StepValues) -> dict[str, torch.Tensor]:
        if self.first_centres is None:
            self.first_centres = self.head.weight.detach().clone()
        return self.head(self.net(batch["x"]), batch["index"] % CLASSES)

    def export_backbone(self) -> nn.Module:
        return self.net


def toy_config(out_dir: Path, **overrides: Any) -> TrainConfig:
    """Adam at lr 1e-2, batch 8, 2 epochs of 64 samples (16 steps), logging every step, no progress bar."""
    base: dict[str, Any] = {
        "epochs": 2,
        "batch_size": 8,
        "out_dir": out_dir,
        "lr": 1e-2,
        "warmup_epochs": 0.5,
        "weight_decay": 1e-4,
        "ema_momentum": 0.9,
        "log_every": 1,
        "checkpoint_every": None,
        "progress": False,
    }
    return TrainConfig(**{**base, **overrides})


def main() -> None:
    parser = argparse.ArgumentParser(description="train the toy method (subprocess tests)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--accum-steps", type=int, default=1)
    parser.add_argument("--dropout", type=float, default=0.0)
    parser.add_argument("--cross-batch", action="store_true")
    parser.add_argument("--checkpoint-every", type=int, default=None)
    parser.add_argument("--max-steps", type=int, default=None)
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--step-delay", type=float, default=0.0)
    parser.add_argument("--grad-dump", type=Path, default=None)
    args = parser.parse_args()
    method = ToyMethod(args.dropout, args.cross_batch, step_delay_s=args.step_delay, grad_dump=args.grad_dump)
    cfg = toy_config(
        args.out,
        batch_size=args.batch_size,
        accum_steps=args.accum_steps,
        checkpoint_every=args.checkpoint_every,
        max_steps=args.max_steps,
        num_workers=args.num_workers,
    )
    train(method, ToySamples(), cfg)


if __name__ == "__main__":
    main()
