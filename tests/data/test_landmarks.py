"""Dense landmarks (MediaPipe face mesh) on real aligned faces: agreement with the detector, index
tables, non-faces, and the ``landmarks`` stage round trip."""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from facekit.config import AlignParams, DetectParams, LandmarkParams, Params, ShardingParams
from facekit.data.images import decode_jpeg_rgb, encode_jpeg
from facekit.data.ops.align import ARCFACE_TEMPLATE
from facekit.data.ops.landmarks import (
    DENSE_KEY,
    LEFT_EYE,
    MESH_68,
    MESH_196,
    RIGHT_EYE,
    FaceMesh,
    agreement,
    inter_ocular,
    mesh_aligned_face,
    mesh_five_points,
)
from facekit.data.record import FaceRecord, RawRecord
from facekit.data.shards import ShardReader, ShardWriter
from facekit.data.stages.detect_align import align_record
from facekit.data.stages.landmarks import landmarks_shard, run_landmarks

MODEL = "models/mediapipe_face_landmark_468.tflite"


@pytest.fixture(scope="module")
def faces(assets: Path) -> list[FaceRecord]:
    """The 61 deepface photos, detected (SCRFD) and aligned to tight 112 ArcFace crops like detect_align."""
    folder = assets / "faces/deepface"
    rows = list(csv.DictReader((folder / "identities.csv").open()))
    records = []
    for row in rows:
        raw = RawRecord(f"deepface/{row['file']}", (folder / row["file"]).read_bytes(), int(row["identity_id"]))
        record = align_record(raw, DetectParams(), AlignParams())
        assert isinstance(record, FaceRecord), record
        records.append(record)
    return records


@pytest.fixture(scope="module")
def mesh(assets: Path) -> FaceMesh:
    return FaceMesh(assets / MODEL)


@pytest.fixture(scope="module")
def meshed(faces: list[FaceRecord], mesh: FaceMesh) -> list:
    return [mesh_aligned_face(mesh, decode_jpeg_rgb(r.image), r.landmarks) for r in faces]


def test_mesh_five_points_land_on_the_detectors(faces: list[FaceRecord], meshed: list) -> None:
    fives = np.array([mesh_five_points(m.points) for m in meshed])
    dets = np.array([r.landmarks for r in faces])
    iod = np.linalg.norm(dets[:, 1] - dets[:, 0], axis=1)
    per_point = np.median(np.linalg.norm(fives - dets, axis=2) / iod[:, None], axis=0)
    # measured: eyes 3.0% / 3.6%, nose tip 4.2%, mouth corners 3.1% / 3.3%
    assert (per_point < 0.05).all(), per_point
    scores = np.array([agreement(m.points, r.landmarks) for m, r in zip(meshed, faces, strict=True)])
    assert np.median(scores) < 0.045, np.median(scores)  # measured 3.5%
    # every sample face passes the default thresholds (worst measured: 6.4%, presence 1.0)
    defaults = LandmarkParams()
    assert scores.max() < defaults.max_disagreement, scores.max()
    assert min(m.presence for m in meshed) > defaults.min_presence


def test_the_mesh_needs_margin_around_a_tight_crop(faces: list[FaceRecord], meshed: list, mesh: FaceMesh) -> None:
    tight = [mesh_aligned_face(mesh, decode_jpeg_rgb(r.image), r.landmarks, face_fraction=1.0) for r in faces]
    with_margin = np.median([agreement(m.points, r.landmarks) for m, r in zip(meshed, faces, strict=True)])
    without = np.median([agreement(m.points, r.landmarks) for m, r in zip(tight, faces, strict=True)])
    assert without > with_margin + 0.01, (without, with_margin)  # measured 5.2% vs 3.5%


