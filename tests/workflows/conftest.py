"""Fixtures for the Prefect workflows: a real local Prefect server, a process work pool with a worker,
small project copies, a serial baseline.

The server is Prefect's own test harness (a real API server on a temporary database). Prefect's home and
result storage go to a temporary folder, set in the environment as well so that subprocesses (process
pool, Dask workers, ``flow.serve``) see the same settings.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.settings import (
    PREFECT_API_URL,
    PREFECT_HOME,
    PREFECT_RESULTS_LOCAL_STORAGE_PATH,
    temporary_settings,
)
from prefect.testing.utilities import prefect_test_harness

from facekit.config import load_params
from facekit.data.shards import read_index
from facekit.stages import detect_align, landmarks, masks, pack, sample
from facekit.stages.shard_map import process_map

PROJECT = Path(__file__).resolve().parents[2]
NUM_SHARDS = 2


@pytest.fixture(scope="session")
def prefect_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Prefect server for the whole session; yields its API URL."""
    home = tmp_path_factory.mktemp("prefect-home")
    with pytest.MonkeyPatch.context() as mp:
        for name, value in {
            "PREFECT_HOME": str(home),
            "PREFECT_RESULTS_LOCAL_STORAGE_PATH": str(home / "results"),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "DVC_NO_ANALYTICS": "1",
        }.items():
            mp.setenv(name, value)
        settings = {PREFECT_HOME: home, PREFECT_RESULTS_LOCAL_STORAGE_PATH: home / "results"}
        with temporary_settings(updates=settings), prefect_test_harness(server_startup_timeout=60):
            api = PREFECT_API_URL.value()
            mp.setenv("PREFECT_API_URL", api)
            yield api


@dataclass(frozen=True)
class WorkerPool:
    """A work pool served by a worker subprocess, and that worker's log."""

    name: str
    log: Path

    def log_tail(self, chars: int = 4000) -> str:
        """The end of the worker's log (flow run output included), for failure messages."""
        return self.log.read_text()[-chars:]


@pytest.fixture(scope="session")
def gpu_pool(prefect_api: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerPool]:
    """The process work pool ``gpu``, created through the API from the repo's job template, with a
    ``prefect worker start --pool gpu`` subprocess (not waited for: it starts while a test prepares its
    data; a run waits in the pool until the worker picks it up)."""
    template = json.loads((PROJECT / "workflows" / "gpu-pool-template.json").read_text())
    with get_client(sync_client=True) as client:
        client.create_work_pool(WorkPoolCreate(name="gpu", type="process", base_job_template=template))
    log_path = tmp_path_factory.mktemp("worker") / "worker.log"
    env = {**os.environ, "PREFECT_WORKER_QUERY_SECONDS": "1", "OMP_NUM_THREADS": "1"}
    with log_path.open("w") as log:
        worker = subprocess.Popen(
            [sys.executable, "-m", "prefect", "worker", "start", "--pool", "gpu"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        yield WorkerPool("gpu", log_path)
    finally:
        stop(worker)


def stop(process: subprocess.Popen, timeout: float = 30) -> None:
    """Stop a Prefect server or worker: SIGTERM, then SIGKILL when it has not exited within ``timeout``
    (a worker may still be cancelling its polling loop against a server that is going away)."""
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=timeout)


def make_project(root: Path) -> Path:
    """``root`` as a small facekit project: the repo's dvc.yaml and params.yaml with fewer shards."""
    root.mkdir(parents=True, exist_ok=True)
    shutil.copy(PROJECT / "dvc.yaml", root / "dvc.yaml")
    params = yaml.safe_load((PROJECT / "params.yaml").read_text())
    params["sharding"]["num_shards"] = NUM_SHARDS
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return root


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, assets: Path) -> Path:
    """A small project in a temporary folder, made the working directory."""
    root = make_project(tmp_path / "project")
    monkeypatch.chdir(root)
    return root


@pytest.fixture
def dvc_repo(project: Path) -> Path:
    """The small project as a fresh git + DVC repository holding the stage code dvc.yaml depends on."""
    for stage in yaml.safe_load((project / "dvc.yaml").read_text())["stages"].values():
        for dep in stage.get("do", stage).get("deps", []):  # a foreach stage's deps are in its body
            if not dep.startswith("facekit/"):
                continue
            (project / dep).parent.mkdir(parents=True, exist_ok=True)
            if (PROJECT / dep).is_dir():  # folders may overlap files named by other stages
                shutil.copytree(PROJECT / dep, project / dep, dirs_exist_ok=True)
            else:
                shutil.copy(PROJECT / dep, project / dep)
    subprocess.run(["git", "init", "-q"], check=True)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], check=True)
    return project


@pytest.fixture(scope="session")
def serial(tmp_path_factory: pytest.TempPathFactory, assets: Path) -> dict[str, Any]:
    """The same steps run serially without Prefect: per-stage counts and the packed content hash."""
    root = make_project(tmp_path_factory.mktemp("serial"))
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        params = load_params()
        paths, inline = params.paths, process_map(1)
        reports = {
            "sample": sample.run(params, paths),
            "detect_align": detect_align.run(params, paths, shard_map=inline, progress=False),
            "landmarks": landmarks.run(params, paths, shard_map=inline, progress=False),
            "masks": masks.run(params, paths, shard_map=inline, progress=False),
            "pack": pack.run(params, paths, shard_map=inline, progress=False),
        }
        index = read_index(paths.shards)
    stages = {s: {"read": r.read, "written": r.written, "rejected": r.rejected} for s, r in reports.items()}
    return {"stages": stages, "faces": index["count"], "content_hash": index["content_hash"]}
