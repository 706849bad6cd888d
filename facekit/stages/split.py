"""The ``split`` stage (``facekit split``): who is held out of every training stage, written to ``split.file``.

``split.holdout_identities`` (names, or a count chosen by a seeded hash:
:func:`~facekit.eval.identity_pairs.choose_holdout`) over the identity table of ``finetune.shards`` →
``split.file`` = ``{"seed", "held_out": [names], "train": [names]}`` and ``<metrics>/split.json`` (people and
faces on each side). Pre-training and fine-tuning train on :func:`training_subset` (the faces of the ``train``
people only: labels stay unused in pre-training); verification sets and the probes use the ``held_out`` people.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from pathlib import Path

from torch.utils.data import Subset

from facekit.config import Params, PathsParams
from facekit.data.dataset import FaceShardDataset
from facekit.data.shards import INDEX_NAME, ShardReader, read_index
from facekit.eval.identity_pairs import choose_holdout

HOLDOUT_KEY = "split.holdout_identities"


def identity_table(shards: Path) -> list[str]:
    """The identity names of the packed shards at ``shards`` (an item's ``identity`` indexes it)."""
    if not (shards / INDEX_NAME).is_file():
        raise FileNotFoundError(f"no {INDEX_NAME} in {shards}; run `facekit data pack` first")
    return read_index(shards).get("identities") or []


def faces_per_identity(shards: Path) -> dict[str, int]:
    """Identity name -> number of labelled faces in the shards."""
    names = identity_table(shards)
    counts = dict.fromkeys(names, 0)
    for entry in read_index(shards)["shards"]:
        for record in ShardReader(shards / entry["name"]):
            if record.identity >= 0:
                counts[names[record.identity]] += 1
    return counts


def run(params: Params, paths: PathsParams) -> str:
    """The stage: write ``split.file`` and ``<metrics>/split.json``; returns a one-line summary."""
    shards = Path(params.finetune.shards)
    counts = faces_per_identity(shards)
    held = choose_holdout(list(counts), params.split.holdout_identities, params.split.seed, HOLDOUT_KEY)
    train = sorted(set(counts) - set(held))
    out = Path(params.split.file)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"seed": params.split.seed, "held_out": held, "train": train}, indent=1) + "\n")
    report = {
        "seed": params.split.seed,
        "identities_train": len(train),
        "identities_held_out": len(held),
        "faces_train": sum(counts[n] for n in train),
        "faces_held_out": sum(counts[n] for n in held),
    }
    paths.report("split").parent.mkdir(parents=True, exist_ok=True)
    paths.report("split").write_text(json.dumps(report, indent=2) + "\n")
    return (
        f"split: {len(train)} people ({report['faces_train']} faces) to train on, {len(held)} held out "
        f"({report['faces_held_out']} faces) -> {out}"
    )


def held_out(params: Params) -> list[str]:
    """The held-out identity names of ``split.file`` (written by ``facekit split``), checked against the
    shards' identity table; none (and no file read) when ``split.holdout_identities`` holds out nobody."""
    if not params.split.holdout_identities:
        return []
    path = Path(params.split.file)
    if not path.is_file():
        raise FileNotFoundError(f"split.file: {path} not found; run `facekit split` first")
    names = json.loads(path.read_text())["held_out"]
    unknown = sorted(set(names) - set(identity_table(Path(params.finetune.shards))))
    if unknown:
        raise ValueError(f"{path}: {unknown} are not in the shards' identity table; rerun `facekit split`")
    return names


def training_subset(dataset: FaceShardDataset, held: Collection[str]) -> Subset:
    """The records of ``dataset`` whose identity is not in ``held`` (labels keep their numbers)."""
    excluded = {dataset.identities.index(n) for n in held}
    labels = [record.identity for reader in dataset.readers for record in reader]
    return Subset(dataset, [i for i, label in enumerate(labels) if label not in excluded])
