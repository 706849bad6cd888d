"""The ``leaderboard`` stage (``facekit leaderboard``): one row per pre-training method.

For each run of ``finetune.runs`` (and the external ``reference`` model when ``verify.reference`` is set)
it gathers what the chain measured:

- ``<metrics>/verify/<run>.json``: holistic and masked verification accuracy (± std over folds), AUC and TAR
  at the smallest FAR the holistic set measures (1e-4 … 1e-1: it needs 1 / FAR different-person pairs);
- ``<pretrain.out>/<run>/`` and ``<finetune.out>/<run>/``: the method (``backbone.json``) and the training
  steps (``metrics.json`` of the loop; none for an untrained ``random_init`` run; the speed, which differs
  from run to run, stays in each run's ``timing.json`` and out of the lineage);
- the representation check of the pre-trained backbone before any fine-tuning
  (:func:`facekit.eval.knn.representation_check`: leave-one-out 1-NN identity accuracy on the shards'
  faces, learned vs the same backbone at random init);

and writes ``<metrics>/leaderboard.json`` (``{run: {rank, method, ...}}``), ``<metrics>/leaderboard.md`` (a
Markdown table, best holistic accuracy first; :mod:`facekit.eval.leaderboard`) and
``<plots>/leaderboard_roc.png`` (every run's ROC curve in one figure, the reference dashed).

``facekit readme`` copies the sample's ``leaderboard.json`` to :data:`README_BOARD` and writes the README's
tables between their markers from it (:func:`render_readme`), and the medium lineage's block from its committed
board (:func:`facekit.stages.probe_board.render_readme`); a test fails when the README drifts from either.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from facekit.config import Params, PathsParams
from facekit.eval.benchmarks import read_roc, roc_figure
from facekit.eval.knn import representation_check
from facekit.eval.leaderboard import markdown_table, rank, smallest_far
from facekit.nn import backbones
from facekit.stages import probe_board, split
from facekit.stages.eval_sets import MASKED_SUFFIX
from facekit.stages.verify import REFERENCE
from facekit.train.metrics_log import METRICS_NAME

README_BOARD = Path("docs/sample_leaderboard.json")  # the sample run the README shows, committed
README_BLOCKS = ("sample-knn", "sample-leaderboard")


def _read_json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


def leaderboard_row(params: Params, paths: PathsParams, name: str) -> dict[str, Any]:
    """The leaderboard entry of run ``name`` (see the module docstring); missing verification is an error."""
    verify_path = paths.verify_report(name)
    scores = _read_json(verify_path)
    if scores is None:
        raise FileNotFoundError(f"{verify_path} not found; run `facekit verify {name}` first")
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
        **smallest_far(holistic),
        "pairs": int(holistic["pairs"]),
        "masked_pairs": int(masked["pairs"]),
    }
    if name == REFERENCE:
        return {"method": f"external: {Path(params.verify.reference).name}", **row}
    pretrained = Path(params.pretrain.out) / name
    spec = backbones.read(pretrained) if (pretrained / backbones.SPEC_FILE).is_file() else None
    pretrain = _read_json(pretrained / METRICS_NAME) or {}
    finetune = _read_json(Path(params.finetune.out) / name / METRICS_NAME) or {}
    if spec is not None and spec.method not in (None, backbones.RANDOM_INIT):
        check = representation_check(pretrained, Path(params.finetune.shards))
        row |= {k: check[k] for k in ("knn_accuracy", "knn_accuracy_random_init")}
    return {
        "method": (spec.method if spec else None) or "?",
        "backbone": spec.name if spec else "?",
        **row,
        "pretrain_steps": pretrain.get("steps", 0),
        "finetune_steps": finetune.get("steps", 0),
    }


def build_leaderboard(params: Params, paths: PathsParams) -> dict[str, dict[str, Any]]:
    """``{run: row}`` for every fine-tuning run (+ ``reference``), ranked by holistic then masked accuracy."""
    runs = list(params.finetune.runs) + ([REFERENCE] if params.verify.reference else [])
    if not runs:
        raise ValueError("finetune.runs is empty: nothing to rank")
    return rank({name: leaderboard_row(params, paths, name) for name in runs})


def run(params: Params, paths: PathsParams) -> str:
    """The stage: write ``<metrics>/leaderboard.json`` and ``<metrics>/leaderboard.md``; returns a one-line
    summary."""
    board = build_leaderboard(params, paths)
    paths.report("leaderboard").write_text(json.dumps(board, indent=2) + "\n")
    first = next(iter(board.values()))
    pairs = f"{first['pairs']} pairs, {first['masked_pairs']} masked pairs"
    text = f"# Leaderboard: verification on `{params.verify.name}` ({pairs})\n\n"
    text += markdown_table(board, params.verify.name)
    held = split.held_out(params)
    source = f"`verify.pairs` over `finetune.shards`, {len(held)} identities left out of training"
    text += f"\nThe `{params.verify.name}` sets pair faces of the shards ({source}). " + (
        "The models were trained on these people. " if not held else ""
    )
    text += (
        "Score held-out benchmarks (lfw.bin, cfp_fp.bin ...) with `facekit eval bin`. kNN: leave-one-out 1-NN "
        "identity accuracy of the pre-trained backbone (before fine-tuning) on every face of the shards, and of "
        "the same backbone at random init.\n"
    )
    table = paths.table("leaderboard")
    table.write_text(text)
    save_comparison(board, params, paths)
    best, row = next(iter(board.items()))
    accuracy = row["holistic_accuracy"]
    return f"leaderboard: {len(board)} runs; best {best} ({accuracy:.4f} holistic) -> {table}"


def save_comparison(board: dict[str, dict[str, Any]], params: Params, paths: PathsParams) -> Path:
    """``<plots>/leaderboard_roc.png``: the holistic ROC curve of every run of ``board`` in one figure (from
    each run's ``roc_<set>.csv``), the reference model dashed."""
    curves = {name: read_roc(paths.verify_plots(name) / f"roc_{params.verify.name}.csv") for name in board}
    title = f"{params.verify.name}: verification ROC of {len(curves)} runs"
    path = paths.plot("leaderboard_roc")
    roc_figure(curves, title=title, reference=REFERENCE).savefig(path)
    return path


def knn_table(board: dict[str, dict[str, Any]]) -> str:
    """The representation check of every pre-trained run as a Markdown table (rows in leaderboard order)."""
    lines = ["| run | pre-training steps | kNN learned / random init |", "|---|---|---|"]
    for name, row in board.items():
        if "knn_accuracy" in row:
            learned, random_init = row["knn_accuracy"], row["knn_accuracy_random_init"]
            lines.append(f"| `{name}` | {row['pretrain_steps']} | {learned:.3f} / {random_init:.3f} |")
    return "\n".join(lines) + "\n"


def render_readme(text: str, board: dict[str, dict[str, Any]], set_name: str) -> str:
    """``text`` with each block of :data:`README_BLOCKS` (between ``<!-- NAME:start -->`` and
    ``<!-- NAME:end -->``) replaced by its table generated from ``board``."""
    tables = {"sample-knn": knn_table(board), "sample-leaderboard": markdown_table(board, set_name)}
    for name in README_BLOCKS:
        start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
        head, found, rest = text.partition(start)
        _, found_end, tail = rest.partition(end)
        if not (found and found_end):
            raise ValueError(f"the README has no {start} ... {end} block")
        text = f"{head}{start}\n{tables[name]}{end}{tail}"
    return text


def write_readme(params: Params, paths: PathsParams, readme: Path) -> str:
    """``facekit readme``: copy ``<metrics>/leaderboard.json`` to :data:`README_BOARD` and regenerate the
    README's tables from it; returns a one-line summary."""
    board_text = paths.report("leaderboard").read_text()
    README_BOARD.parent.mkdir(parents=True, exist_ok=True)
    README_BOARD.write_text(board_text)
    text = render_readme(readme.read_text(), json.loads(board_text), params.verify.name)
    if probe_board.README_BOARD.is_file():  # the medium lineage's committed board
        text = probe_board.render_readme(text, json.loads(probe_board.README_BOARD.read_text()))
    readme.write_text(text)
    return f"readme: the tables of {readme} from {README_BOARD} and {probe_board.README_BOARD}"
