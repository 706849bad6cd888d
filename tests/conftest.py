"""Shared fixtures. The real assets (photos, models, masks) are found through ``FACEKIT_ASSETS``.

A missing asset is a failure, never a skip: every test here runs in CI.
"""

from __future__ import annotations

import os
import struct
import zlib
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
def png_bomb() -> bytes:
    """A valid 1-bit PNG of 30000 × 30000 black pixels: a few KB on disk, ~900 MB once decoded."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    side = 30000
    rows = (b"\0" + bytes((side + 7) // 8)) * side
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


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
    from facekit.config import Params, PathsParams, SampleParams, ShardingParams, SourceParams
    from facekit.data.shards import read_index
    from facekit.stages import detect_align, pack, sample

    root = tmp_path_factory.mktemp("sample")
    os.environ["FACEKIT_ASSETS"] = str(assets)
    raw = root / "raw"
    params = Params(
        sample=SampleParams(out=str(raw)),
        source=SourceParams(path=str(raw), name="t"),
        sharding=ShardingParams(num_shards=1, workers=1),
    )
    # pack reads the aligned faces: no landmarks / masks stages
    paths = PathsParams(
        aligned=str(root / "aligned"),
        masked=str(root / "aligned"),
        shards=str(root / "shards"),
        metrics=str(root / "m"),
        plots=str(root),
    )
    sample.run(params, paths)
    detect_align.run(params, paths, progress=False)
    pack.run(params, paths)
    assert read_index(root / "shards")["count"] >= 60
    return root / "shards"


@pytest.fixture(scope="session")
def deepface_faces(assets: Path) -> list:
    """The 61 deepface photos as ``FaceRecord``s keyed ``deepface/<stem>``: detected (SCRFD) and aligned to
    tight 112 ArcFace crops like detect_align."""
    import csv

    from facekit.config import AlignParams, DetectParams
    from facekit.data.ops.detect_align import align_record
    from facekit.data.record import FaceRecord, RawRecord

    folder = assets / "faces/deepface"
    records = []
    for row in csv.DictReader((folder / "identities.csv").open()):
        key = f"deepface/{Path(row['file']).stem}"
        raw = RawRecord(key, (folder / row["file"]).read_bytes(), int(row["identity_id"]))
        record = align_record(raw, DetectParams(), AlignParams())
        assert isinstance(record, FaceRecord), record
        records.append(record)
    assert len(records) == 61
    return records


@pytest.fixture(scope="session")
def deepface_meshed(deepface_faces: list, assets: Path) -> list:
    """``deepface_faces`` with dense landmarks like the landmarks stage, except ``deepface/img2`` and
    ``deepface/img40``: left without, as the stage leaves faces with ``on_failure="keep"``."""
    import numpy as np

    from facekit.data.images import decode_jpeg_rgb
    from facekit.data.ops.landmarks import DENSE_KEY, FaceMesh, mesh_aligned_face

    mesh = FaceMesh(assets / "models/mediapipe_face_landmark_468.tflite")
    records = []
    for record in deepface_faces:
        if record.key not in ("deepface/img2", "deepface/img40"):
            points = mesh_aligned_face(mesh, decode_jpeg_rgb(record.image), record.landmarks).points
            record = record.replace(extra={DENSE_KEY: points[:, :2].astype(np.float16)})
        records.append(record)
    return records
