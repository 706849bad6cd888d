"""The ``leaderboard`` stage of a lineage with probes (``facekit probe-board``; the medium lineage's).

It gathers, for every run of ``pretrain.runs``, its ``probe@RUN`` report (``<probe.out>/RUN.json``), its
pre-training report and its held-out verification after fine-tuning (``<metrics>/verify/RUN.json``, set
``verify.name``), with ``<probe.out>/controls.json``, into ``<metrics>/leaderboard.json`` (rows of
:func:`facekit.eval.probe_board.board_row`), ``<metrics>/leaderboard.md`` and ``<plots>/leaderboard.png``.

``facekit readme`` writes the README's ``medium-leaderboard`` block from the committed board
(:data:`README_BOARD`) with :func:`render_readme`; a test fails when the README drifts from it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from facekit.config import Params, PathsParams
from facekit.eval.probe_board import board_row, finetune_verdicts, markdown, plot, verdicts
from facekit.stages.probe import CONTROLS
from facekit.train.metrics_log import TIMING_NAME

README_BOARD = Path("lineages/medium/metrics/leaderboard.json")
README_BLOCK = "medium-leaderboard"


def _read(path: Path, hint: str) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; run `{hint}` first")
    return json.loads(path.read_text())


def build_board(params: Params, paths: PathsParams) -> dict[str, Any]:
    """``{"held_out", "runs": {run: row}, "controls"}`` from the lineage's reports (module docstring)."""
    probe_dir = Path(params.probe.out)
    runs, first = {}, None
    for name in params.pretrain.runs:
        probe = _read(probe_dir / f"{name}.json", f"facekit probe {name}")
        first = first or probe
        pretrain = _read(paths.run_report("pretrain", name), f"facekit pretrain {name}")
        timing = Path(params.pretrain.out) / name / TIMING_NAME  # the wall time, outside the run's hash
        pretrain |= json.loads(timing.read_text()) if timing.is_file() else {}
        finetuned = None
        if name in params.finetune.runs:
            scores = _read(paths.verify_report(name), f"facekit verify {name}")
            finetuned = scores[params.verify.name]
        runs[name] = board_row(probe, finetuned, pretrain)
    if first is None:
        raise ValueError("pretrain.runs is empty: nothing to probe")
    finetune_verdicts(runs)
    rand = first["random_init"]["runs"][0]
    held = {"identities": first["identities"], "faces": first["faces"]}
    held |= {"same_pairs": int(rand["same_pairs"]), "different_pairs": int(rand["different_pairs"])}
    held["far"] = rand["verification_far"]
    controls = _read(probe_dir / f"{CONTROLS}.json", "facekit probe controls")
    return {"held_out": held, "runs": runs, "controls": controls}


def run(params: Params, paths: PathsParams) -> str:
    """The stage: write the board's JSON, Markdown and plot; returns a one-line summary."""
    board = build_board(params, paths)
    paths.report("leaderboard").parent.mkdir(parents=True, exist_ok=True)
    paths.report("leaderboard").write_text(json.dumps(board, indent=2) + "\n")
    paths.table("leaderboard").write_text(f"# Probes on held-out people\n\n{markdown(board)}\n{verdicts(board)}")
    plot(board, paths.plot("leaderboard"))
    learned = [n for n, r in board["runs"].items() if r.get("beats_random_init")]
    table = paths.table("leaderboard")
    return f"probe board: {len(board['runs'])} runs, {len(learned)} beat their random init -> {table}"


def render_readme(text: str, board: dict[str, Any]) -> str:
    """``text`` with its ``<!-- medium-leaderboard:start/end -->`` block replaced by the board's tables and
    verdicts."""
    start, end = f"<!-- {README_BLOCK}:start -->", f"<!-- {README_BLOCK}:end -->"
    head, found, rest = text.partition(start)
    _, found_end, tail = rest.partition(end)
    if not (found and found_end):
        raise ValueError(f"the README has no {start} ... {end} block")
    return f"{head}{start}\n{markdown(board)}\n{verdicts(board)}{end}{tail}"
