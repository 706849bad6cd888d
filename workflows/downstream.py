"""The ``evaluate-downstream`` Prefect flow: the downstream lineage (``lineages/downstream``) reproduced by DVC.

``dvc repro`` in the lineage folder scores every task on every backbone its ``params.yaml`` lists (stages
``evaluate@<task>-backbone<i>``, DVC skips the ones that are up to date) and joins them with the recognition
leaderboard (stage ``board``); DVC's lock contention is retried (:func:`workflows.dvc_tasks.dvc_repro`). The flow
returns the board (``metrics/board.json``). Deployment: ``evaluate-downstream`` in ``prefect.yaml`` (CPU pool) and
served by ``python -m workflows.deployments``.
"""

# no ``from __future__ import annotations``: Prefect validates the parameters against the real annotations

import json
from pathlib import Path
from typing import Any

from prefect import flow

from workflows.dvc_tasks import dvc_repro

LINEAGE = "lineages/downstream"


@flow(name="evaluate-downstream", log_prints=True)
def evaluate_downstream(lineage: str = LINEAGE) -> dict[str, Any]:
    """``dvc repro board`` in ``lineage`` (every evaluation, then the board); returns the board."""
    dvc_repro("board", cwd=lineage)
    board = json.loads((Path(lineage) / "metrics/board.json").read_text())
    print(f"evaluate-downstream: {len(board)} backbones -> {Path(lineage) / 'metrics/board.md'}")
    return board
