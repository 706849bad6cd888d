"""Shared fixtures. The real assets (photos, models, masks) are found through ``FACEKIT_ASSETS``.

A missing asset is a failure, never a skip: every test here runs in CI.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# Tiny models on a 2-core runner: one intra-op thread is many times faster than two competing ones.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def one_torch_thread() -> Iterator[None]:
    """One intra-op thread in every test, whatever an earlier test set (a training loop may change it)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def assets() -> Path:
    """The shared assets folder (``FACEKIT_ASSETS``); fails the test when it is not there."""
    root = os.environ.get("FACEKIT_ASSETS")
    if not root or not (Path(root) / "faces" / "deepface" / "identities.csv").is_file():
        pytest.fail(
            f"FACEKIT_ASSETS must point at the shared assets folder (faces/, models/, masks/, protocols/); got {root!r}"
        )
    return Path(root)


@pytest.fixture(scope="session")
def sample_shards(tmp_path_factory: pytest.TempPathFactory, assets: Path) -> Path:
    """sample → detect_align → pack on the 61 shared photos of 13 people (one shard), once per session."""
    from facekit.config import Params, SampleParams, ShardingParams, SourceParams
    from facekit.data.shards import read_index
    from facekit.data.stages.steps import detect_align_step, pack_step, sample_step

    root = tmp_path_factory.mktemp("sample")
    os.environ["FACEKIT_ASSETS"] = str(assets)
    raw = root / "raw"
    params = Params(
        sample=SampleParams(out=str(raw)),
        source=SourceParams(path=str(raw), name="t"),
        sharding=ShardingParams(num_shards=1, workers=1),
    )
    sample_step(params, report=root / "m/sample.json")
    detect_align_step(params, out=root / "aligned", report=root / "m/da.json", grid=root / "da.png", progress=False)
    pack_step(params, aligned=root / "aligned", out=root / "shards", report=root / "m/pack.json", grid=root / "f.png")
    assert read_index(root / "shards")["count"] >= 60
    return root / "shards"
