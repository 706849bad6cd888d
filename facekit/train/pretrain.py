"""The ``pretrain`` stage: one named run of ``params.yaml``'s ``pretrain.runs`` → trained method + backbone.

A run is ``{"method": <METHODS name, default the run name>, <method keyword arguments>, "train": {...}}``;
its TrainConfig is ``pretrain.train`` updated by the run's ``train``. :func:`run_pretrain` builds the
method, trains it on ``FaceShardDataset(pretrain.shards, transform=method.views())`` into
``pretrain.out/<run>/`` (resuming from a checkpoint there) and writes

- ``<run>/backbone.safetensors`` + ``<run>/backbone.json``: ``method.export_backbone()``'s weights and its
  :class:`~facekit.nn.backbones.BackboneSpec` (:func:`facekit.nn.backbones.load` rebuilds it);
- ``metrics/pretrain_<run>.json`` (DVC metrics) and ``metrics/pretrain_<run>.csv`` (the loss curve).

Under torchrun every rank trains (the engine handles DDP); rank 0 writes. Any method registered in
:data:`~facekit.methods.base.METHODS` can be run by name.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import json
import shutil
import sys
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.utils.data import Dataset

from facekit.config import Params, PretrainParams
from facekit.data.dataset import FaceShardDataset
from facekit.data.shards import INDEX_NAME
from facekit.nn import backbones
from facekit.nn.backbones import BACKBONES, DEFAULT_NORMALIZATION, RANDOM_INIT, BackboneSpec
from facekit.train import distributed
from facekit.train.metrics_log import LOG_NAME

if TYPE_CHECKING:
    from facekit.methods.base import Method
    from facekit.train.loop import TrainConfig, TrainResult

_SET_BY_STAGE = ("out_dir", "progress")  # TrainConfig fields the stage sets itself


@dataclass(frozen=True)
class PretrainRun:
    """One resolved run: ``METHODS.create(method, **method_kwargs)`` trained with ``TrainConfig(**train)``
    (``train`` holds every field but ``out_dir`` and ``progress``)."""

    name: str
    method: str
    method_kwargs: dict[str, Any]
    train: dict[str, Any]
    section: str = "pretrain"  # the params.yaml section the run comes from (in error messages)

    @property
    def where(self) -> str:
        return f"{self.section}.runs.{self.name}"


def resolve_run(params: PretrainParams, name: str, section: str = "pretrain") -> PretrainRun:
    """Look ``name`` up in ``params.runs`` and merge its TrainConfig; unknown names and keys are ValueErrors.

    ``section`` names the params.yaml section in messages (fine-tuning runs use the same format).
    """
    from facekit.train.loop import TrainConfig

    if name not in params.runs:
        close = difflib.get_close_matches(name, params.runs, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        defined = ", ".join(params.runs) or "none"
        raise ValueError(f"unknown {section} run {name!r}{hint}; params.yaml defines: {defined}")
    settings = dict(params.runs[name])
    method = settings.pop("method", name)
    overrides = settings.pop("train", None) or {}
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    for where, values in ((f"{section}.train", params.train), (f"{section}.runs.{name}.train", overrides)):
        for key in values:
            if key in _SET_BY_STAGE:
                raise ValueError(f"{where}.{key} is set by the stage (out_dir = {section}.out/<run>); remove it")
            if key not in fields:
                valid = sorted(set(fields) - set(_SET_BY_STAGE))
                raise ValueError(f"{where}: unknown TrainConfig key {key!r}{_suggest(key, valid)}; valid: {valid}")
    merged = {**params.train, **overrides}
    for key, value in merged.items():  # YAML gives lists where TrainConfig takes tuples (betas)
        if isinstance(fields[key].default, tuple) and isinstance(value, list):
            merged[key] = tuple(value)
    return PretrainRun(name, method, settings, merged, section)


def train_config(run: PretrainRun, out_dir: Path, progress: bool = True) -> TrainConfig:
    """The run's TrainConfig writing to ``out_dir``; its own checks (lr vs blr, sizes) name the run."""
    from facekit.train.loop import TrainConfig

    try:
        return TrainConfig(**run.train, out_dir=out_dir, progress=progress)
    except TypeError as e:  # a required field (epochs, batch_size) missing
        raise ValueError(f"{run.where}: TrainConfig {e}") from None
    except ValueError as e:
        raise ValueError(f"{run.where}: {e}") from None


