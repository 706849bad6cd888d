"""The evaluation end of the lineage: verification sets from the shards, one model's scores, the leaderboard.

- :func:`make_sets` (``facekit eval sets``, DVC stage ``eval_sets``): ``verify.pairs`` over the packed faces
  → ``verify.sets/<name>.bin`` (holistic pairs) and ``<name>_masked.bin`` (the second face of each pair is
  its synthetic masked twin), with ``metrics/eval_sets.json`` counting the pairs kept and dropped.
- :func:`verify_run` (``facekit verify RUN``, stage ``verify@RUN``): the fine-tuned ``finetune.out/RUN``
  scored on every ``.bin`` of ``verify.sets`` (flip test, 10 folds) → ``metrics/verify/RUN.json`` and ROC
  curves under ``plots/verify/RUN/``. Run ``reference`` scores ``verify.reference`` (an external ONNX model).
- :func:`facekit.eval.leaderboard.write_leaderboard` gathers them.
"""

from __future__ import annotations

import json
from pathlib import Path

from facekit.config import Params
from facekit.data.stages.detect_align import resolve_model
from facekit.eval.benchmarks import BenchmarkResult, evaluate_bin, write_reports
from facekit.eval.embedding_model import EmbeddingModel, TorchEmbedder, load_embedding_model
from facekit.eval.make_bin import AlignedFaces, build_bin, read_pairs

#: The run name of the external model of ``verify.reference``.
REFERENCE = "reference"
MASKED_SUFFIX = "_masked"


def set_paths(params: Params) -> dict[str, Path]:
    """``{set name: .bin path}`` of the verification sets :func:`make_sets` writes."""
    name, folder = params.verify.name, Path(params.verify.sets)
    return {name: folder / f"{name}.bin", name + MASKED_SUFFIX: folder / f"{name}{MASKED_SUFFIX}.bin"}


def make_sets(params: Params, report: Path = Path("metrics/eval_sets.json")) -> str:
    """Write the holistic and masked ``.bin`` sets of ``verify.pairs`` over ``finetune.shards``.

    A pair whose face is not in the shards (rejected upstream) or has no masked twin is dropped and
    counted; ``report`` holds ``{set: {pairs, same, dropped}}`` and the pair list's size.
    """
    pairs = read_pairs(resolve_model(params.verify.pairs))
    faces = AlignedFaces.from_shards(Path(params.finetune.shards))
    counts: dict[str, dict[str, int]] = {}
    for (name, path), masked in zip(set_paths(params).items(), ("none", "second"), strict=True):
        built = build_bin(pairs, faces, path, masked=masked, strict=False)
        counts[name] = {"pairs": built.pairs, "same": built.same, "dropped": len(built.dropped)}
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text(json.dumps({"pair_list": len(pairs), **counts}, indent=2, sort_keys=True) + "\n")
    return "eval sets: " + ", ".join(f"{n} {c['pairs']} pairs ({c['dropped']} dropped)" for n, c in counts.items())


def run_model(params: Params, run: str) -> EmbeddingModel:
    """The embedding model of ``run``: ``finetune.out/<run>`` rebuilt, or the ``verify.reference`` ONNX."""
    if run == REFERENCE:
        if not params.verify.reference:
            raise ValueError("verify.reference is empty: no external model to score")
        return load_embedding_model(resolve_model(params.verify.reference))
    from facekit.train.pretrain import load_backbone  # torch-heavy; only a run needs it

    run_dir = Path(params.finetune.out) / run
    if not run_dir.is_dir():
        raise FileNotFoundError(f"{run_dir}: no fine-tuned model; run `facekit finetune {run}` first")
    backbone = load_backbone(run_dir)
    size = getattr(backbone, "img_size", 112)
    return TorchEmbedder(backbone, size=size if isinstance(size, int) else size[0])


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
