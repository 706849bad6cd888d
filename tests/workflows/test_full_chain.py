"""The ``full-chain`` flow on a fresh git + DVC project against a real Prefect server: every stage of dvc.yaml
runs once, in dependency order, the GPU stages as ``dvc-stage/dvc-stage-gpu`` flow runs on the ``gpu`` work pool
(created from the repo's job template; the deployment registered by ``prefect deploy`` with the repo's
prefect.yaml), the others in the flow's own process; afterwards DVC is clean and a second run does nothing."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING
from uuid import UUID

import pytest
import yaml
from dvc.repo import Repo
from dvc.stage import PipelineStage
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName, FlowRunFilter, FlowRunFilterId
from prefect.client.schemas.objects import FlowRun, TaskRun

from workflows.full_chain import full_chain, gpu_stage

if TYPE_CHECKING:
    from tests.workflows.conftest import WorkerPool

TINY_MAE = {
    "backbone": "vit_small_patch16_224",
    "backbone_kwargs": {"img_size": 112, "depth": 1, "embed_dim": 96, "num_heads": 2},
    "decoder_dim": 32,
    "decoder_depth": 1,
    "decoder_heads": 2,
}
GPU_STAGES = {"pretrain@mae", "finetune@mae"}
PROJECT = Path(__file__).resolve().parents[2]


def _tiny_chain(project: Path) -> None:
    """One run (``mae``) pre-trained and fine-tuned for 2 steps each; no optional reports."""
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["masks"]["quality_pairs"] = ""
    params["verify"]["flip"] = False
    for section in ("pretrain", "finetune"):
        params[section]["train"].update(epochs=1, batch_size=16, max_steps=2, log_every=1)
    params["pretrain"]["runs"] = {"mae": TINY_MAE}
    params["finetune"]["runs"] = {"mae": {}}
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def _deploy_gpu_stage(project: Path) -> subprocess.Popen[bytes]:
    """``FACEKIT_PROJECT=$PWD prefect deploy --name dvc-stage-gpu`` in a project holding the repo's prefect.yaml
    and code, as on a GPU machine (started in the background; the caller waits for it). The flow runs load
    ``workflows/full_chain.py`` with the project first on ``sys.path``: the project holds all of facekit."""
    shutil.copy(PROJECT / "prefect.yaml", project / "prefect.yaml")
    for package in ("workflows", "facekit"):
        copies = shutil.ignore_patterns("__pycache__")
        shutil.copytree(PROJECT / package, project / package, dirs_exist_ok=True, ignore=copies)
    log = (project.parent / "deploy.log").open("w")
    return subprocess.Popen(
        [sys.executable, "-m", "prefect", "--no-prompt", "deploy", "--name", "dvc-stage-gpu"],
        env={**os.environ, "FACEKIT_PROJECT": str(project)},
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def _dag(project: Path) -> tuple[list[str], list[tuple[str, str]]]:
    """DVC's pipeline stages and its (upstream, downstream) edges."""
    with Repo(str(project)) as repo:
        graph = repo.index.graph
        stages = [s for s in graph if isinstance(s, PipelineStage)]
        return [s.addressing for s in stages], [(u.addressing, s.addressing) for s in stages for u in graph[s]]


def _task_runs(flow_run_id: UUID, stages: list[str]) -> dict[str, list[TaskRun]]:
    """The task runs of a flow run named after a stage, by name, as the server recorded them (the flow
    also holds one task run standing for each GPU flow run, under that run's generated name)."""
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    by_name: dict[str, list[TaskRun]] = {}
    for run in runs:
        if run.name in stages:
            by_name.setdefault(run.name, []).append(run)
    return by_name


def _gpu_flow_runs() -> list[FlowRun]:
    """Every flow run of ``dvc-stage/dvc-stage-gpu``."""
    with get_client(sync_client=True) as client:
        deployments = DeploymentFilter(name=DeploymentFilterName(any_=["dvc-stage-gpu"]))
        return client.read_flow_runs(deployment_filter=deployments)