def build_method(run: PretrainRun) -> tuple[Method, BackboneSpec]:
    """``METHODS.create(run.method, **run.method_kwargs)`` and the spec of its exported backbone (the
    ``BACKBONES.create`` call that built the module ``export_backbone()`` returns, the input normalisation of
    the method's views, the run and method). A bad keyword is a ValueError naming the run and the method's
    parameters.
    """
    import facekit.methods  # noqa: F401  (registers the built-in methods)
    from facekit.methods.base import METHODS

    if run.method not in METHODS:
        raise ValueError(f"{run.where}: unknown method {run.method!r}; registered: {METHODS.names()}")
    factory = METHODS.get(run.method)
    valid, open_ended = _keywords(factory)
    unknown = [k for k in run.method_kwargs if k not in valid]
    if unknown and not open_ended:
        hints = ", ".join(f"{k!r}{_suggest(k, valid)}" for k in unknown)
        raise ValueError(
            f"{run.where}: method {run.method!r} does not take {hints}; "
            f"its parameters: {', '.join(valid)} (plus 'method' and 'train')"
        )
    try:
        method = factory(**run.method_kwargs)
    except TypeError as e:  # e.g. an unknown key inside backbone_kwargs
        if "argument" not in str(e):
            raise
        raise ValueError(f"{run.where} (method {run.method!r}): {e}") from None
    return method, _backbone_spec(method, run)


def run_pretrain(params: Params, run: str, *, progress: bool = True, report: Path | None = None) -> TrainResult:
    """Train run ``run`` of ``params.pretrain`` and export its backbone (see the module docstring).

    ``report`` defaults to ``metrics/pretrain_<run>.json``; its loss curve goes next to it as ``.csv``.
    A run with ``method: random_init`` trains nothing: it exports its backbone at random init (the
    "no pre-training" baseline that fine-tuning and the leaderboard compare against).
    """
    resolved = resolve_run(params.pretrain, run)
    out_dir = Path(params.pretrain.out) / run
    if resolved.method == RANDOM_INIT:
        return export_random_init(resolved, out_dir, report or Path("metrics") / f"pretrain_{run}.json")
    return train_and_export(resolved, Path(params.pretrain.shards), out_dir, progress=progress, report=report)


def train_and_export(
    run: PretrainRun,
    shards: Path,
    out_dir: Path,
    *,
    progress: bool = True,
    report: Path | None = None,
    select: Callable[[FaceShardDataset], Dataset] | None = None,
    report_extra: dict[str, Any] | None = None,
) -> TrainResult:
    """Train ``run`` on ``FaceShardDataset(shards, transform=method.views())`` (or the part ``select``
    returns) into ``out_dir`` and export its backbone there; rank 0 writes ``report`` (default
    ``metrics/<section>_<run>.json``, with ``report_extra`` added) and its loss curve next to it as ``.csv``."""
    from facekit.train.loop import train

    cfg = train_config(run, out_dir, progress)
    if not (shards / INDEX_NAME).is_file():
        raise FileNotFoundError(f"{run.section}.shards: no {INDEX_NAME} in {shards}; run `facekit data pack` first")
    torch.manual_seed(cfg.seed)  # the same initial weights on every run (and every rank)
    method, spec = build_method(run)
    dataset = FaceShardDataset(shards, transform=method.views())
    result = train(method, select(dataset) if select else dataset, cfg)
    if distributed.is_main():
        backbone = method.export_backbone()
        backbones.save(backbone, spec, out_dir)
        summary = {k: v for k, v in dataclasses.asdict(result).items() if k != "out_dir"}
        summary |= {"run": run.name, "method": run.method, "backbone": spec.name}
        load_report = getattr(method, "load_report", None)  # fine-tuning: how the initialisation loaded
        if load_report is not None:
            summary["init_load"] = {"loaded": len(load_report.loaded), "missing": load_report.missing}
            summary["init_load"] |= {"unexpected": load_report.unexpected, "mismatched": load_report.mismatched}
        summary |= report_extra or {}
        report = _write_report(report or Path("metrics") / f"{run.section}_{run.name}.json", summary, backbone)
        shutil.copyfile(out_dir / LOG_NAME, report.with_suffix(".csv"))
    return result


