"""The ``finetune`` stage: one run of ``params.yaml``'s ``finetune.runs`` → a face-recognition backbone.

Run ``R`` fine-tunes the pre-training export ``finetune.pretrained/R`` (``backbone.json`` +
``backbone.safetensors``, written by ``facekit pretrain R``) with
:class:`~facekit.methods.finetune.FineTune`: a margin head over (Partial) FC on the shards' identities.
Its keyword arguments are ``finetune.method`` updated by the run's own keys, plus ``init_from`` and
``num_classes`` (the shards' identity table), which the stage sets. It writes, like pre-training,

- ``finetune.out/R/backbone.safetensors`` + ``backbone.json``: the embedding network
  (:func:`facekit.nn.backbones.load` rebuilds it; ``facekit verify R`` scores it);
- ``<metrics>/finetune_R.json`` (DVC metrics, with the load report of the initialisation) and
  ``<metrics>/finetune_R.csv`` (the loss curve).

The held-out identities of ``split.file`` (:mod:`facekit.stages.split`) are left out of the training set (their
labels stay unused classes), so verification can score people the model never saw.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from facekit.config import Params, PathsParams, RunConfig
from facekit.data.shards import INDEX_NAME, read_index
from facekit.nn import backbones
from facekit.stages import split
from facekit.stages.pretrain import train_and_export
from facekit.train.loop import TrainResult


def num_identities(shards: Path) -> int:
    """Identities in the shards' identity table (the classes of the margin head)."""
    if not (shards / INDEX_NAME).is_file():
        raise FileNotFoundError(f"finetune.shards: no {INDEX_NAME} in {shards}; run `facekit data pack` first")
    identities = read_index(shards).get("identities")
    if not identities:
        raise ValueError(f"{shards / INDEX_NAME}: no identity table; fine-tuning needs identity labels")
    return len(identities)


def resolve_finetune_run(params: Params, name: str) -> RunConfig:
    """The ``FineTune`` run ``name`` of ``params.finetune`` (``finetune.method`` + the run's keys +
    ``init_from``), its pre-trained backbone checked, with ``num_classes`` from the shards added."""
    run = params.finetune.run(name)
    init_from = Path(run.method_kwargs["init_from"])
    if not (init_from / backbones.SPEC_FILE).is_file():
        raise FileNotFoundError(f"{run.where}: no pre-trained backbone at {init_from}; run `facekit pretrain {name}`")
    num_classes = num_identities(Path(params.finetune.shards))
    return dataclasses.replace(run, method_kwargs={**run.method_kwargs, "num_classes": num_classes})


def run(params: Params, paths: PathsParams, name: str, *, progress: bool = True) -> TrainResult:
    """The stage: fine-tune run ``name`` of ``params.finetune`` (see the module docstring) on every identity
    but the held-out ones of ``split.file``; its report is ``<metrics>/finetune_<name>.json``. Returns the loop's
    result."""
    resolved = resolve_finetune_run(params, name)
    held = split.held_out(params)
    select = (lambda dataset: split.training_subset(dataset, held)) if held else None
    extra = {k: resolved.method_kwargs[k] for k in ("init_from", "num_classes")} | {"held_out_identities": held}
    report = paths.run_report("finetune", name)
    shards = Path(params.finetune.shards)
    return train_and_export(resolved, shards, report, progress=progress, select=select, report_extra=extra)
