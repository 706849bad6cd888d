"""The leaderboard (``facekit leaderboard``, DVC stage ``leaderboard``): one row per pre-training method.

For each run of ``finetune.runs`` (and the external ``reference`` model when ``verify.reference`` is set)
it gathers what the chain measured:

- ``metrics/verify/<run>.json``: holistic and masked verification accuracy (± std over folds), AUC and TAR at
  the smallest FAR the holistic set measures (1e-4 … 1e-1: it needs 1 / FAR different-person pairs);
- ``<pretrain.out>/<run>/`` and ``<finetune.out>/<run>/``: the method (``backbone.json``) and the training
  throughput in images/s (``metrics.json`` of the loop; none for an untrained ``random_init`` run);
- the representation check of the pre-trained backbone before any fine-tuning
  (:func:`facekit.eval.knn.representation_check`: leave-one-out 1-NN identity accuracy on the shards'
  faces, learned vs the same backbone at random init);

and writes ``metrics/leaderboard.json`` (``{run: {rank, method, ...}}``, DVC metrics) and
``metrics/leaderboard.md`` (a Markdown table, best holistic accuracy first).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from facekit.config import Params
from facekit.eval.chain import MASKED_SUFFIX, REFERENCE
from facekit.eval.knn import representation_check
from facekit.nn import backbones

TRAIN_METRICS = "metrics.json"  # written by the training loop into its out_dir
TAR_PREFIX = "tar_at_far_"


def _read_json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


def leaderboard_row(params: Params, run: str, metrics_dir: Path = Path("metrics")) -> dict[str, Any]:
    """The leaderboard entry of ``run`` (see the module docstring); missing verification is an error."""
    verify_path = metrics_dir / "verify" / f"{run}.json"
    scores = _read_json(verify_path)
    if scores is None:
        raise FileNotFoundError(f"{verify_path} not found; run `facekit verify {run}` first")
    holistic_name, masked_name = params.verify.name, params.verify.name + MASKED_SUFFIX
    missing = [n for n in (holistic_name, masked_name) if n not in scores]
    if missing:
        raise ValueError(f"{verify_path}: no results for {missing}; it has {sorted(scores)}")
    holistic, masked = scores[holistic_name], scores[masked_name]
    row: dict[str, Any] = {
        "holistic_accuracy": holistic["accuracy"],
        "holistic_accuracy_std": holistic["accuracy_std"],
        "masked_accuracy": masked["accuracy"],
        "masked_accuracy_std": masked["accuracy_std"],
        "holistic_auc": holistic["auc"],
        **_smallest_far(holistic),
        "pairs": int(holistic["pairs"]),
        "masked_pairs": int(masked["pairs"]),
    }
    if run == REFERENCE:
        return {"method": f"external: {Path(params.verify.reference).name}", **row}
    pretrained = Path(params.pretrain.out) / run
    spec = backbones.read(pretrained) if (pretrained / backbones.SPEC_FILE).is_file() else None
    pretrain = _read_json(pretrained / TRAIN_METRICS) or {}
    finetune = _read_json(Path(params.finetune.out) / run / TRAIN_METRICS) or {}
    if spec is not None and spec.method not in (None, backbones.RANDOM_INIT):
        check = representation_check(pretrained, Path(params.finetune.shards))
        row |= {k: check[k] for k in ("knn_accuracy", "knn_accuracy_random_init")}
    return {
        "method": (spec.method if spec else None) or "?",
        "backbone": spec.name if spec else "?",
        **row,
        "pretrain_images_per_s": pretrain.get("images_per_s"),
        "pretrain_steps": pretrain.get("steps", 0),
        "finetune_images_per_s": finetune.get("images_per_s"),
        "finetune_steps": finetune.get("steps", 0),
    }


def _smallest_far(metrics: dict[str, float]) -> dict[str, float]:
    """``{"holistic_tar_at_far_<far>": tar}`` for the smallest FAR in ``metrics`` (empty when none)."""
    fars = [k for k in metrics if k.startswith(TAR_PREFIX)]
    if not fars:
        return {}
    key = min(fars, key=lambda k: float(k.removeprefix(TAR_PREFIX)))
    return {f"holistic_{key}": metrics[key]}


def build_leaderboard(params: Params, metrics_dir: Path = Path("metrics")) -> dict[str, dict[str, Any]]:
    """``{run: row}`` for every fine-tuning run (+ ``reference``), ranked by holistic then masked accuracy."""
    runs = list(params.finetune.runs) + ([REFERENCE] if params.verify.reference else [])
    if not runs:
        raise ValueError("finetune.runs is empty: nothing to rank")
    rows = {run: leaderboard_row(params, run, metrics_dir) for run in runs}
    order = sorted(rows, key=lambda r: (-rows[r]["holistic_accuracy"], -rows[r]["masked_accuracy"], r))
    return {run: {"rank": i + 1, **rows[run]} for i, run in enumerate(order)}


def _fmt(value: float | None, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}f}"


def markdown_table(board: dict[str, dict[str, Any]], set_name: str) -> str:
    """The leaderboard as a Markdown table (rows in rank order)."""
    tar_keys = {k for row in board.values() for k in row if k.startswith("holistic_" + TAR_PREFIX)}
    tar_key = min(tar_keys, key=lambda k: float(k.rsplit("_", 1)[1])) if tar_keys else None
    tar_title = f"TAR@FAR={tar_key.rsplit('_', 1)[1]}" if tar_key else "TAR"
    header = (
        f"| # | run | method | {set_name} accuracy | {set_name} masked accuracy | AUC | {tar_title} "
        "| kNN pre-trained / random init | pre-train img/s | fine-tune img/s |"
    )
    lines = [header, "|" + "---|" * header.count(" | ") + "---|"]
    for run, r in board.items():
        lines.append(
            f"| {r['rank']} | {run} | {r['method']} "
            f"| {_fmt(r['holistic_accuracy'])} ± {_fmt(r['holistic_accuracy_std'])} "
            f"| {_fmt(r['masked_accuracy'])} ± {_fmt(r['masked_accuracy_std'])} "
            f"| {_fmt(r['holistic_auc'])} | {_fmt(r.get(tar_key) if tar_key else None)} "
            f"| {_fmt(r.get('knn_accuracy'), 3)} / {_fmt(r.get('knn_accuracy_random_init'), 3)} "
            f"| {_fmt(r.get('pretrain_images_per_s'), 1)} | {_fmt(r.get('finetune_images_per_s'), 1)} |"
        )
    return "\n".join(lines) + "\n"


def write_leaderboard(params: Params, metrics_dir: Path = Path("metrics")) -> str:
    """Write ``metrics/leaderboard.json`` and ``metrics/leaderboard.md``; returns a one-line summary."""
    board = build_leaderboard(params, metrics_dir)
    (metrics_dir / "leaderboard.json").write_text(json.dumps(board, indent=2) + "\n")
    first = next(iter(board.values()))
    pairs = f"{first['pairs']} pairs, {first['masked_pairs']} masked pairs"
    text = f"# Leaderboard: verification on `{params.verify.name}` ({pairs})\n\n"
    text += markdown_table(board, params.verify.name)
    held = params.verify.holdout_identities
    source = f"`verify.pairs` over `finetune.shards`, {len(held)} identities left out of fine-tuning"
    text += f"\nThe `{params.verify.name}` sets pair faces of the shards ({source}). " + (
        "The models were trained on these people. " if not held else ""
    )
    text += (
        "Score held-out benchmarks (lfw.bin, cfp_fp.bin ...) with `facekit eval bin`. kNN: leave-one-out 1-NN "
        "identity accuracy of the pre-trained backbone (before fine-tuning) on every face of the shards, and of "
        "the same backbone at random init.\n"
    )
    (metrics_dir / "leaderboard.md").write_text(text)
    best, row = next(iter(board.items()))
    accuracy = row["holistic_accuracy"]
    return f"leaderboard: {len(board)} runs; best {best} ({accuracy:.4f} holistic) -> {metrics_dir / 'leaderboard.md'}"
