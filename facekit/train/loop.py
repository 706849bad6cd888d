"""The one training loop: any :class:`~facekit.methods.base.Method`, one process or many (torchrun).

Per optimizer step: this step's :class:`StepValues` (lr, weight decay, EMA momentum and the method's own
schedules, precomputed per iteration) → ``accum_steps`` micro-batches of forward (bf16 autocast) and
backward (DDP syncs on the last one only) → a NaN/Inf guard → gradient clipping (:func:`clip_gradients_`) →
``method.before_optimizer_step(hp)`` → optimizer step → ``method.after_step(hp)``. Logs go to
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
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from timm.models._manipulate import group_with_matcher
from timm.optim import create_optimizer_v2, get_optimizer_info
from torch.nn.parallel import DistributedDataParallel
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
from facekit.train.samplers import EpochSampler, SeededSamples
from facekit.train.schedules import cosine_schedule, step_schedule

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
    loader = _loader(dataset, sampler, cfg, device)
    steps_per_epoch = sampler.samples_per_rank // (cfg.batch_size * cfg.accum_steps)
    if steps_per_epoch == 0:
        raise ValueError(f"{len(dataset)} samples make no full step of {cfg.batch_size}×{cfg.accum_steps}×{world}")
    total_steps = cfg.epochs * steps_per_epoch
    end_step = min(total_steps, cfg.max_steps or total_steps)
    global_batch = cfg.batch_size * cfg.accum_steps * world
    base_lr = cfg.lr if cfg.lr is not None else cfg.blr * global_batch / 256
    schedules = _schedules(method, cfg, base_lr, total_steps, steps_per_epoch)
    optimizer = build_optimizer(method, cfg, base_lr)
    clip_prefix = clip_scope_prefix(method, cfg.clip_mode)
    ckpt_root = out_dir / "checkpoints"
    run = {"steps_per_epoch": steps_per_epoch, "global_batch": global_batch, "skipped_steps": 0}
    start_step = _resume(ckpt_root, method, optimizer, run) if resume and find_checkpoint(ckpt_root) else 0
    model = method
    if world > 1:
        ids = [device.index] if device.type == "cuda" else None
        model = DistributedDataParallel(method, device_ids=ids, find_unused_parameters=cfg.find_unused_parameters)
    use_amp = device.type == "cuda" if cfg.amp is None else cfg.amp
    logger = MetricsLogger(out_dir, resume_step=start_step)
    if distributed.is_main():
        (out_dir / "train_config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2, default=str))
    show = cfg.progress and distributed.is_main()
    bar = tqdm(total=end_step, initial=start_step, desc="train", unit="step", disable=not show)
    window: dict[str, torch.Tensor] = {}
    window_steps, window_start, consecutive_bad = 0, start_step, 0
    last_loss = float(logger.last_row.get("loss") or math.nan)
    start_time = window_time = time.perf_counter()
    for step, micro_batches in _steps(loader, sampler, start_step, end_step, steps_per_epoch, cfg.accum_steps):
        hp = _step_values(schedules, step, steps_per_epoch, total_steps)
        for group in optimizer.param_groups:
            group["lr"], group["weight_decay"] = hp.lr * group["lr_scale"], hp.weight_decay * group["wd_scale"]
        optimizer.zero_grad(set_to_none=True)
        scalars = _forward_backward(model, micro_batches, hp, cfg.accum_steps, device, use_amp)
        grad_norm = distributed.global_grad_norm(method)
        scalars["grad_norm"] = grad_norm.float()
        bad = distributed.all_reduce_sum((~torch.isfinite(scalars["loss"]) | ~torch.isfinite(grad_norm)).float())
        if bad.item() > 0:  # the one host sync per step
            run["skipped_steps"] += 1
            consecutive_bad += 1
            if consecutive_bad >= cfg.max_nonfinite_steps:
                raise FloatingPointError(
                    f"{consecutive_bad} consecutive steps with a non-finite loss or gradient (step {step}: "
                    f"loss {scalars['loss'].item()}, grad norm {grad_norm.item()}); lower the lr or check the data"
                )
            for name in scalars:  # the window keeps its columns even if all its steps are skipped
                window.setdefault(name, torch.zeros((), device=device))
        else:
            consecutive_bad = 0
            if cfg.clip_grad is not None:
                clip_gradients_(method, clip_prefix, cfg.clip_grad, cfg.clip_mode, grad_norm)
            method.before_optimizer_step(hp)
            optimizer.step()
            method.after_step(hp)
            for name, value in scalars.items():
                window[name] = window.get(name, 0.0) + value
            window_steps += 1
        bar.update(1)
        if (step + 1) % cfg.log_every == 0 or step + 1 == end_step:
            now = time.perf_counter()
            means = _window_means(window, window_steps)
            last_loss = means.get("loss", math.nan)
            ips = (step + 1 - window_start) * global_batch / max(now - window_time, 1e-9)
            logger.log({"step": step, "epoch": hp.epoch, **means, "lr": hp.lr})
            bar.set_postfix(loss=f"{last_loss:.4f}", lr=f"{hp.lr:.2e}", img_s=f"{ips:.1f}")
            window, window_steps, window_time, window_start = {}, 0, now, step + 1
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
    decay every step (scaled by ``lr_scale`` / ``wd_scale``).
    """
    extra: dict[str, Any] = {"betas": cfg.betas} if get_optimizer_info(cfg.optimizer).has_betas else {}
    groups = param_groups(method, cfg.layer_decay)
    for group in groups:
        group["weight_decay"] = cfg.weight_decay * group["wd_scale"]
    return create_optimizer_v2(
        groups, opt=cfg.optimizer, lr=lr, weight_decay=cfg.weight_decay, momentum=cfg.momentum, **extra
    )


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


def _loader(dataset: Dataset, sampler: EpochSampler, cfg: TrainConfig, device: torch.device) -> DataLoader:
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


def _forward_backward(
    model: torch.nn.Module,
    micro_batches: Iterator[Any],
    hp: StepValues,
    accum: int,
    device: torch.device,
    amp: bool,
) -> dict[str, torch.Tensor]:
    """Forward (autocast) and backward over ``accum`` micro-batches; DDP all-reduces on the last one only.

    Returns the method's scalars averaged over the micro-batches (detached, float32).
    """
    scalars: dict[str, torch.Tensor] = {}
    for i, batch in enumerate(micro_batches):
        last = i == accum - 1
        with model.no_sync() if isinstance(model, DistributedDataParallel) and not last else nullcontext():
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                out = model(_to_device(batch, device), hp)
            (out["loss"] / accum).backward()
        for name, value in out.items():
            scalars[name] = scalars.get(name, 0.0) + value.detach().float() / accum
    return scalars


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


def _window_means(window: dict[str, torch.Tensor], steps: int) -> dict[str, float]:
    """Mean of each scalar over the window's finite steps and over ranks; NaN for an empty window."""
    names = sorted(window, key=lambda n: (n != "loss", n == "grad_norm", n))
    if steps == 0:
        return {n: math.nan for n in names or ["loss"]}
    means = distributed.all_reduce_mean(torch.stack([window[n] for n in names]) / steps)
    return dict(zip(names, means.tolist(), strict=True))


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, list | tuple):
        return type(batch)(_to_device(v, device) for v in batch)
    return batch


def _seed_process(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
