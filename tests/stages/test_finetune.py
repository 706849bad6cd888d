"""The ``finetune`` stage's checks: a run names its missing pre-training and the keys the stage sets."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from facekit.config import load_params
from facekit.stages.finetune import resolve_finetune_run


def test_finetune_runs_name_their_missing_pre_training_and_stage_keys(in_project: Path) -> None:
    params = yaml.safe_load(Path("params.yaml").read_text())
    params["finetune"]["runs"] = {"mae": {}}
    Path("other.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(FileNotFoundError, match="facekit pretrain mae"):
        resolve_finetune_run(load_params("other.yaml"), "mae")
    params["finetune"]["runs"] = {"scratch": {"num_classes": 5}}
    Path("other.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(ValueError, match=r"finetune\.runs\.scratch\.num_classes is set by the stage"):
        resolve_finetune_run(load_params("other.yaml"), "scratch")
