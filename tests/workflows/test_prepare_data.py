"""The ``prepare-data`` flow against a real Prefect server: scale-out on a process pool and on Dask, the DVC
lineage in a temporary git repo, and the served deployment triggered through the API.

Every run must reproduce the serial (no Prefect) run exactly: same counts, same content hash.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from uuid import UUID

import yaml
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, FlowRunFilterParentFlowRunId
from prefect.client.schemas.objects import FlowRun, TaskRun
from prefect.deployments import run_deployment
from prefect.exceptions import ObjectNotFound

from facekit.config import load_params
from facekit.data.shards import read_index, verify_shard
from workflows.prepare_data import STAGES, prepare_data


def check_outputs(root: Path, summary: dict[str, Any], serial: dict[str, Any]) -> None:
    """Counts reconcile, the shards on disk verify and match the summary, and the data equals the baseline."""
    stages = summary["stages"]
    for stage, counts in stages.items():
        assert counts["read"] == counts["written"] + counts["rejected"], stage
    assert stages["sample"]["written"] == stages["detect_align"]["read"]
    assert stages["detect_align"]["written"] == stages["pack"]["read"]
    shards = root / load_params(root / "params.yaml").paths.shards
    index = read_index(shards)
    verified = [verify_shard(shards / entry["name"]) for entry in index["shards"]]
    assert sum(info.count for info in verified) == index["count"] == stages["pack"]["written"]
    assert summary["faces"] == index["count"] > 0
    assert summary["content_hash"] == index["content_hash"] == serial["content_hash"]
    assert stages == serial["stages"]


def recorded(flow_run_id: UUID) -> FlowRun:
    """The flow run as the server recorded it."""
    with get_client(sync_client=True) as client:
        return client.read_flow_run(flow_run_id)


def shard_task_runs(parent_id: UUID) -> list[TaskRun]:
    """The task runs of the sub-flow runs of ``parent_id``, as the server recorded them."""
    with get_client(sync_client=True) as client:
        children = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[parent_id]))
        )
        assert children and all(c.state is not None and c.state.is_completed() for c in children)
        ids = FlowRunFilterId(any_=[c.id for c in children])
        return client.read_task_runs(flow_run_filter=FlowRunFilter(id=ids))


def run_scale_out(runner: str, project: Path, serial: dict[str, Any]) -> None:
    """Run the flow in scale-out mode on ``runner`` and check the server's records and the shards."""
    state = prepare_data(lineage="none", runner=runner, return_state=True)
    summary = state.result()
    run = recorded(state.state_details.flow_run_id)
    assert run.flow_id and run.state is not None and run.state.is_completed(), run.state
    tasks = shard_task_runs(run.id)
    names = sorted(t.name.rsplit("-", 1)[0] for t in tasks)
    n = load_params().sharding.num_shards
    per_shard = ["mesh_shard", "detect_align_shard", "masks_shard", "pack_shard"]
    assert names == sorted([*(name for name in per_shard for _ in range(n)), "sample"])
    assert all(t.state is not None and t.state.is_completed() for t in tasks)
    check_outputs(project, summary, serial)


def test_scale_out_on_process_pool(prefect_api: str, project: Path, serial: dict[str, Any]) -> None:
    run_scale_out("process", project, serial)


def test_scale_out_on_dask(prefect_api: str, project: Path, serial: dict[str, Any]) -> None:
    run_scale_out("dask", project, serial)


def _dvc(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dvc", *args], capture_output=True, text=True, check=False)


def test_dvc_lineage(prefect_api: str, dvc_repo: Path, serial: dict[str, Any]) -> None:
    """Each stage through ``dvc repro``: the lock records all stages and ``dvc status -q`` is clean after."""
    assert _dvc("status", "-q").returncode == 1  # stale before the run: the check can fail

    state = prepare_data(lineage="dvc", return_state=True)
    assert recorded(state.state_details.flow_run_id).state.is_completed()
    check_outputs(dvc_repo, state.result(), serial)
    lock = yaml.safe_load((dvc_repo / "dvc.lock").read_text())
    assert sorted(lock["stages"]) == sorted((*STAGES, "scan"))  # scan: detect_align's upstream
    status = _dvc("status", "-q", *STAGES)  # the data stages (pretrain@<run> stages are not run here)
    assert status.returncode == 0, status.stdout + status.stderr


def test_served_deployment(prefect_api: str, project: Path, serial: dict[str, Any]) -> None:
    """``python -m workflows.deployments`` serves ``prepare-data/prepare-data``; a run triggered through the
    API is executed by it in its working directory and completes."""
    log = (project.parent / "serve.log").open("w")
    server = subprocess.Popen(
        [sys.executable, "-m", "workflows.deployments"],
        env={**os.environ, "PREFECT_API_URL": prefect_api},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        with get_client(sync_client=True) as client:
            while True:
                assert server.poll() is None, (project.parent / "serve.log").read_text()
                try:
                    client.read_deployment_by_name("prepare-data/prepare-data")
                    break
                except ObjectNotFound:
                    assert time.monotonic() < deadline, "the deployment was not registered within 60 s"
                    time.sleep(0.5)
        run = run_deployment(
            "prepare-data/prepare-data",
            parameters={"lineage": "none", "runner": "thread"},
            timeout=180,
            poll_interval=1,
            as_subflow=False,
        )
        assert run.state is not None and run.state.is_completed(), run.state
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()
    final = recorded(run.id)
    assert final.state.is_completed() and final.deployment_id is not None
    shards = project / load_params(project / "params.yaml").paths.shards
    index = read_index(shards)
    assert index["content_hash"] == serial["content_hash"]
    assert [e["name"] for e in index["shards"]] == sorted(p.name for p in shards.glob("*.lmdb"))
