"""``pretrain/pretrain-lafs`` on a process work pool: registered by ``python -m workflows.deployments --pool``,
run by a ``prefect worker`` subprocess against a real Prefect server, it trains LAFS on the sample's shards
(with their dense landmarks) and exports a backbone that embeds faces."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import yaml
from prefect.client.orchestration import get_client
from prefect.deployments import run_deployment

from facekit.config import load_params
from facekit.data.augment import normalize_to_tensor
from facekit.data.dataset import FaceShardDataset
from facekit.data.ops.landmarks import mesh_196
from facekit.nn import backbones
from facekit.stages import detect_align, landmarks, pack, sample, split
from facekit.train.checkpoint import LAST, MODEL_FILE
from workflows.deployments import main as deployments_main

if TYPE_CHECKING:
    from tests.workflows.conftest import WorkerPool

STEPS = 2
TINY_LAFS = {  # params.yaml's lafs run, one block and a small head
    "backbone_kwargs": {"depth": 1, "embed_dim": 96, "num_heads": 2},
    "landmarks": "mesh",
    "out_dim": 128,
    "head_hidden_dim": 64,
    "head_bottleneck_dim": 32,
    "n_local": 2,
    "warmup_teacher_temp_epochs": 1,
}


def test_pretrain_lafs_on_a_process_worker(gpu_pool: WorkerPool, project: Path) -> None:
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["pretrain"]["train"].update(epochs=1, batch_size=8, max_steps=STEPS, log_every=1)  # 30 training faces
    params["pretrain"]["runs"] = {"lafs": TINY_LAFS}
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    deployments_main(["--pool", gpu_pool.name])  # pretrain/pretrain-lafs (and the rest) on the pool, run here

    loaded = load_params()
    sample.run(loaded, loaded.paths)
    detect_align.run(loaded, loaded.paths, progress=False)
    landmarks.run(loaded, loaded.paths, progress=False)  # LAFS reads the dense mesh; masked twins are not needed
    pack.run(loaded, replace(loaded.paths, masked=loaded.paths.landmarks), progress=False)
    split.run(loaded, loaded.paths)  # who pre-training leaves out
    run = run_deployment(
        "pretrain/pretrain-lafs", parameters={"lineage": "none"}, timeout=240, poll_interval=1, as_subflow=False
    )
    assert run.state is not None and run.state.is_completed(), (run.state, gpu_pool.log_tail())
    with get_client(sync_client=True) as client:
        assert client.read_flow_run(run.id).work_pool_name == gpu_pool.name  # the worker ran it, not this process
    assert run.parameters == {"run": "lafs", "lineage": "none"}

    out = project / "data/runs/pretrain/lafs"
    assert (out / "checkpoints" / LAST / MODEL_FILE).is_file()
    assert (out / backbones.WEIGHTS_FILE).is_file()
    spec = backbones.read(out)
    assert (spec.method, spec.kwargs["patch_size"], spec.kwargs["depth"]) == ("lafs", 8, 1)
    metrics = json.loads((project / "metrics/pretrain_lafs.json").read_text())
    assert (metrics["run"], metrics["method"], metrics["steps"]) == ("lafs", "lafs", STEPS)

    backbone = backbones.load(out).eval()
    faces = FaceShardDataset(
        project / loaded.paths.shards, transform=lambda rgb: normalize_to_tensor(rgb, (0.5,) * 3, (0.5,) * 3)
    )
    batch = torch.stack([faces[0]["image"], faces[len(faces) - 1]["image"]])  # [2, 3, 112, 112]
    records = [record for reader in faces.readers for record in reader]
    mesh = torch.from_numpy(np.stack([mesh_196(records[0]), mesh_196(records[-1])]))  # [2, 196, 2]: its input
    with torch.no_grad():
        embeddings = backbone(batch, mesh)
    assert embeddings.shape == (2, 96) and torch.isfinite(embeddings).all()
    assert not torch.allclose(embeddings[0], embeddings[1])
