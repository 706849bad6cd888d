"""Five-point alignment: parity with insightface's ``norm_crop`` on real SCRFD landmarks."""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np
import pytest
from insightface.utils import face_align

from facekit.data.ops.align import (
    ARCFACE_TEMPLATE,
    align_face,
    alignment_template,
    estimate_similarity,
    transform_points,
)
from facekit.data.ops.detect import create_detector, select_face


@pytest.fixture(scope="module")
def photos_with_landmarks(assets: Path) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(file, BGR image, SCRFD landmarks [5, 2] of the largest face) for every deepface identity photo."""
    folder = assets / "faces" / "deepface"
    detector = create_detector("scrfd", assets / "models" / "scrfd_500m_bnkps.onnx")
    with open(folder / "identities.csv") as f:
        files = [row["file"] for row in csv.DictReader(f)]
    out = []
    for name in files:
        img = cv2.imread(str(folder / name))
        dets = detector.detect(img)
        out.append((name, img, dets.landmarks[select_face(dets, min_size=0)]))
    return out


def similarity_params(angle_deg: float, scale: float, shift: tuple[float, float]) -> np.ndarray:
    """[2, 3] rotation by angle_deg, uniform scale, then translation."""
    a = np.deg2rad(angle_deg)
    rot = scale * np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    return np.hstack([rot, np.array(shift)[:, None]])


def test_template_is_insightface_arcface() -> None:
    assert ARCFACE_TEMPLATE.shape == (5, 2) and ARCFACE_TEMPLATE.dtype == np.float32
    np.testing.assert_array_equal(alignment_template(112, 1.0), face_align.arcface_dst)


def test_template_scaling_and_margin() -> None:
    # 224 with the full frame is insightface's own 224 template: arcface_dst * 2.
    np.testing.assert_allclose(alignment_template(224), face_align.arcface_dst * 2, atol=1e-4)
    # 224 at 75%: (38.2946 - 56) * 1.5 + 112 = 85.4419 for the left eye x.
    t = alignment_template(224, 0.75)
    assert t[0, 0] == pytest.approx(85.4419, abs=1e-4)
    np.testing.assert_allclose(t.mean(axis=0), (ARCFACE_TEMPLATE.mean(axis=0) - 56) * 1.5 + 112, atol=1e-4)
    with pytest.raises(ValueError):
        alignment_template(112, 0.0)


@pytest.mark.filterwarnings("ignore:`estimate` is deprecated:FutureWarning")  # inside insightface
def test_align_matches_insightface_norm_crop(photos_with_landmarks: list) -> None:
    for name, img, lmk in photos_with_landmarks:
        crop, M = align_face(img, lmk, size=112)
        ref = face_align.norm_crop(img, lmk, image_size=112)
        assert crop.shape == (112, 112, 3) and crop.dtype == np.uint8
        mad = np.abs(crop.astype(np.float32) - ref.astype(np.float32)).mean()
        assert mad <= 1.0, f"{name}: mean abs difference {mad:.2f} grey levels"
        np.testing.assert_allclose(M, face_align.estimate_norm(lmk, 112), rtol=1e-4, atol=1e-4)


def test_landmarks_land_on_the_template(photos_with_landmarks: list) -> None:
    """Least squares puts the landmark centroid exactly on the template's, the points within a few px."""
    for name, img, lmk in photos_with_landmarks:
        _, M = align_face(img, lmk)
        mapped = transform_points(lmk, M)
        np.testing.assert_allclose(mapped.mean(axis=0), ARCFACE_TEMPLATE.mean(axis=0), atol=0.01)
        residual = np.linalg.norm(mapped - ARCFACE_TEMPLATE, axis=1).mean()
        assert residual < 6.0, f"{name}: landmarks {residual:.1f} px from the template on average"


def test_exact_similarity_is_recovered() -> None:
    """Landmarks that are a rotated/scaled/shifted template come back onto the template within 2 px."""
    truth = similarity_params(25.0, 3.0, (400.0, 120.0))
    lmk = transform_points(ARCFACE_TEMPLATE, truth)
    template = alignment_template(224, 0.75)
    M = estimate_similarity(lmk, template)
    np.testing.assert_allclose(transform_points(lmk, M), template, atol=1e-3)
    # M inverts `truth` composed with the 224/0.75 scaling: its scale is 1.5 / 3.
    assert np.sqrt(abs(np.linalg.det(M[:, :2]))) == pytest.approx(0.5, rel=1e-5)
    np.testing.assert_allclose(transform_points(lmk, M), cv2.transform(lmk[None], M)[0], atol=1e-3)


def test_crop_shows_the_warped_content() -> None:
    """A white square drawn around the template's nose appears at the nose in the crop."""
    truth = similarity_params(-10.0, 2.0, (150.0, 80.0))
    img = np.zeros((480, 640, 3), np.uint8)
    nose = transform_points(ARCFACE_TEMPLATE[2:3], truth)[0]
    cv2.circle(img, (round(nose[0]), round(nose[1])), 12, (255, 255, 255), -1)
    crop, _ = align_face(img, transform_points(ARCFACE_TEMPLATE, truth), size=224, face_fraction=0.75)
    assert crop.shape == (224, 224, 3)
    ys, xs = np.nonzero(crop[:, :, 0] > 127)
    np.testing.assert_allclose([xs.mean(), ys.mean()], alignment_template(224, 0.75)[2], atol=1.0)


def test_bad_landmarks_give_clear_errors() -> None:
    img = np.zeros((100, 100, 3), np.uint8)
    with pytest.raises(ValueError, match=r"\[5, 2\]"):
        align_face(img, np.zeros((4, 2), np.float32))
    with pytest.raises(ValueError, match="degenerate"):
        align_face(img, np.full((5, 2), 50.0, np.float32))
    with pytest.raises(ValueError, match="NaN"):
        align_face(img, np.full((5, 2), np.nan, np.float32))
    with pytest.raises(ValueError, match="uint8"):
        align_face(img.astype(np.float32), ARCFACE_TEMPLATE)
    with pytest.raises(ValueError, match=r"\[2, 3\]"):
        transform_points(ARCFACE_TEMPLATE, np.eye(3))