def test_non_face_crops_fail_the_checks(mesh: FaceMesh) -> None:
    rng = np.random.default_rng(0)
    checker = np.kron(np.indices((14, 14)).sum(0) % 2, np.ones((8, 8)))
    crops = {
        "grey": np.full((112, 112, 3), 128, np.uint8),
        "noise": rng.integers(0, 256, (112, 112, 3), dtype=np.uint8),
        "checker": np.repeat((checker * 255).astype(np.uint8)[:, :, None], 3, axis=2),
    }
    params = LandmarkParams()
    for name, crop in crops.items():
        result = mesh_aligned_face(mesh, crop, ARCFACE_TEMPLATE)
        # measured: presence <= 0.0003 and disagreement >= 0.34 on all three
        assert result.presence < params.min_presence, name
        assert agreement(result.points, ARCFACE_TEMPLATE) > params.max_disagreement, name


def test_five_points_and_agreement_by_hand() -> None:
    points = np.zeros((468, 3), np.float32)
    points[LEFT_EYE, :2] = [[30, 50], [34, 50]] * 8  # centre (32, 50)
    points[RIGHT_EYE, :2] = [[70, 48], [74, 52]] * 8  # centre (72, 50)
    points[4, :2], points[61, :2], points[291, :2] = (52, 70), (40, 90), (72, 90)
    five = mesh_five_points(points)
    np.testing.assert_allclose(five, [[32, 50], [72, 50], [52, 70], [40, 90], [72, 90]])
    assert inter_ocular(five) == 40.0
    assert agreement(points, five) == 0.0
    shifted = five + np.array([[0, 0], [0, 0], [0, 3], [4, 0], [0, 0]])  # (3 + 4) / 5 / 40
    assert agreement(points, shifted) == pytest.approx(7 / 5 / 40)
    with pytest.raises(ValueError, match="468"):
        mesh_five_points(points[:100])


def test_mesh_68_is_ibug_ordered_on_real_faces(meshed: list) -> None:
    assert MESH_68.shape == (68,) and len(set(MESH_68.tolist())) == 68
    assert MESH_68.min() >= 0 and MESH_68.max() < 468
    pts = np.array([m.points[MESH_68, :2] for m in meshed])  # [N, 68, 2]
    x, y = pts[..., 0], pts[..., 1]
    jaw_steps = np.diff(x[:, :17], axis=1)
    assert (jaw_steps > 0).mean() > 0.98, (jaw_steps <= 0).sum()  # left -> right (the chin may turn)
    assert (np.argmax(y[:, :17], axis=1) == 8).mean() > 0.75  # the chin is the lowest jaw point
    brows, eyes, tip, mouth = y[:, 17:27].mean(1), y[:, 36:48].mean(1), y[:, 30], y[:, 48:68].mean(1)
    assert ((brows < eyes) & (eyes < tip) & (tip < mouth)).all()
    for left, right in [(range(17, 22), range(22, 27)), (range(36, 42), range(42, 48))]:
        assert (x[:, list(left)].mean(1) < x[:, list(right)].mean(1)).all()
    assert (x[:, 48] < x[:, 54]).all() and (x[:, 60] < x[:, 64]).all()  # mouth corners, outer and inner
    assert (y[:, 51] < y[:, 62]).all() and (y[:, 66] < y[:, 57]).all()  # inner lips inside the outer
    # the image-right half mirrors the image-left half (mean face, crop centre line x = 56)
    mean = pts.mean(0)
    pairs = [(i, 16 - i) for i in range(8)] + [(17 + i, 26 - i) for i in range(5)] + [(31, 35), (32, 34)]
    pairs += [(36, 45), (37, 44), (38, 43), (39, 42), (40, 47), (41, 46), (48, 54), (49, 53), (50, 52)]
    pairs += [(59, 55), (58, 56), (60, 64), (61, 63), (67, 65)]
    left, right = mean[[p[0] for p in pairs]], mean[[p[1] for p in pairs]]
    assert np.abs(left[:, 0] + right[:, 0] - 112).max() < 2.5
    assert np.abs(left[:, 1] - right[:, 1]).max() < 2.5


