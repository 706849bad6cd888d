"""Real faces for the LAFS tests: four deepface photos aligned like detect_align, with their MediaPipe mesh."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from facekit.config import AlignParams, DetectParams
from facekit.data.images import decode_jpeg_rgb
from facekit.data.ops.detect_align import align_record
from facekit.data.ops.landmarks import DENSE_KEY, FaceMesh, mesh_aligned_face
from facekit.data.record import FaceRecord, RawRecord
from facekit.data.shards import ShardWriter


@pytest.fixture(scope="session")
def meshed_faces(assets: Path) -> list[FaceRecord]:
    """Four deepface photos detected and aligned (SCRFD, 112 ArcFace crops) with their MediaPipe mesh, four
    identities."""
    folder = assets / "faces/deepface"
    rows = list(csv.DictReader((folder / "identities.csv").open()))[:4]
    mesh = FaceMesh(assets / "models/mediapipe_face_landmark_468.tflite")
    records = []
    for row in rows:
        raw = RawRecord(f"deepface/{row['file']}", (folder / row["file"]).read_bytes(), int(row["identity_id"]))
        record = align_record(raw, DetectParams(), AlignParams())
        assert isinstance(record, FaceRecord), record
        points = mesh_aligned_face(mesh, decode_jpeg_rgb(record.image), record.landmarks).points
        records.append(record.replace(extra={DENSE_KEY: points[:, :2].astype(np.float16)}))
    return records


@pytest.fixture(scope="session")
def meshed_shard(meshed_faces: list[FaceRecord], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``meshed_faces`` in one shard (identities ``a`` .. ``d``)."""
    path = tmp_path_factory.mktemp("lafs") / "shard-00000.lmdb"
    with ShardWriter(path, meta={"identities": ["a", "b", "c", "d"]}) as writer:
        for record in meshed_faces:
            writer.put(record)
    return path