def export_random_init(run: PretrainRun, out_dir: Path, report: Path) -> TrainResult:
    """``BACKBONES.create(backbone, **backbone_kwargs)`` at random init (seed ``train.seed``), exported to
    ``out_dir`` like a trained run; ``report`` says 0 steps and gets a loss curve with no rows."""
    from facekit.train.loop import TrainResult

    settings = dict(run.method_kwargs)
    name, kwargs = settings.pop("backbone", None), settings.pop("backbone_kwargs", None) or {}
    if name is None or settings:
        raise ValueError(f"{run.where}: method {RANDOM_INIT!r} takes backbone and backbone_kwargs only, got {settings}")
    torch.manual_seed(int(run.train.get("seed", 0)))
    backbone = BACKBONES.create(name, **kwargs)
    try:  # fed as fine-tuning feeds it
        spec = backbones.spec_of(backbone, *DEFAULT_NORMALIZATION, run=run.name, method=RANDOM_INIT)
    except ValueError as e:
        raise ValueError(f"{run.where}: {e}") from None
    backbones.save(backbone, spec, out_dir)
    summary = {"steps": 0, "run": run.name, "method": RANDOM_INIT, "backbone": name}
    report = _write_report(report, summary, backbone)
    report.with_suffix(".csv").write_text("step,loss\n")
    return TrainResult(
        out_dir, steps=0, steps_run=0, skipped_steps=0, final_loss=float("nan"), images_per_s=0.0, wall_time_s=0.0
    )


def _write_report(path: Path, summary: dict[str, Any], backbone: nn.Module) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    summary = {**summary, "backbone_params": sum(p.numel() for p in backbone.parameters())}
    path.write_text(json.dumps(summary, indent=2) + "\n")
    return path


def torchrun_command(
    run: str, params_path: Path, nproc_per_node: int, quiet: bool = False, stage: str = "pretrain"
) -> list[str]:
    """``python -m torch.distributed.run --nproc_per_node N -m facekit.cli <stage> RUN ...`` (one node)."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc_per_node}"]
    command += ["-m", "facekit.cli", stage, run, "--params", str(params_path)]
    return command + (["--quiet"] if quiet else [])


def _backbone_spec(method: Method, run: PretrainRun) -> BackboneSpec:
    """The spec of the method's exported backbone: the ``BACKBONES.create`` call that built it (presets and
    the method's own overrides included; EMA copies carry it too), the input normalisation of the method's
    views, and the run."""
    exported = method.export_backbone()
    try:
        return backbones.spec_of(exported, method.mean, method.std, run=run.name, method=run.method)
    except ValueError as e:
        raise ValueError(f"{run.where}: {run.method}.export_backbone(): {e}") from None


def _keywords(factory: Any) -> tuple[list[str], bool]:
    """(keyword parameters of a method factory, whether it takes others too). A preset taking
    ``**overrides`` and annotated to return a class adds that class's parameters."""
    target = factory.__init__ if inspect.isclass(factory) else factory
    params = list(inspect.signature(target).parameters.values())
    names = [p.name for p in params if p.name != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]
    if not any(p.kind is p.VAR_KEYWORD for p in params):
        return names, False
    try:
        returned = None if inspect.isclass(factory) else typing.get_type_hints(factory).get("return")
    except NameError:
        returned = None
    if not inspect.isclass(returned):
        return names, True
    inner, open_ended = _keywords(returned)
    return names + [n for n in inner if n not in names], open_ended


def _suggest(key: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(key, valid, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""
