"""The ``verify@RUN`` and ``verify_reference`` stages: one model scored on the verification sets.

The fine-tuned ``finetune.out/RUN`` is scored on every ``.bin`` of ``verify.sets`` (written by the
``eval_sets`` stage; flip test, 10 folds; faces normalised as its backbone spec says; a LAFS backbone of the
``"mesh"`` source given each set's mesh landmarks, see :func:`~facekit.eval.benchmarks.evaluate_bin`) →
``<metrics>/verify/RUN.json`` and ROC curves under ``<plots>/verify/RUN/``. Run ``reference`` scores
``verify.reference`` (an external ONNX model). The ``leaderboard`` stage gathers them.
"""

from __future__ import annotations

from pathlib import Path

from facekit.assets import resolve_model
from facekit.config import Params, PathsParams
from facekit.eval.benchmarks import BenchmarkResult, evaluate_bin, write_reports
from facekit.eval.embedding_model import EmbeddingModel, TorchEmbedder, load_embedding_model
from facekit.nn import backbones
from facekit.stages.eval_sets import set_paths

#: The run name of the external model of ``verify.reference``.
REFERENCE = "reference"


def run_model(params: Params, name: str) -> EmbeddingModel:
    """The embedding model of run ``name``: ``finetune.out/<name>`` rebuilt (fed as its spec says), or the
    ``verify.reference`` ONNX."""
    if name == REFERENCE:
        if not params.verify.reference:
            raise ValueError("verify.reference is empty: no external model to score")
        return load_embedding_model(resolve_model(params.verify.reference))
    run_dir = Path(params.finetune.out) / name
    if not run_dir.is_dir():
        raise FileNotFoundError(f"{run_dir}: no fine-tuned model; run `facekit finetune {name}` first")
    spec = backbones.read(run_dir)
    backbone = backbones.build(spec, backbones.weights_file(run_dir))
    return TorchEmbedder(backbone, spec.mean, spec.std, size=spec.input_size)


def run(params: Params, paths: PathsParams, name: str) -> str:
    """The stage: score run ``name`` on every set of :func:`~facekit.stages.eval_sets.set_paths`; writes
    ``<metrics>/verify/<name>.json`` and the ROC plots under ``<plots>/verify/<name>/``; returns a one-line
    summary."""
    model = run_model(params, name)
    results: list[BenchmarkResult] = []
    for path in set_paths(params).values():
        if not path.is_file():
            raise FileNotFoundError(f"verification set {path} not found; run `facekit eval sets` first")
        results.append(evaluate_bin(path, model, flip=params.verify.flip, n_folds=params.verify.folds))
    first = results[0]
    title = f"{name}: verification ROC, {first.name} AUC {first.verification.auc:.3f}"
    write_reports(results, paths.verify_report(name), paths.verify_plots(name), title=title)
    return f"verify {name}: " + "; ".join(
        f"{r.name} {r.verification.accuracy:.4f} ± {r.verification.accuracy_std:.4f} ({r.pairs} pairs)" for r in results
    )
