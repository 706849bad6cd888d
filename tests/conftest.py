"""Shared fixtures. The real assets (photos, models, masks) are found through ``FACEKIT_ASSETS``.

A missing asset is a failure, never a skip: every test here runs in CI.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# Tiny models on a 2-core runner: one intra-op thread is many times faster than two competing ones.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def assets() -> Path:
    """The shared assets folder (``FACEKIT_ASSETS``); fails the test when it is not there."""
    root = os.environ.get("FACEKIT_ASSETS")
    if not root or not (Path(root) / "faces" / "deepface" / "identities.csv").is_file():
        pytest.fail(
            f"FACEKIT_ASSETS must point at the shared assets folder (faces/, models/, masks/, protocols/); got {root!r}"
        )
    return Path(root)
