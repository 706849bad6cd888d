"""The evaluation end of the lineage: verification sets from the shards, one model's scores, the leaderboard.

- :func:`make_sets` (``facekit eval sets``, DVC stage ``eval_sets``): ``verify.pairs`` over the packed faces
  → ``verify.sets/<name>.bin`` (holistic pairs) and ``<name>_masked.bin`` (the second face of each pair is
  its synthetic masked twin), with ``metrics/eval_sets.json`` counting the pairs kept and dropped; with
  ``verify.holdout_identities`` only pairs of those identities, which fine-tuning leaves out.
- :func:`verify_run` (``facekit verify RUN``, stage ``verify@RUN``): the fine-tuned ``finetune.out/RUN``
  scored on every ``.bin`` of ``verify.sets`` (flip test, 10 folds; faces normalised as its backbone spec
  says) → ``metrics/verify/RUN.json`` and ROC curves under ``plots/verify/RUN/``. Run ``reference`` scores
  ``verify.reference`` (an external ONNX model).
- :func:`facekit.eval.leaderboard.write_leaderboard` gathers them.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from facekit.assets import resolve_model
from facekit.config import Params
from facekit.data.shards import ShardReader, read_index
from facekit.eval.benchmarks import BenchmarkResult, evaluate_bin, write_reports
from facekit.eval.embedding_model import EmbeddingModel, TorchEmbedder, load_embedding_model
from facekit.eval.make_bin import AlignedFaces, PairList, build_bin, read_pairs
from facekit.nn import backbones

#: The run name of the external model of ``verify.reference``.
REFERENCE = "reference"
MASKED_SUFFIX = "_masked"


def set_paths(params: Params) -> dict[str, Path]:
    """``{set name: .bin path}`` of the verification sets :func:`make_sets` writes."""
    name, folder = params.verify.name, Path(params.verify.sets)
    return {name: folder / f"{name}.bin", name + MASKED_SUFFIX: folder / f"{name}{MASKED_SUFFIX}.bin"}


def make_sets(params: Params, report: Path = Path("metrics/eval_sets.json")) -> str:
    """Write the holistic and masked ``.bin`` sets of ``verify.pairs`` over ``finetune.shards``.

    A CSV pair list has no folds of its own: its pairs are shuffled (seed 0) so that each of the 10
    folds mixes same and different pairs. With ``verify.holdout_identities``, only pairs whose two faces
    belong to those identities are kept
    (the others are counted as ``other_identities``). A pair whose face is not in the shards (rejected
    upstream) or has no masked twin is dropped and counted; ``report`` holds ``{set: {pairs, same,
    dropped}}``, the pair list's size and ``other_identities``: pairs = list - other - dropped.
    """
    pairs = read_pairs(resolve_model(params.verify.pairs))
    shards = Path(params.finetune.shards)
    faces = AlignedFaces.from_shards(shards)
    other = 0
    if params.verify.holdout_identities:
        faces, pairs, other = _holdout(faces, pairs, _identity_by_key(shards), params.verify.holdout_identities)
    if pairs.n_folds is None:  # a CSV list has no protocol folds: mix same and different pairs in every fold
        pairs = _select(pairs, np.random.default_rng(0).permutation(len(pairs)).tolist())
    counts: dict[str, dict[str, int]] = {}
    for (name, path), masked in zip(set_paths(params).items(), ("none", "second"), strict=True):
        built = build_bin(pairs, faces, path, masked=masked, strict=False)
        counts[name] = {"pairs": built.pairs, "same": built.same, "dropped": len(built.dropped)}
    report.parent.mkdir(parents=True, exist_ok=True)
    summary = {"pair_list": len(pairs) + other, "other_identities": other, **counts}
    report.write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    return "eval sets: " + ", ".join(f"{n} {c['pairs']} pairs ({c['dropped']} dropped)" for n, c in counts.items())


def _identity_by_key(shards: Path) -> dict[str, str]:
    """Record key -> identity name, over the shards of ``shards/index.json``."""
    index = read_index(shards)
    names = index.get("identities") or []
    return {r.key: names[r.identity] for e in index["shards"] for r in ShardReader(shards / e["name"])}


def _holdout(
    faces: AlignedFaces, pairs: PairList, identity: dict[str, str], holdout: list[str]
) -> tuple[AlignedFaces, PairList, int]:
    """(faces of the ``holdout`` identities, the pairs with no face of another identity, pairs left out)."""
    unknown = sorted(set(holdout) - set(identity.values()))
    if unknown:
        raise ValueError(f"verify.holdout_identities: {unknown} have no face in the shards")
    held = set(holdout)
    kept = AlignedFaces(
        images={k: v for k, v in faces.images.items() if identity[k] in held},
        masked={k: v for k, v in faces.masked.items() if identity[k] in held},
    )

    def inside(name: str) -> bool:  # a face of a held-out identity, or one the shards lack (dropped later)
        return kept.get(name) is not None or faces.get(name) is None

    rows = [i for i, (a, b) in enumerate(zip(pairs.first, pairs.second, strict=True)) if inside(a) and inside(b)]
    if not rows:
        raise ValueError(f"no pair of {len(pairs)} has both faces in verify.holdout_identities {holdout}")
    return kept, _select(pairs, rows), len(pairs) - len(rows)


def _select(pairs: PairList, rows: list[int]) -> PairList:
    """The pairs at ``rows``, in that order (no protocol folds)."""
    return PairList([pairs.first[i] for i in rows], [pairs.second[i] for i in rows], pairs.issame[rows])


def run_model(params: Params, run: str) -> EmbeddingModel:
    """The embedding model of ``run``: ``finetune.out/<run>`` rebuilt (fed as its spec says), or the
    ``verify.reference`` ONNX."""
    if run == REFERENCE:
        if not params.verify.reference:
            raise ValueError("verify.reference is empty: no external model to score")
        return load_embedding_model(resolve_model(params.verify.reference))
    run_dir = Path(params.finetune.out) / run
    if not run_dir.is_dir():
        raise FileNotFoundError(f"{run_dir}: no fine-tuned model; run `facekit finetune {run}` first")
    spec = backbones.read(run_dir)
    backbone = backbones.build(spec, backbones.weights_file(run_dir))
    return TorchEmbedder(backbone, spec.mean, spec.std, size=spec.input_size)


def verify_run(params: Params, run: str, metrics_dir: Path = Path("metrics"), plots_dir: Path = Path("plots")) -> str:
    """Score ``run`` on every set of :func:`set_paths`; writes ``metrics/verify/<run>.json`` and ROC plots."""
    model = run_model(params, run)
    results: list[BenchmarkResult] = []
    for path in set_paths(params).values():
        if not path.is_file():
            raise FileNotFoundError(f"verification set {path} not found; run `facekit eval sets` first")
        results.append(evaluate_bin(path, model, flip=params.verify.flip, n_folds=params.verify.folds))
    write_reports(results, metrics_dir / "verify" / f"{run}.json", plots_dir / "verify" / run)
    return f"verify {run}: " + "; ".join(
        f"{r.name} {r.verification.accuracy:.4f} ± {r.verification.accuracy_std:.4f} ({r.pairs} pairs)" for r in results
    )
