"""The ``pretrain`` flow served by ``python -m workflows.deployments`` against a real Prefect server: one
deployment per run in params.yaml, and ``pretrain/pretrain-mae`` triggered through the API trains the run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import yaml
from prefect.client.orchestration import get_client
from prefect.deployments import run_deployment
from prefect.exceptions import ObjectNotFound

from facekit.config import load_params
from facekit.nn import backbones
from facekit.stages import detect_align, pack, sample, split
from facekit.train.checkpoint import LAST, MODEL_FILE

TINY_MAE = {
    "backbone": "vit_small_patch16_224",
    "backbone_kwargs": {"img_size": 112, "depth": 2, "embed_dim": 192, "num_heads": 3},
    "decoder_dim": 64,
    "decoder_depth": 1,
    "decoder_heads": 2,
}


def _tiny_pretrain(project: Path) -> None:
    """Two runs in the project's params.yaml (``mae`` of 3 steps, and ``camd``, never run here)."""
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["pretrain"]["train"].update(epochs=1, batch_size=8, log_every=1)  # 30 training faces: 3 steps
    params["pretrain"]["runs"] = {"mae": TINY_MAE, "camd": params["pretrain"]["runs"]["camd"]}
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def _wait_for(name: str, server: subprocess.Popen, log: Path, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while True:
            assert server.poll() is None, log.read_text()
            try:
                client.read_deployment_by_name(name)
                return
            except ObjectNotFound:
                assert time.monotonic() < deadline, f"{name} was not registered within {timeout:.0f} s"
                time.sleep(0.5)


@pytest.mark.slow
def test_served_pretrain_deployment_trains_the_run(prefect_api: str, project: Path) -> None:
    _tiny_pretrain(project)
    log_path = project.parent / "serve.log"
    with log_path.open("w") as log:
        server = subprocess.Popen(  # starts (imports, registers) while the shards are built
            [sys.executable, "-m", "workflows.deployments"],
            env={**os.environ, "PREFECT_API_URL": prefect_api, "OMP_NUM_THREADS": "1"},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            params = load_params()
            sample.run(params, params.paths)
            detect_align.run(params, params.paths, progress=False)
            # no landmarks / masks: pre-training needs neither, pack reads the aligned faces
            pack.run(params, replace(params.paths, masked=params.paths.aligned), progress=False)
            split.run(params, params.paths)  # who pre-training leaves out
            _wait_for("pretrain/pretrain-mae", server, log_path)
            with get_client(sync_client=True) as client:
                camd = client.read_deployment_by_name("pretrain/pretrain-camd")
            assert camd.parameters == {"run": "camd"}
            run = run_deployment(
                "pretrain/pretrain-mae",
                parameters={"lineage": "none"},
                timeout=240,
                poll_interval=1,
                as_subflow=False,
            )
        finally:
            server.terminate()
            server.wait(timeout=30)
    assert run.state is not None and run.state.is_completed(), (run.state, log_path.read_text()[-3000:])
    assert run.parameters == {"run": "mae", "lineage": "none"}

    out = project / "data/runs/pretrain/mae"
    assert (out / "checkpoints" / LAST / MODEL_FILE).is_file()
    metrics = json.loads((project / "metrics/pretrain_mae.json").read_text())
    assert (metrics["run"], metrics["steps"], metrics["backbone"]) == ("mae", 3, "vit_small_patch16_224")
    backbone = backbones.load(out)
    assert backbone(torch.zeros(1, 3, 112, 112)).shape == (1, 192)
    assert (project / params.paths.shards / "index.json").is_file()
