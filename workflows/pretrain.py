"""The ``pretrain`` Prefect flow: one run of ``params.yaml``'s ``pretrain.runs``, scheduled by Prefect.

Two ways to run it, chosen by the ``lineage`` parameter:

- ``"dvc"`` (default): a task runs ``dvc repro pretrain@<run>`` in the working directory, so DVC decides
  whether the run is stale and ``dvc.lock`` records it; DVC's lock contention is retried
  (:func:`workflows.dvc_tasks.dvc_repro`).
- ``"none"``: a task calls the stage :func:`facekit.stages.pretrain.run` directly (or, with
  ``pretrain.nproc_per_node > 1``, ``facekit pretrain`` under torchrun: :func:`facekit.stages.launch.torchrun`);
  a retry resumes from the run's last checkpoint. Nothing is recorded in ``dvc.lock``.

Deployments: one per run in ``params.yaml`` (``pretrain/pretrain-mae``, ``pretrain/pretrain-mcf`` ...), served
by ``python -m workflows.deployments``; ``prefect.yaml`` puts the same flow on a GPU work pool.
"""

# no ``from __future__ import annotations``: a served flow is pickled into its run process by value and
# Prefect validates the parameters against the real annotation objects

import json
import math
from pathlib import Path
from typing import Any, Literal

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.deployments.runner import RunnerDeployment
from prefect.types.entrypoint import EntrypointType

from facekit.config import load_params
from facekit.stages import launch
from facekit.stages import pretrain as pretrain_stage
from workflows.dvc_tasks import dvc_repro


@task(retries=1, retry_delay_seconds=10, cache_policy=NO_CACHE)
def train_run(run: str, params_path: str) -> None:
    """Train ``run`` in this process, or under torchrun with ``pretrain.nproc_per_node > 1``."""
    params = load_params(params_path)
    nproc = params.pretrain.nproc_per_node
    if not launch.needs_torchrun(nproc):
        pretrain_stage.run(params, params.paths, run, progress=False)
        return
    returncode = launch.torchrun("pretrain", run, Path(params_path), nproc, quiet=True)
    if returncode != 0:
        raise RuntimeError(f"facekit pretrain {run} under torchrun ({nproc} processes) exited with {returncode}")


@flow(name="pretrain", log_prints=True)
def pretrain(run: str, lineage: Literal["dvc", "none"] = "dvc", params_path: str = "params.yaml") -> dict[str, Any]:
    """Pre-train ``run`` in the working directory and return its metrics (``<metrics>/pretrain_<run>.json``:
    steps, final_loss, images_per_s, backbone ...). ``params_path`` applies to ``lineage="none"``; DVC
    always reads ``params.yaml``."""
    if lineage == "dvc":
        dvc_repro(f"pretrain@{run}")
    elif lineage == "none":
        train_run(run, params_path)
    else:
        raise ValueError(f"unknown lineage {lineage!r}: use 'dvc' or 'none'")
    params = load_params(params_path)
    summary = json.loads(params.paths.run_report("pretrain", run).read_text())
    out = Path(params.pretrain.out) / run
    print(f"pretrain {run}: {pretrain_stage.outcome(summary['steps'], summary.get('final_loss', math.nan))} -> {out}")
    return summary


def pretrain_deployments(params_path: str = "params.yaml") -> list[RunnerDeployment]:
    """``pretrain-<run>`` for every run in ``params_path``, each with ``run`` preset (module entrypoint)."""
    return [
        pretrain.to_deployment(
            name=f"pretrain-{run}",
            parameters={"run": run},
            description=f"pre-train the {run!r} run of params.yaml (pretrain.runs.{run})",
            entrypoint_type=EntrypointType.MODULE_PATH,
        )
        for run in load_params(params_path).pretrain.runs
    ]