def test_mesh_196_is_well_spread_in_raster_order(meshed: list) -> None:
    assert MESH_196.shape == (196,) and len(set(MESH_196.tolist())) == 196
    mean = np.array([m.points[:, :2] for m in meshed]).mean(0)  # [468, 2]
    sel = mean[MESH_196]
    d = np.linalg.norm(sel[:, None] - sel[None], axis=2)
    np.fill_diagonal(d, np.inf)
    assert d.min() > 3.0, d.min()  # measured 3.5 px
    cover = np.linalg.norm(mean[:, None] - sel[None], axis=2).min(1)
    assert cover.max() < 4.0, cover.max()  # measured 3.5 px
    grid = sel.reshape(14, 14, 2)
    assert (np.diff(grid[..., 0], axis=1) > 0).all()  # each row image-left -> image-right
    assert (grid[:-1, :, 1].max(1) <= grid[1:, :, 1].min(1)).all()  # rows top -> bottom


def test_missing_model_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="face-mesh model"):
        FaceMesh(tmp_path / "nope.tflite")


def _write_shards(faces: list[FaceRecord], in_dir: Path) -> None:
    """Two aligned shards like detect_align's; shard 1 ends with a flat grey non-face."""
    grey = faces[0].replace(key="t/grey", image=encode_jpeg(np.full((112, 112, 3), 128, np.uint8)))
    meta = {"identities": ["a"], "params_hash": "x", "stage": "detect_align"}
    for shard_id, records in enumerate([faces[::2], [*faces[1::2], grey]]):
        with ShardWriter(in_dir / f"shard-{shard_id:05d}.lmdb", meta=meta) as writer:
            for record in records:
                writer.put(record)


def test_stage_round_trip(tmp_path: Path, faces: list[FaceRecord], assets: Path) -> None:
    _write_shards(faces, tmp_path / "aligned")
    params = Params(sharding=ShardingParams(num_shards=2, workers=2))
    lparams = LandmarkParams(model=str(assets / MODEL))
    report = run_landmarks(params, lparams, tmp_path / "aligned", tmp_path / "lm", progress=False)
    assert (report.read, report.written, report.rejected) == (62, 61, 1)
    assert report.read == report.written + report.rejected
    assert [(r.key, r.reason) for r in report.rejections] == [("t/grey", "mesh_failed")]
    assert "presence 0.000" in report.rejections[0].detail
    assert 0.0 < report.extra["median_agreement"] < 0.045
    out = [r for path in sorted((tmp_path / "lm").glob("shard-*.lmdb")) for r in ShardReader(path)]
    assert sorted(r.key for r in out) == sorted(r.key for r in faces)
    assert ShardReader(tmp_path / "lm/shard-00000.lmdb").meta["identities"] == ["a"]
    for record in out:
        dense = record.extra[DENSE_KEY]
        assert dense.shape == (468, 2) and dense.dtype == np.float16
        # the chin may sit a few pixels below the tight crop (measured: at most 3.2 px)
        assert (dense > -5).all() and (dense < 112 + 5).all(), record.key
        assert ((dense >= 0) & (dense < 112)).all(axis=1).mean() > 0.98
        assert agreement(dense.astype(np.float32), record.landmarks) < lparams.max_disagreement

    one = landmarks_shard(params, lparams, 1, tmp_path / "aligned", tmp_path / "one")
    assert (one.read, one.written, one.rejected) == (31, 30, 1)  # the odd faces and the grey square
    assert len(ShardReader(tmp_path / "one/shard-00001.lmdb")) == 30

    keep = LandmarkParams(model=str(assets / MODEL), on_failure="keep")
    report = run_landmarks(params, keep, tmp_path / "aligned", tmp_path / "keep", progress=False, shard_map=_serial)
    assert (report.read, report.written, report.rejected) == (62, 62, 0)
    assert report.extra["kept_without_landmarks"] == 1
    kept = {r.key: r for path in (tmp_path / "keep").glob("shard-*.lmdb") for r in ShardReader(path)}
    assert DENSE_KEY not in kept["t/grey"].extra and DENSE_KEY in kept[faces[0].key].extra


def _serial(fn: Callable[..., Any], calls: Sequence[tuple[Any, ...]]) -> Iterator[Any]:
    """A ShardMap that runs the shards in this process."""
    return (fn(*args) for args in calls)
