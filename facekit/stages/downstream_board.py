"""The joined leaderboard (``facekit eval board``): recognition and every downstream task, one row per backbone.

It reads every ``facekit eval <task>`` result JSON of a folder (:mod:`facekit.stages.downstream`) and, when
present, the recognition leaderboard of the lineage whose pre-training runs were scored
(``metrics/leaderboard.json``: each run's verification accuracy after fine-tuning, :func:`recognition_scores`).
A row is a backbone (run name, ``… (random init)``, ``reference``); a task column shows the trained head's
primary metric with the untrained head's in brackets. ``facekit readme --downstream BOARD`` writes the table
into the README between ``<!-- downstream-medium:start -->`` and ``<!-- downstream-medium:end -->`` from a copy
of the board committed at :data:`README_DOWNSTREAM`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from facekit.stages.downstream import PRIMARY

README_DOWNSTREAM = Path("docs/downstream_medium.json")
README_BLOCK = "downstream-medium"
#: How each task's primary metric is titled in the table.
TITLES = {
    "expression": "expression top-1 ↑",
    "attributes": "attributes mean acc. ↑",
    "alignment": "alignment NME ↓",
    "parsing": "parsing mean F1 ↑",
    "pose": "pose MAE (°) ↓",
}


def row_name(backbone: dict[str, Any]) -> str:
    """A result's backbone as a row name: the run, ``<run> (random init)`` (``random:RUN_DIR``; an exported
    ``random_init`` run keeps its own name) or ``reference``."""
    random = backbone.get("init") == "random" and backbone.get("method") != "random_init"
    return backbone["name"] + (" (random init)" if random else "")


def build_board(results: Path, recognition: Path | None = None) -> dict[str, dict[str, Any]]:
    """``{row: {"recognition": {...} | absent, <task>: {"trained", "untrained", "prior", "metric", "protocol"}}}``
    from the result JSONs under ``results`` and the recognition leaderboard ``recognition`` (if it exists)."""
    files = sorted(Path(results).glob("*.json"))
    if not files:
        raise FileNotFoundError(f"{results}: no downstream results (*.json from `facekit eval <task>`)")
    board: dict[str, dict[str, Any]] = {}
    for path in files:
        report = json.loads(path.read_text())
        if report.get("task") not in PRIMARY:
            raise ValueError(f"{path}: not a downstream result (no known 'task')")
        key = report["primary"]
        board.setdefault(row_name(report["backbone"]), {})[report["task"]] = {
            "metric": key,
            "trained": report["trained"][key],
            "untrained": report["untrained"][key],
            "prior": report["prior"][key],
            "protocol": report["protocol"]["protocol"],
            "dataset": report["dataset"],
            "n_train": report["n_train"],
            "n_test": report["n_test"],
        }
    if recognition is not None and Path(recognition).is_file():
        scores = recognition_scores(json.loads(Path(recognition).read_text()))
        for name, row in board.items():
            if name in scores:
                row["recognition"] = scores[name]
    return dict(sorted(board.items()))


def recognition_scores(leaderboard: dict[str, Any]) -> dict[str, dict[str, float]]:
    """``{run: {"accuracy": verification accuracy after fine-tuning}}`` of a recognition leaderboard: the sample's
    (``{run: {"holistic_accuracy", ...}}``) or a probe lineage's (``{"runs": {run: {"finetuned": {"accuracy"}}}}``);
    runs without a score are left out."""
    rows = leaderboard["runs"] if isinstance(leaderboard.get("runs"), dict) else leaderboard
    out = {}
    for name, row in rows.items():
        if not isinstance(row, dict):
            continue
        accuracy = row.get("holistic_accuracy", (row.get("finetuned") or {}).get("accuracy"))
        if accuracy is not None:
            out[name] = {"accuracy": float(accuracy)}
    return out


def _cell(entry: dict[str, Any] | None) -> str:
    if entry is None:
        return "–"
    return f"{entry['trained']:.4f} ({entry['untrained']:.4f})"


def board_table(board: dict[str, dict[str, Any]]) -> str:
    """The board as a Markdown table: recognition accuracy, then each task's trained (untrained head) metric, and
    a last row with each task's prior (the train split's majority / mean, no image seen)."""
    tasks = [t for t in PRIMARY if any(t in row for row in board.values())]
    lines = ["| backbone | recognition acc. | " + " | ".join(TITLES[t] for t in tasks) + " |"]
    lines.append("|---|---|" + "---|" * len(tasks))
    for name, row in board.items():
        recognition = row.get("recognition", {}).get("accuracy")
        cells = [f"{recognition:.4f}" if recognition is not None else "–"] + [_cell(row.get(t)) for t in tasks]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    priors = [next((row[t]["prior"] for row in board.values() if t in row), None) for t in tasks]
    lines.append("| prior (no image) | – | " + " | ".join("–" if p is None else f"{p:.4f}" for p in priors) + " |")
    return "\n".join(lines) + "\n"


def run(results: Path, recognition: Path | None, out: Path) -> str:
    """The stage: ``<out>.json`` (the board) and ``<out>.md`` (its table); returns a one-line summary."""
    board = build_board(results, recognition)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(board, indent=2) + "\n")
    out.with_suffix(".md").write_text("# Downstream leaderboard\n\n" + board_table(board))
    tasks = {t for row in board.values() for t in row if t in PRIMARY}
    return f"board: {len(board)} backbones x {len(tasks)} tasks -> {out.with_suffix('.md')}"


def render_readme(text: str, board: dict[str, dict[str, Any]]) -> str:
    """``text`` with the ``downstream-medium`` block replaced by :func:`board_table` of ``board``."""
    start, end = f"<!-- {README_BLOCK}:start -->", f"<!-- {README_BLOCK}:end -->"
    head, found, rest = text.partition(start)
    _, found_end, tail = rest.partition(end)
    if not (found and found_end):
        raise ValueError(f"the README has no {start} ... {end} block")
    return f"{head}{start}\n{board_table(board)}{end}{tail}"


def write_readme(board_path: Path, readme: Path) -> str:
    """``facekit readme --downstream BOARD``: copy the board to :data:`README_DOWNSTREAM`, regenerate the block."""
    text = Path(board_path).read_text()
    README_DOWNSTREAM.parent.mkdir(parents=True, exist_ok=True)
    README_DOWNSTREAM.write_text(text)
    readme.write_text(render_readme(readme.read_text(), json.loads(text)))
    return f"readme: the {README_BLOCK} table of {readme} from {README_DOWNSTREAM}"
