"""The one training loop: any :class:`~facekit.methods.base.Method`, one process or many (torchrun).

Per optimizer step: this step's :class:`StepValues` (lr, weight decay, EMA momentum and the method's own
schedules, precomputed per iteration) → :class:`~facekit.train.step.TrainStep` (forward and backward over
``accum_steps`` micro-batches, a NaN/Inf guard, clipping, the method's hooks and the optimizer step). Logs go to
``out_dir/train_log.csv`` / ``metrics.json``, checkpoints to ``out_dir/checkpoints/last``; a rerun with the
same ``out_dir`` resumes from there. Per-rank parameters (those DDP ignores: Partial FC's shard of the
class centres) are checkpointed by every rank, with their optimizer state, and restored on resume.

Resuming gives bit-identical steps: the sampler's order is a function of (seed, epoch), each sample's
augmentation RNGs are seeded from (seed, epoch, index) (so neither the worker count nor the resume point
matters), and the checkpoint holds every rank's RNG state for the method's own randomness.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from facekit import distributed
from facekit.config import TrainConfig
from facekit.methods.base import Method, StepValues
from facekit.train.checkpoint import (
    capture_rng_state,
    find_checkpoint,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from facekit.train.metrics_log import MetricsLogger
from facekit.train.optim import build_optimizer
from facekit.train.samplers import EpochSampler, SeededSamples
from facekit.train.schedules import cosine_schedule, step_schedule
from facekit.train.step import TrainStep, prepare_model

#: the fields of :class:`TrainResult` that vary from run to run of the same inputs (``timing.json``)
TIMING_FIELDS = ("images_per_s", "wall_time_s")


@dataclass(frozen=True)
class TrainResult:
    """Summary of a :func:`train` call (written to ``out_dir/metrics.json``, its speed to ``timing.json``)."""

    out_dir: Path
    steps: int  # optimizer steps completed in total (including those before a resume)
    steps_run: int  # of which run by this call
    skipped_steps: int  # non-finite steps skipped, in total
    final_loss: float  # the last logged loss
    images_per_s: float  # global images per second over this call's steps
    wall_time_s: float


def train(method: Method, dataset: Dataset, cfg: TrainConfig, *, resume: bool = True) -> TrainResult:
    """Train ``method`` on ``dataset`` (whose items are already transformed by ``method.views()``).

    Distributed when launched by torchrun. With ``resume`` and a checkpoint in ``out_dir/checkpoints``, the
    run continues from it; the CSV log drops rows logged after that checkpoint.
    """
    distributed.init_from_env()
    rank, world, device = distributed.rank(), distributed.world_size(), distributed.device_for_rank()
    out_dir = Path(cfg.out_dir)
    _seed_process(cfg.seed + rank)
    method.to(device).train()
    if cfg.sync_batchnorm and world > 1:
        torch.nn.SyncBatchNorm.convert_sync_batchnorm(method)
    sampler = EpochSampler(len(dataset), cfg.seed, rank, world)
    loader = training_loader(dataset, sampler, cfg, device)
    steps_per_epoch = sampler.samples_per_rank // (cfg.batch_size * cfg.accum_steps)
    if steps_per_epoch == 0:
        raise ValueError(f"{len(dataset)} samples make no full step of {cfg.batch_size}×{cfg.accum_steps}×{world}")
    total_steps = cfg.epochs * steps_per_epoch
    end_step = min(total_steps, cfg.max_steps or total_steps)
    global_batch = cfg.batch_size * cfg.accum_steps * world
    base_lr = cfg.lr if cfg.lr is not None else cfg.blr * global_batch / 256
    schedules = _schedules(method, cfg, base_lr, total_steps, steps_per_epoch)
    optimizer = build_optimizer(method, cfg, base_lr)
    ckpt_root = out_dir / "checkpoints"
    run = {"steps_per_epoch": steps_per_epoch, "global_batch": global_batch, "skipped_steps": 0}
    start_step = _resume(ckpt_root, method, optimizer, run) if resume and find_checkpoint(ckpt_root) else 0
    model, ddp = prepare_model(method, cfg, device)
    step_fn = TrainStep(method, model, ddp, optimizer, cfg, device, skipped=run["skipped_steps"])
    logger = MetricsLogger(out_dir, resume_step=start_step)
    if distributed.is_main():
        (out_dir / "train_config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2, default=str))
    show = cfg.progress and distributed.is_main()
    bar = tqdm(total=end_step, initial=start_step, desc="train", unit="step", disable=not show)
    window_start = start_step
    last_loss = float(logger.last_row.get("loss") or math.nan)
    start_time = window_time = time.perf_counter()
    for step, micro_batches in _steps(loader, sampler, start_step, end_step, steps_per_epoch, cfg.accum_steps):
        hp = _step_values(schedules, step, steps_per_epoch, total_steps)
        step_fn(micro_batches, hp)
        run["skipped_steps"] = step_fn.skipped
        bar.update(1)
        if (step + 1) % cfg.log_every == 0 or step + 1 == end_step:
            now = time.perf_counter()
            means = step_fn.drain()
            last_loss = means.get("loss", math.nan)
            ips = (step + 1 - window_start) * global_batch / max(now - window_time, 1e-9)
            logger.log({"step": step, "epoch": hp.epoch, **means, "lr": hp.lr})
            bar.set_postfix(loss=f"{last_loss:.4f}", lr=f"{hp.lr:.2e}", img_s=f"{ips:.1f}")
            window_time, window_start = now, step + 1
        if (cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0) or step + 1 == end_step:
            _save(ckpt_root, method, optimizer, step + 1, steps_per_epoch, run, cfg.keep_checkpoints)
    bar.close()
    wall = time.perf_counter() - start_time
    steps_run = end_step - start_step
    ips = steps_run * global_batch / max(wall, 1e-9)
    result = TrainResult(out_dir, end_step, steps_run, run["skipped_steps"], last_loss, ips, wall)
    summary = dataclasses.asdict(result)
    timing = {k: summary.pop(k) for k in TIMING_FIELDS}
    logger.write_summary({k: v for k, v in summary.items() if k != "out_dir"}, timing)
    logger.close()
    if distributed.is_main():
        print(
            f"train: step {end_step}/{total_steps} ({steps_run} run, {run['skipped_steps']} skipped), "
            f"loss {last_loss:.4f}, {ips:.1f} img/s, {wall:.1f}s -> {out_dir}"
        )
    return result


def training_loader(dataset: Dataset, sampler: EpochSampler, cfg: TrainConfig, device: torch.device) -> DataLoader:
    """The engine's DataLoader: ``sampler``'s ``(epoch, index)`` keys, each sample's augmentation seeded from
    them (:class:`SeededSamples`), ``cfg.num_workers`` persistent workers, pinned memory on CUDA."""
    return DataLoader(
        SeededSamples(dataset, cfg.seed),
        batch_size=cfg.batch_size,
        sampler=sampler,
        num_workers=cfg.num_workers,
        drop_last=True,
        pin_memory=device.type == "cuda",
        persistent_workers=cfg.num_workers > 0,
        generator=torch.Generator().manual_seed(cfg.seed),  # keeps the global RNG untouched
    )


def _schedules(
    method: Method, cfg: TrainConfig, base_lr: float, total: int, steps_per_epoch: int
) -> dict[str, np.ndarray]:
    """Per-iteration arrays: lr, weight_decay, momentum and ``extra/<name>`` from ``method.schedules``."""
    warmup = min(total, round(cfg.warmup_epochs * steps_per_epoch))
    wd_end = cfg.weight_decay if cfg.weight_decay_end is None else cfg.weight_decay_end
    if cfg.lr_schedule == "step":
        milestones = [round(m * steps_per_epoch) for m in cfg.lr_milestones]
        lr = step_schedule(base_lr, milestones, cfg.lr_gamma, total, warmup_steps=warmup)
    else:
        lr = cosine_schedule(base_lr, cfg.min_lr, total, warmup_steps=warmup)
    out = {
        "lr": lr,
        "weight_decay": cosine_schedule(cfg.weight_decay, wd_end, total),
        "momentum": cosine_schedule(cfg.ema_momentum, cfg.ema_momentum_end, total),
    }
    for name, values in method.schedules(total, steps_per_epoch).items():
        if len(values) != total:
            raise ValueError(f"{type(method).__name__}.schedules()[{name!r}] has {len(values)} values, not {total}")
        out[f"extra/{name}"] = np.asarray(values)
    return out


def _step_values(schedules: dict[str, np.ndarray], step: int, steps_per_epoch: int, total: int) -> StepValues:
    extra = {k.removeprefix("extra/"): float(v[step]) for k, v in schedules.items() if k.startswith("extra/")}
    return StepValues(
        step=step,
        epoch=step / steps_per_epoch,
        progress=step / total,
        lr=float(schedules["lr"][step]),
        weight_decay=float(schedules["weight_decay"][step]),
        momentum=float(schedules["momentum"][step]),
        extra=extra,
    )


def _steps(
    loader: DataLoader, sampler: EpochSampler, start: int, end: int, steps_per_epoch: int, accum: int
) -> Iterator[tuple[int, Iterator[Any]]]:
    """Yield ``(step, micro-batches)`` for steps ``start .. end - 1``, starting mid-epoch if needed."""
    step = start
    while step < end:
        epoch, offset = divmod(step, steps_per_epoch)
        sampler.set_epoch(epoch, start=offset * accum * (loader.batch_size or 1))
        batches = iter(loader)
        epoch_end = min(end, (epoch + 1) * steps_per_epoch)
        for this_step in range(step, epoch_end):
            yield this_step, (next(batches) for _ in range(accum))
        step = epoch_end


def _resume(root: Path, method: Method, optimizer: torch.optim.Optimizer, run: dict[str, int]) -> int:
    """Load the checkpoint under ``root``; check it belongs to this schedule; return the next step."""
    state = load_checkpoint(root, method, optimizer, sharded=distributed.rank_local_names(method))
    for key in ("steps_per_epoch", "global_batch"):
        if state.extra.get(key) != run[key]:
            raise ValueError(f"{state.path}: saved with {key}={state.extra.get(key)}, this run has {run[key]}")
    run["skipped_steps"] = state.extra.get("skipped_steps", 0)
    if len(state.rng) == distributed.world_size():
        restore_rng_state(state.rng[distributed.rank()])
    else:
        warnings.warn(f"{state.path}: saved by {len(state.rng)} processes; RNG states not restored", stacklevel=2)
    return state.step


def _save(
    root: Path,
    method: Method,
    optimizer: torch.optim.Optimizer,
    step: int,
    steps_per_epoch: int,
    run: dict[str, int],
    keep: bool,
) -> None:
    rng_states = [capture_rng_state()]
    if distributed.world_size() > 1:  # every rank's RNG, so each resumes its own stream
        rng_states = [None] * distributed.world_size()
        dist.all_gather_object(rng_states, capture_rng_state())
    epoch, sharded = step // steps_per_epoch, distributed.rank_local_names(method)  # sharded: every rank writes
    save_checkpoint(
        root, method, optimizer, step, epoch, dict(run), rng_states=rng_states, keep_step=keep, sharded=sharded
    )


def _seed_process(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
