"""The engine's optimizer step, :class:`TrainStep`: the one used by :func:`facekit.train.loop.train` and timed
by ``benchmarks/train.py``, and :func:`prepare_model`, the speed settings of the module it calls.

Per step: each group's lr and weight decay from ``hp`` → zero_grad → ``accum_steps`` micro-batches of
forward (bf16 autocast) and backward (DDP all-reduces on the last one only) → the global gradient norm →
a NaN/Inf guard (the one host sync per step) → clipping → ``method.before_optimizer_step(hp)`` → optimizer
step → ``method.after_step(hp)``. The finite steps' scalars add up on the device until :meth:`TrainStep.drain`
(the logging cadence) reads them. The phases are labelled for ``torch.profiler`` (``step/forward``,
``step/backward``, ``step/guard``, ``step/update``: clipping, hooks, optimizer and EMA).
"""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import nullcontext
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.profiler import record_function

from facekit import distributed
from facekit.config import TrainConfig
from facekit.methods.base import Method, StepValues
from facekit.train.optim import clip_gradients_, clip_scope_prefix


def prepare_model(
    method: Method, cfg: TrainConfig, device: torch.device
) -> tuple[torch.nn.Module, DistributedDataParallel | None]:
    """``(model, ddp)``: the module a step calls on ``method`` (already on ``device``), and its DDP wrapper
    (None in one process).

    ``cfg.channels_last`` puts 4-d weights (convolutions) in channels-last memory format; more than one process
    wraps the method in DDP; ``cfg.compile`` (a ``torch.compile`` mode) compiles that module's forward and
    backward. The parameters stay ``method``'s, so the optimizer, EMA hooks and checkpoints see them as before.
    """
    if cfg.channels_last:
        method.to(memory_format=torch.channels_last)
    ddp = None
    if distributed.world_size() > 1:
        ids = [device.index] if device.type == "cuda" else None
        ddp = DistributedDataParallel(method, device_ids=ids, find_unused_parameters=cfg.find_unused_parameters)
    model: torch.nn.Module = ddp or method
    if cfg.compile is not None:
        model = torch.compile(model, mode=cfg.compile)
    return model, ddp


class TrainStep:
    """One optimizer step of ``method`` through ``model`` (see :func:`prepare_model`), plus its log window."""

    def __init__(
        self,
        method: Method,
        model: torch.nn.Module,
        ddp: DistributedDataParallel | None,
        optimizer: torch.optim.Optimizer,
        cfg: TrainConfig,
        device: torch.device,
        skipped: int = 0,
    ) -> None:
        """``skipped``: non-finite steps skipped before (a resumed run's count)."""
        self.method, self.model, self.ddp, self.optimizer = method, model, ddp, optimizer
        self.cfg, self.device = cfg, device
        self.amp = device.type == "cuda" if cfg.amp is None else cfg.amp
        self.clip_prefix = clip_scope_prefix(method, cfg.clip_mode)
        self.skipped, self.consecutive_bad = skipped, 0
        self.window: dict[str, torch.Tensor] = {}
        self.window_steps = 0

    def __call__(self, micro_batches: Iterable[Any], hp: StepValues) -> bool:
        """Run one step on ``accum_steps`` micro-batches; False when it was skipped (non-finite loss or gradient).

        Raises FloatingPointError after ``max_nonfinite_steps`` skipped steps in a row.
        """
        for group in self.optimizer.param_groups:
            group["lr"], group["weight_decay"] = hp.lr * group["lr_scale"], hp.weight_decay * group["wd_scale"]
        self.optimizer.zero_grad(set_to_none=True)
        scalars = self._forward_backward(micro_batches, hp)
        with record_function("step/guard"):
            grad_norm = distributed.global_grad_norm(self.method)
            scalars["grad_norm"] = grad_norm.float()
            bad = distributed.all_reduce_sum((~torch.isfinite(scalars["loss"]) | ~torch.isfinite(grad_norm)).float())
            skip = bad.item() > 0  # the one host sync per step
        if skip:
            self.skipped += 1
            self.consecutive_bad += 1
            if self.consecutive_bad >= self.cfg.max_nonfinite_steps:
                raise FloatingPointError(
                    f"{self.consecutive_bad} consecutive steps with a non-finite loss or gradient (step {hp.step}: "
                    f"loss {scalars['loss'].item()}, grad norm {grad_norm.item()}); lower the lr or check the data"
                )
            for name in scalars:  # the window keeps its columns even if all its steps are skipped
                self.window.setdefault(name, torch.zeros((), device=self.device))
            return False
        self.consecutive_bad = 0
        with record_function("step/update"):
            if self.cfg.clip_grad is not None:
                clip_gradients_(self.method, self.clip_prefix, self.cfg.clip_grad, self.cfg.clip_mode, grad_norm)
            self.method.before_optimizer_step(hp)
            self.optimizer.step()
            self.method.after_step(hp)
        for name, value in scalars.items():
            self.window[name] = self.window[name] + value if name in self.window else value
        self.window_steps += 1
        return True

    def drain(self) -> dict[str, float]:
        """Mean of each scalar over the window's finite steps and over ranks (NaN for an empty window);
        ``loss`` first, ``grad_norm`` last. Starts a new window."""
        names = sorted(self.window, key=lambda n: (n != "loss", n == "grad_norm", n))
        if self.window_steps == 0:
            means = {n: float("nan") for n in names or ["loss"]}
        else:
            stacked = torch.stack([self.window[n] for n in names]) / self.window_steps
            means = dict(zip(names, distributed.all_reduce_mean(stacked).tolist(), strict=True))
        self.window, self.window_steps = {}, 0
        return means

    def _forward_backward(self, micro_batches: Iterable[Any], hp: StepValues) -> dict[str, torch.Tensor]:
        """Forward (autocast) and backward over the micro-batches; DDP all-reduces on the last one only.

        Returns the method's scalars averaged over the micro-batches (detached, float32).
        """
        accum = self.cfg.accum_steps
        scalars: dict[str, torch.Tensor] = {}
        for i, batch in enumerate(micro_batches):
            with self.ddp.no_sync() if self.ddp is not None and i < accum - 1 else nullcontext():
                with record_function("step/forward"), torch.autocast(self.device.type, torch.bfloat16, self.amp):
                    out = self.model(to_device(batch, self.device, self.cfg.channels_last), hp)
                with record_function("step/backward"):
                    (out["loss"] / accum).backward()
            for name, value in out.items():  # a float (a scheduled value) joins the others on the device here
                value = (
                    value.detach().float()
                    if isinstance(value, torch.Tensor)
                    else torch.tensor(value, device=self.device)
                )
                scalars[name] = scalars.get(name, 0.0) + value / accum
        return scalars


def to_device(batch: Any, device: torch.device, channels_last: bool = False) -> Any:
    """``batch`` (tensors in nested dicts / lists / tuples) on ``device``, copied without blocking the host;
    4-d tensors in channels-last memory format with ``channels_last``."""
    if isinstance(batch, torch.Tensor):
        moved = batch.to(device, non_blocking=True)
        return moved.contiguous(memory_format=torch.channels_last) if channels_last and moved.ndim == 4 else moved
    if isinstance(batch, dict):
        return {k: to_device(v, device, channels_last) for k, v in batch.items()}
    if isinstance(batch, list | tuple):
        return type(batch)(to_device(v, device, channels_last) for v in batch)
    return batch
