"""The ``pretrain`` stage: one named run of ``params.yaml``'s ``pretrain.runs`` → trained method + backbone.

A run is ``{"method": <METHODS name, default the run name>, <method keyword arguments>, "train": {...}}``,
resolved when params.yaml is loaded (:class:`~facekit.config.RunConfig`; its TrainConfig is ``pretrain.train``
updated by the run's ``train``). :func:`run` builds the method, trains it on
``FaceShardDataset(pretrain.shards, transform=method.views())`` less the held-out people of ``split.file``
(:mod:`facekit.stages.split`; labels unused) into ``pretrain.out/<run>/`` (resuming from a checkpoint there)
and writes

- ``<run>/backbone.safetensors`` + ``<run>/backbone.json``: ``method.export_backbone()``'s weights and its
  :class:`~facekit.nn.backbones.BackboneSpec` (:func:`facekit.nn.backbones.load` rebuilds it);
- ``<metrics>/pretrain_<run>.json`` (DVC metrics) and ``<metrics>/pretrain_<run>.csv`` (the loss curve).

Under torchrun every rank trains (the engine handles DDP); rank 0 writes. Any method registered in
:data:`~facekit.methods.base.METHODS` can be run by name.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from facekit import distributed
from facekit.config import Params, PathsParams, RunConfig
from facekit.data.dataset import FaceShardDataset
from facekit.data.shards import INDEX_NAME
from facekit.methods.base import METHODS, Method  # the package registers every method
from facekit.nn import backbones
from facekit.nn.backbones import BACKBONES, DEFAULT_NORMALIZATION, RANDOM_INIT, BackboneSpec
from facekit.stages import split
from facekit.train.loop import TIMING_FIELDS, TrainResult, train
from facekit.train.metrics_log import LOG_NAME


def build_method(run: RunConfig) -> tuple[Method, BackboneSpec]:
    """``METHODS.create(run.method, **run.method_kwargs)`` and the spec of its exported backbone (the
    ``BACKBONES.create`` call that built the module ``export_backbone()`` returns, the input normalisation of
    the method's views, the run and method). An unknown method, a keyword it does not take (the registry
    names it) or a value it refuses is a ValueError that starts with the run's params.yaml key.
    """
    try:
        method = METHODS.create(run.method, **run.method_kwargs)
    except (KeyError, ValueError) as e:
        raise ValueError(f"{run.where}: {e.args[0] if isinstance(e, KeyError) else e}") from None
    return method, _backbone_spec(method, run)


def run(params: Params, paths: PathsParams, name: str, *, progress: bool = True) -> TrainResult:
    """The stage: train run ``name`` of ``params.pretrain`` and export its backbone (see the module
    docstring); its report is ``<metrics>/pretrain_<name>.json``, the loss curve beside it as ``.csv``.

    A run with ``method: random_init`` trains nothing: it exports its backbone at random init (the
    "no pre-training" baseline that fine-tuning and the leaderboard compare against).
    """
    config = params.pretrain.run(name)
    report = paths.run_report("pretrain", name)
    if config.method == RANDOM_INIT:
        return export_random_init(config, config.train.out_dir, report)
    held = split.held_out(params)
    select = (lambda dataset: split.training_subset(dataset, held)) if held else None
    extra = {"held_out_identities": len(held)}
    shards = Path(params.pretrain.shards)
    return train_and_export(config, shards, report, progress=progress, select=select, report_extra=extra)


def outcome(steps: int, final_loss: float) -> str:
    """How a run ended, for its one-line summary: ``loss L after N steps``, or ``no training (random init)``
    for a run of 0 steps (whose loss is NaN)."""
    return f"loss {final_loss:.4f} after {steps} steps" if steps else "no training (random init)"


def train_and_export(
    run: RunConfig,
    shards: Path,
    report: Path,
    *,
    progress: bool = True,
    select: Callable[[FaceShardDataset], Dataset] | None = None,
    report_extra: dict[str, Any] | None = None,
) -> TrainResult:
    """Train ``run`` on ``FaceShardDataset(shards, transform=method.views())`` (or the part ``select``
    returns) into ``run.train.out_dir`` and export its backbone there; rank 0 writes ``report`` (with
    ``report_extra`` added) and its loss curve next to it as ``.csv``."""
    cfg = dataclasses.replace(run.train, progress=progress)
    out_dir = cfg.out_dir
    if not (shards / INDEX_NAME).is_file():
        raise FileNotFoundError(f"{run.section}.shards: no {INDEX_NAME} in {shards}; run `facekit data pack` first")
    torch.manual_seed(cfg.seed)  # the same initial weights on every run (and every rank)
    method, spec = build_method(run)
    dataset = FaceShardDataset(shards, transform=method.views())
    result = train(method, select(dataset) if select else dataset, cfg)
    if distributed.is_main():
        backbone = method.export_backbone()
        backbones.save(backbone, spec, out_dir)
        summary = {k: v for k, v in dataclasses.asdict(result).items() if k not in ("out_dir", *TIMING_FIELDS)}
        summary |= {"run": run.name, "method": run.method, "backbone": spec.name}
        load_report = getattr(method, "load_report", None)  # fine-tuning: how the initialisation loaded
        if load_report is not None:
            summary["init_load"] = {"loaded": len(load_report.loaded), "missing": load_report.missing}
            summary["init_load"] |= {"unexpected": load_report.unexpected, "mismatched": load_report.mismatched}
        summary |= report_extra or {}
        _write_report(report, summary, backbone)
        shutil.copyfile(out_dir / LOG_NAME, report.with_suffix(".csv"))
    return result


def export_random_init(run: RunConfig, out_dir: Path, report: Path) -> TrainResult:
    """``BACKBONES.create(backbone, **backbone_kwargs)`` at random init (seed ``train.seed``), exported to
    ``out_dir`` like a trained run; ``report`` says 0 steps and gets a loss curve with no rows."""
    settings = dict(run.method_kwargs)
    name, kwargs = settings.pop("backbone", None), settings.pop("backbone_kwargs", None) or {}
    if name is None or settings:
        raise ValueError(f"{run.where}: method {RANDOM_INIT!r} takes backbone and backbone_kwargs only, got {settings}")
    torch.manual_seed(run.train.seed)
    backbone = BACKBONES.create(name, **kwargs)
    try:  # fed as fine-tuning feeds it
        spec = backbones.spec_of(backbone, *DEFAULT_NORMALIZATION, run=run.name, method=RANDOM_INIT)
    except ValueError as e:
        raise ValueError(f"{run.where}: {e}") from None
    backbones.save(backbone, spec, out_dir)
    summary = {"steps": 0, "run": run.name, "method": RANDOM_INIT, "backbone": name}
    _write_report(report, summary, backbone)
    report.with_suffix(".csv").write_text("step,loss\n")
    return TrainResult(
        out_dir, steps=0, steps_run=0, skipped_steps=0, final_loss=float("nan"), images_per_s=0.0, wall_time_s=0.0
    )


def _write_report(path: Path, summary: dict[str, Any], backbone: nn.Module) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    summary = {**summary, "backbone_params": sum(p.numel() for p in backbone.parameters())}
    path.write_text(json.dumps(summary, indent=2) + "\n")


def _backbone_spec(method: Method, run: RunConfig) -> BackboneSpec:
    """The spec of the method's exported backbone: the ``BACKBONES.create`` call that built it (presets and
    the method's own overrides included; EMA copies carry it too), the input normalisation of the method's
    views, and the run."""
    exported = method.export_backbone()
    try:
        return backbones.spec_of(exported, method.mean, method.std, run=run.name, method=run.method)
    except ValueError as e:
        raise ValueError(f"{run.where}: {run.method}.export_backbone(): {e}") from None
