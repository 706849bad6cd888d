"""The project the evaluation end of the chain runs in: the repo's params.yaml with one tiny random-init
run, and the shards of the sample built by the data stages."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from facekit.config import load_params
from facekit.stages import detect_align, landmarks, masks, pack, sample
from facekit.stages.shard_map import process_map

TINY_VIT = {"img_size": 112, "depth": 1, "embed_dim": 64, "num_heads": 2}


@pytest.fixture(scope="session")
def project(tmp_path_factory: pytest.TempPathFactory, assets: Path) -> Path:
    """A project folder whose params.yaml is the repo's with one tiny random-init run, and its shards
    (sample → detect_align → landmarks → masks → pack on the 61 shared photos), once per session."""
    root = tmp_path_factory.mktemp("chain")
    params = yaml.safe_load((Path(__file__).resolve().parents[2] / "params.yaml").read_text())
    params["sharding"]["num_shards"] = 1
    params["masks"]["quality_pairs"] = ""
    params["pretrain"]["runs"] = {"scratch": {"method": "random_init", "backbone": "vit_small_patch16_224"}}
    params["pretrain"]["runs"]["scratch"]["backbone_kwargs"] = TINY_VIT
    params["finetune"]["runs"] = {"scratch": {}}
    params["finetune"]["train"].update(epochs=2)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("FACEKIT_ASSETS", str(assets))
        loaded = load_params()
        paths, inline = loaded.paths, process_map(1)
        sample.run(loaded, paths)
        detect_align.run(loaded, paths, shard_map=inline, progress=False)
        landmarks.run(loaded, paths, shard_map=inline, progress=False)
        masks.run(loaded, paths, shard_map=inline, progress=False)
        pack.run(loaded, paths, shard_map=inline, progress=False)
    return root


@pytest.fixture
def in_project(project: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(project)
    return project
