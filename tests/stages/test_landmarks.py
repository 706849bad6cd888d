"""The ``landmarks`` stage round trip on real aligned faces: rejections, counts, the per-shard function and
``on_failure="keep"``."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from facekit.config import LandmarkParams, Params, ShardingParams
from facekit.data.images import encode_jpeg
from facekit.data.ops.landmarks import DENSE_KEY, agreement
from facekit.data.record import FaceRecord
from facekit.data.shards import ShardReader, ShardWriter
from facekit.stages.landmarks import landmarks_shard, run_landmarks

MODEL = "models/mediapipe_face_landmark_468.tflite"


def _write_shards(faces: list[FaceRecord], in_dir: Path) -> None:
    """Two aligned shards like detect_align's; shard 1 ends with a flat grey non-face."""
    grey = faces[0].replace(key="t/grey", image=encode_jpeg(np.full((112, 112, 3), 128, np.uint8)))
    meta = {"identities": ["a"], "params_hash": "x", "stage": "detect_align"}
    for shard_id, records in enumerate([faces[::2], [*faces[1::2], grey]]):
        with ShardWriter(in_dir / f"shard-{shard_id:05d}.lmdb", meta=meta) as writer:
            for record in records:
                writer.put(record)


def test_stage_round_trip(tmp_path: Path, deepface_faces: list[FaceRecord], assets: Path) -> None:
    _write_shards(deepface_faces, tmp_path / "aligned")
    params = Params(sharding=ShardingParams(num_shards=2, workers=2))
    lparams = LandmarkParams(model=str(assets / MODEL))
    report = run_landmarks(params, lparams, tmp_path / "aligned", tmp_path / "lm", progress=False)
    assert (report.read, report.written, report.rejected) == (62, 61, 1)
    assert report.read == report.written + report.rejected
    assert [(r.key, r.reason) for r in report.rejections] == [("t/grey", "mesh_failed")]
    assert "presence 0.000" in report.rejections[0].detail
    assert 0.0 < report.extra["median_agreement"] < 0.045
    out = [r for path in sorted((tmp_path / "lm").glob("shard-*.lmdb")) for r in ShardReader(path)]
    assert sorted(r.key for r in out) == sorted(r.key for r in deepface_faces)
    assert ShardReader(tmp_path / "lm/shard-00000.lmdb").meta["identities"] == ["a"]
    for record in out:
        dense = record.extra[DENSE_KEY]
        assert dense.shape == (468, 2) and dense.dtype == np.float16
        # the chin may sit a few pixels below the tight crop (measured: at most 3.2 px)
        assert (dense > -5).all() and (dense < 112 + 5).all(), record.key
        assert ((dense >= 0) & (dense < 112)).all(axis=1).mean() > 0.98
        assert agreement(dense.astype(np.float32), record.landmarks) < lparams.max_disagreement

    one = landmarks_shard(params, lparams, 1, tmp_path / "aligned", tmp_path / "one")
    assert (one.read, one.written, one.rejected) == (31, 30, 1)  # the odd deepface_faces and the grey square
    assert len(ShardReader(tmp_path / "one/shard-00001.lmdb")) == 30

    keep = LandmarkParams(model=str(assets / MODEL), on_failure="keep")
    report = run_landmarks(params, keep, tmp_path / "aligned", tmp_path / "keep", progress=False, shard_map=_serial)
    assert (report.read, report.written, report.rejected) == (62, 62, 0)
    assert report.extra["kept_without_landmarks"] == 1
    kept = {r.key: r for path in (tmp_path / "keep").glob("shard-*.lmdb") for r in ShardReader(path)}
    assert DENSE_KEY not in kept["t/grey"].extra and DENSE_KEY in kept[deepface_faces[0].key].extra


def _serial(fn: Callable[..., Any], calls: Sequence[tuple[Any, ...]]) -> Iterator[Any]:
    """A ShardMap that runs the shards in this process."""
    return (fn(*args) for args in calls)
