"""Face detection on real photos: RetinaFace (decoded in facekit) and SCRFD (insightface) must agree."""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np
import pytest

from facekit.data.ops.detect import (
    Detections,
    RetinaFaceDetector,
    create_detector,
    select_face,
)

MODEL_FILES = {"retinaface": "retinaface_mbnet0.25.onnx", "scrfd": "scrfd_500m_bnkps.onnx"}
KINDS = sorted(MODEL_FILES)


def box_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two [4] x1, y1, x2, y2 boxes."""
    inter = np.clip(np.minimum(a[2:], b[2:]) - np.maximum(a[:2], b[:2]), 0, None).prod()
    return float(inter / ((a[2:] - a[:2]).prod() + (b[2:] - b[:2]).prod() - inter))


@pytest.fixture(scope="module")
def detectors(assets: Path) -> dict:
    return {kind: create_detector(kind, assets / "models" / name) for kind, name in MODEL_FILES.items()}


@pytest.fixture(scope="module")
def group_photo(assets: Path) -> np.ndarray:
    return cv2.imread(str(assets / "faces" / "group" / "multiface.jpg"))


@pytest.fixture(scope="module")
def identity_detections(assets: Path, detectors: dict) -> dict[str, dict[str, Detections]]:
    """file -> kind -> Detections, for every deepface identity photo."""
    folder = assets / "faces" / "deepface"
    with open(folder / "identities.csv") as f:
        files = [row["file"] for row in csv.DictReader(f)]
    out = {}
    for name in files:
        img = cv2.imread(str(folder / name))
        out[name] = {kind: det.detect(img) for kind, det in detectors.items()}
    return out


@pytest.mark.parametrize("kind", KINDS)
def test_group_photo_has_six_faces(detectors: dict, group_photo: np.ndarray, kind: str) -> None:
    dets = detectors[kind].detect(group_photo)
    assert len(dets) == 6
    assert dets.boxes.shape == (6, 4) and dets.boxes.dtype == np.float32
    assert dets.scores.shape == (6,) and dets.scores.dtype == np.float32
    assert dets.landmarks.shape == (6, 5, 2) and dets.landmarks.dtype == np.float32
    assert np.all(np.diff(dets.scores) <= 0), "detections must be sorted by score descending"
    # Every landmark lies inside its own box; eyes above the mouth, left eye left of the right eye.
    lo, hi = dets.boxes[:, None, :2], dets.boxes[:, None, 2:]
    assert np.all((dets.landmarks >= lo) & (dets.landmarks <= hi))
    assert np.all(dets.landmarks[:, 0, 0] < dets.landmarks[:, 1, 0])
    assert np.all(dets.landmarks[:, :2, 1].max(axis=1) < dets.landmarks[:, 3:, 1].min(axis=1))


@pytest.mark.parametrize("kind", KINDS)
def test_boxes_are_in_source_pixels(detectors: dict, group_photo: np.ndarray, kind: str) -> None:
    """Half-size copy of the photo, padded on the left and top: the same faces, mapped back."""
    h, w = group_photo.shape[:2]
    small = cv2.resize(group_photo, (w // 2, h // 2), interpolation=cv2.INTER_AREA)
    padded = cv2.copyMakeBorder(small, 40, 0, 100, 0, cv2.BORDER_CONSTANT, value=(0, 0, 0))
    full = detectors[kind].detect(group_photo)
    moved = detectors[kind].detect(padded)
    assert len(moved) == len(full) == 6
    mapped = (moved.boxes - np.array([100, 40, 100, 40], np.float32)) * 2
    for box in full.boxes:
        assert max(box_iou(box, m) for m in mapped) > 0.8


def test_every_identity_photo_has_a_face(identity_detections: dict) -> None:
    missing = [
        (name, kind)
        for name, by_kind in identity_detections.items()
        for kind, dets in by_kind.items()
        if len(dets) == 0
    ]
    assert len(identity_detections) == 61
    assert not missing


def test_detectors_agree_on_the_kept_face(identity_detections: dict) -> None:
    """The largest face of RetinaFace and SCRFD is the same face, with nearly the same five points."""
    for name, by_kind in identity_detections.items():
        rf, sc = by_kind["retinaface"], by_kind["scrfd"]
        i, j = select_face(rf, min_size=0), select_face(sc, min_size=0)
        assert box_iou(rf.boxes[i], sc.boxes[j]) > 0.7, name
        side = np.sqrt((sc.boxes[j, 2:] - sc.boxes[j, :2]).prod())
        mean_dist = np.linalg.norm(rf.landmarks[i] - sc.landmarks[j], axis=1).mean()
        assert mean_dist < 0.05 * side, f"{name}: landmarks differ by {mean_dist / side:.1%} of the box"


def test_retinaface_priors_match_hand_computed_layout(detectors: dict) -> None:
    priors = detectors["retinaface"].priors
    # 640 input: 80x80, 40x40, 20x20 cells with two anchors each.
    assert priors.shape == (2 * (80 * 80 + 40 * 40 + 20 * 20), 4)
    np.testing.assert_allclose(priors[:3], [[4, 4, 16, 16], [4, 4, 32, 32], [12, 4, 16, 16]])
    np.testing.assert_allclose(priors[2 * 80 * 80], [8, 8, 64, 64])
    np.testing.assert_allclose(priors[-1], [624, 624, 512, 512])


def test_sessions_are_single_threaded_by_default(detectors: dict) -> None:
    assert detectors["retinaface"].session.get_session_options().intra_op_num_threads == 1


def test_select_face_policies() -> None:
    dets = Detections(
        boxes=np.array([[0, 0, 30, 30], [0, 0, 100, 60], [0, 0, 200, 10]], np.float32),
        scores=np.array([0.99, 0.9, 0.8], np.float32),
        landmarks=np.zeros((3, 5, 2), np.float32),
    )
    assert select_face(dets, min_size=20) == 1  # box 2 is largest but only 10 px tall
    assert select_face(dets, min_size=20, policy="score") == 0
    assert select_face(dets, min_size=40, policy="score") == 1
    assert select_face(dets, min_size=61) is None
    assert select_face(Detections.empty(), min_size=0) is None
    with pytest.raises(ValueError, match="policy"):
        select_face(dets, min_size=0, policy="biggest")  # type: ignore[arg-type]


def test_blank_image_has_no_faces(detectors: dict) -> None:
    for det in detectors.values():
        for shape in [(300, 400, 3), (1, 2000, 3), (5, 5, 3)]:
            dets = det.detect(np.full(shape, 127, np.uint8))
            assert len(dets) == 0 and dets.landmarks.shape == (0, 5, 2)


def test_missing_model_names_path_and_env(tmp_path: Path) -> None:
    missing = tmp_path / "nope.onnx"
    for kind in KINDS:
        with pytest.raises(FileNotFoundError, match="FACEKIT_ASSETS") as err:
            create_detector(kind, missing)
        assert str(missing) in str(err.value)


def test_wrong_model_or_input_gives_clear_errors(assets: Path, detectors: dict) -> None:
    models = assets / "models"
    with pytest.raises(ValueError, match="SCRFD"):
        create_detector("scrfd", models / "retinaface_mbnet0.25.onnx")
    with pytest.raises(ValueError, match="RetinaFace"):
        RetinaFaceDetector(models / "scrfd_500m_bnkps.onnx")
    with pytest.raises(ValueError, match="unknown detector"):
        create_detector("yolo", models / "scrfd_500m_bnkps.onnx")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="multiple of 32"):
        create_detector("retinaface", models / "retinaface_mbnet0.25.onnx", input_size=100)
    for det in detectors.values():
        with pytest.raises(ValueError, match=r"\[H, W, 3\]"):
            det.detect(np.zeros((64, 64), np.uint8))
        with pytest.raises(ValueError, match="uint8"):
            det.detect(np.zeros((64, 64, 3), np.float32))


@pytest.mark.parametrize("kind", KINDS)
def test_tight_small_face_photos_are_found(detectors: dict, identity_detections: dict, assets: Path, kind: str) -> None:
    """92x112 greyscale face photos (the face fills the frame, as in ORL-style sets): at input 640 one pass
    upscales the face past the largest anchors and misses nearly all of them; the second, half-scale pass
    finds every face, with its box where the full photo's detection puts it."""
    folder = assets / "faces" / "deepface"
    found = 0
    for name, by_kind in identity_detections.items():
        x1, y1, x2, y2 = by_kind[kind].boxes[0]
        w = (x2 - x1) * 1.1
        h = w * 112 / 92
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        sx, sy = 92 / w, 112 / h
        to_crop = np.float32([[sx, 0, -(cx - w / 2) * sx], [0, sy, -(cy - h / 2) * sy]])
        crop = cv2.warpAffine(cv2.imread(str(folder / name)), to_crop, (92, 112))
        grey = cv2.cvtColor(cv2.cvtColor(crop, cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR)
        first_pass = detectors[kind]._detect(grey, 1.0)
        det = detectors[kind].detect(grey)
        if len(det) == 0:
            continue
        found += 1
        expected = np.array(
            [(x1 - cx + w / 2) * sx, (y1 - cy + h / 2) * sy, (x2 - cx + w / 2) * sx, (y2 - cy + h / 2) * sy]
        )
        assert box_iou(det.boxes[0], expected) > 0.6, name
        if len(first_pass):  # a face found in the first pass is kept as it is
            np.testing.assert_array_equal(det.boxes, first_pass.boxes)
    assert found == len(identity_detections), f"{kind}: {found} of {len(identity_detections)} tight crops found"
