"""The leaderboard's table, from plain rows: the holistic TAR at the smallest FAR a set measures, the ranking
and the Markdown table (the ``leaderboard`` stage, :mod:`facekit.stages.leaderboard`, gathers the rows).

A row is ``{"method", "holistic_accuracy", "holistic_accuracy_std", "masked_accuracy", "masked_accuracy_std",
"holistic_auc", "holistic_tar_at_far_<far>", "knn_accuracy", "knn_accuracy_random_init",
"pretrain_steps", "finetune_steps", ...}``; a board is ``{run: {"rank": n, **row}}`` in rank order.
"""

from __future__ import annotations

import math
from typing import Any

TAR_PREFIX = "tar_at_far_"


def smallest_far(metrics: dict[str, float]) -> dict[str, float]:
    """``{"holistic_tar_at_far_<far>": tar}`` for the smallest FAR in ``metrics`` (empty when none)."""
    fars = [k for k in metrics if k.startswith(TAR_PREFIX)]
    if not fars:
        return {}
    key = min(fars, key=lambda k: float(k.removeprefix(TAR_PREFIX)))
    return {f"holistic_{key}": metrics[key]}


def rank(rows: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """``{run: {"rank": n, **row}}``, ranked by holistic then masked accuracy (then run name)."""
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
        "| kNN pre-trained / random init | pre-training steps | fine-tuning steps |"
    )
    lines = [header, "|" + "---|" * header.count(" | ") + "---|"]
    for run, r in board.items():
        lines.append(
            f"| {r['rank']} | {run} | {r['method']} "
            f"| {_fmt(r['holistic_accuracy'])} ± {_fmt(r['holistic_accuracy_std'])} "
            f"| {_fmt(r['masked_accuracy'])} ± {_fmt(r['masked_accuracy_std'])} "
            f"| {_fmt(r['holistic_auc'])} | {_fmt(r.get(tar_key) if tar_key else None)} "
            f"| {_fmt(r.get('knn_accuracy'), 3)} / {_fmt(r.get('knn_accuracy_random_init'), 3)} "
            f"| {r.get('pretrain_steps', '–')} | {r.get('finetune_steps', '–')} |"
        )
    return "\n".join(lines) + "\n"
