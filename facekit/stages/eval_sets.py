"""The ``eval_sets`` stage: the verification sets of ``verify.pairs`` over the packed faces.

``verify.pairs: auto`` draws balanced pairs from the shards' own identities
(:func:`~facekit.eval.identity_pairs.identity_pairs`), so any labelled source gets its sets; a pair list file
names faces of the shards instead.

``verify.sets/<name>.bin`` (holistic pairs) and ``<name>_masked.bin`` (the second face of each pair is its
synthetic masked twin), each with its ``.landmarks.npy`` when the shards have dense landmarks (the faces'
mesh points, for LAFS models of the ``"mesh"`` source; see :mod:`facekit.eval.make_bin`), with
``<metrics>/eval_sets.json`` counting the pairs kept and dropped; with
held-out people (``split.file``, :mod:`facekit.stages.split`) only pairs of those identities, which no training
stage sees. The ``verify``
stage (:mod:`facekit.stages.verify`) scores each model on them.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from facekit.assets import resolve_model
from facekit.config import Params, PathsParams
from facekit.data.shards import ShardReader, read_index
from facekit.eval.identity_pairs import AUTO, identity_pairs
from facekit.eval.make_bin import AlignedFaces, PairList, build_bin, read_pairs
from facekit.stages import split

MASKED_SUFFIX = "_masked"


def set_paths(params: Params) -> dict[str, Path]:
    """``{set name: .bin path}`` of the verification sets :func:`run` writes."""
    name, folder = params.verify.name, Path(params.verify.sets)
    return {name: folder / f"{name}.bin", name + MASKED_SUFFIX: folder / f"{name}{MASKED_SUFFIX}.bin"}


def run(params: Params, paths: PathsParams) -> str:
    """The stage: write the holistic and masked ``.bin`` sets of ``verify.pairs`` over ``finetune.shards``
    and the report ``<metrics>/eval_sets.json``; returns a one-line summary.

    The held-out people of ``split.file`` are the people no training stage sees: ``auto`` pairs are drawn
    among them only; of a pair list, only pairs whose two faces belong to them are kept (the others are
    counted as ``other_identities``). A pair list has no folds of its own: its pairs are shuffled (seed 0) so
    that each of the 10 folds mixes same and different pairs. A pair whose face is not in the shards
    (rejected upstream) or has no masked twin is dropped and counted; the report holds ``{set: {pairs, same,
    dropped}}``, the pair list's size and ``other_identities``: pairs = list - other - dropped.
    """
    shards = Path(params.finetune.shards)
    faces = AlignedFaces.from_shards(shards)
    identities = read_index(shards).get("identities") or []
    identity = _identity_by_key(shards, identities)
    held = split.held_out(params)
    other = 0
    if params.verify.pairs == AUTO:
        pairs = identity_pairs({k: v for k, v in identity.items() if not held or v in held})
    else:
        pairs = read_pairs(resolve_model(params.verify.pairs))
        if held:
            faces, pairs, other = _holdout(faces, pairs, identity, held)
    if pairs.n_folds is None:  # a CSV list has no protocol folds: mix same and different pairs in every fold
        pairs = _select(pairs, np.random.default_rng(0).permutation(len(pairs)).tolist())
    counts: dict[str, dict[str, int]] = {}
    for (name, path), masked in zip(set_paths(params).items(), ("none", "second"), strict=True):
        built = build_bin(pairs, faces, path, masked=masked, strict=False)
        counts[name] = {"pairs": built.pairs, "same": built.same, "dropped": len(built.dropped)}
    report = paths.report("eval_sets")
    report.parent.mkdir(parents=True, exist_ok=True)
    summary = {"pair_list": len(pairs) + other, "other_identities": other, **counts}
    report.write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    return "eval sets: " + ", ".join(f"{n} {c['pairs']} pairs ({c['dropped']} dropped)" for n, c in counts.items())


def _identity_by_key(shards: Path, names: list[str]) -> dict[str, str]:
    """Record key -> identity name (``names``: the identity table), over the labelled records of the shards of
    ``shards/index.json``."""
    records = (r for e in read_index(shards)["shards"] for r in ShardReader(shards / e["name"]))
    return {r.key: names[r.identity] for r in records if r.identity >= 0}


def _holdout(
    faces: AlignedFaces, pairs: PairList, identity: dict[str, str], holdout: list[str]
) -> tuple[AlignedFaces, PairList, int]:
    """(faces of the ``holdout`` identities, the pairs with no face of another identity, pairs left out)."""
    held = set(holdout)
    kept = AlignedFaces(
        images={k: v for k, v in faces.images.items() if identity.get(k) in held},
        masked={k: v for k, v in faces.masked.items() if identity.get(k) in held},
        landmarks={k: v for k, v in faces.landmarks.items() if identity.get(k) in held},
    )

    def inside(name: str) -> bool:  # a face of a held-out identity, or one the shards lack (dropped later)
        return kept.get(name) is not None or faces.get(name) is None

    rows = [i for i, (a, b) in enumerate(zip(pairs.first, pairs.second, strict=True)) if inside(a) and inside(b)]
    if not rows:
        raise ValueError(f"no pair of {len(pairs)} has both faces in split.holdout_identities {holdout}")
    return kept, _select(pairs, rows), len(pairs) - len(rows)


def _select(pairs: PairList, rows: list[int]) -> PairList:
    """The pairs at ``rows``, in that order (no protocol folds)."""
    return PairList([pairs.first[i] for i in rows], [pairs.second[i] for i in rows], pairs.issame[rows])