def _dvc_status(project: Path) -> str:
    return subprocess.run(
        [sys.executable, "-m", "dvc", "status"], cwd=project, check=False, capture_output=True, text=True
    ).stdout


@pytest.mark.slow
def test_full_chain_runs_the_dvc_dag_with_gpu_stages_on_the_pool(gpu_pool: WorkerPool, dvc_repo: Path) -> None:
    _tiny_chain(dvc_repo)
    deploy = _deploy_gpu_stage(dvc_repo)
    stages, edges = _dag(dvc_repo)
    assert {"sample", "pack", "eval_sets", "verify@mae", "leaderboard", *GPU_STAGES} <= set(stages)
    assert deploy.wait(timeout=180) == 0, (dvc_repo.parent / "deploy.log").read_text()[-3000:]

    state = full_chain(poll_seconds=1, return_state=True)
    assert state.is_completed(), (state, gpu_pool.log_tail())
    summary = state.result()
    assert summary == dict.fromkeys(stages, "ran")  # DVC ran every stage's command
    order = list(summary)
    assert all(order.index(u) < order.index(s) for u, s in edges)

    tasks = _task_runs(state.state_details.flow_run_id, stages)
    assert Counter({name: len(runs) for name, runs in tasks.items()}) == Counter(dict.fromkeys(stages, 1))
    for upstream, stage in edges:  # a stage started after everything it depends on had finished
        assert tasks[upstream][0].end_time <= tasks[stage][0].start_time, (upstream, stage)
    gpu_runs = _gpu_flow_runs()
    assert sorted(r.parameters["stage"] for r in gpu_runs) == sorted(GPU_STAGES)  # CPU stages never went there
    assert all(r.work_pool_name == gpu_pool.name and r.state.is_completed() for r in gpu_runs)
    assert (dvc_repo / "data/runs/finetune/mae").is_dir() and (dvc_repo / "metrics/leaderboard.md").is_file()
    assert _dvc_status(dvc_repo).split() == ["scan:", "always", "changed"]  # dvc.lock records every stage as run

    lock = (dvc_repo / "dvc.lock").read_bytes()
    again = full_chain(poll_seconds=1, return_state=True)
    # only the scan runs (DVC's always_changed): its unchanged manifest leaves every other stage as it was
    assert again.is_completed() and again.result() == {**dict.fromkeys(stages, "up to date"), "scan": "ran"}
    assert set(_task_runs(again.state_details.flow_run_id, stages)) == {"scan"}  # nothing sent to the pool
    assert len(_gpu_flow_runs()) == len(GPU_STAGES)
    assert (dvc_repo / "dvc.lock").read_bytes() == lock


def test_a_gpu_stage_fails_and_cancels_its_run_when_its_pool_has_no_worker(prefect_api: str) -> None:
    """A GPU stage sent to a pool that no worker serves does not wait forever: after ``worker_timeout_s`` its
    flow run is cancelled and the error names the stage and the pool to start a worker on."""
    with get_client(sync_client=True) as client:
        client.create_work_pool(WorkPoolCreate(name="unserved", type="process"))
        flow_id = client.create_flow_from_name("dvc-stage")
        entrypoint = "workflows/full_chain.py:dvc_stage"
        client.create_deployment(flow_id, "dvc-stage-unserved", work_pool_name="unserved", entrypoint=entrypoint)
    start = time.monotonic()
    with pytest.raises(RuntimeError, match=r"pretrain@mae: no worker online in work pool 'unserved' for 2 s") as error:
        gpu_stage.fn("pretrain@mae", "dvc-stage/dvc-stage-unserved", poll_seconds=0.2, worker_timeout_s=2)
    assert time.monotonic() - start >= 2 and "prefect worker start --pool unserved" in str(error.value)
    with get_client(sync_client=True) as client:
        deployments = DeploymentFilter(name=DeploymentFilterName(any_=["dvc-stage-unserved"]))
        runs = client.read_flow_runs(deployment_filter=deployments)
    assert [(r.name, r.parameters, r.state.type.value) for r in runs] == [
        ("pretrain@mae", {"stage": "pretrain@mae"}, "CANCELLED")
    ]
