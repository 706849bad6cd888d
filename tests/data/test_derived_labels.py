"""Derived downstream labels on hand-checkable synthetic meshes: head pose, parsing regions, alignment points,
the geometric proxies and the identity split."""

from __future__ import annotations

import numpy as np
import pytest

from facekit.data.downstream import derived
from facekit.data.ops.landmarks import LEFT_EYE, MESH_68, NOSE_TIP, RIGHT_EYE


def _ring(center: tuple[float, float], radii: tuple[float, float], n: int) -> np.ndarray:
    angle = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.stack([center[0] + radii[0] * np.cos(angle), center[1] + radii[1] * np.sin(angle)], 1)


def synthetic_mesh() -> np.ndarray:
    """A 112 px face [468, 2]: oval centred (56, 60), brows at y 35, eyes at (38, 48) / (74, 48), nose around
    (56, 65), mouth at (56, 88); the other vertices sit at the nose."""
    xy = np.tile([56.0, 65.0], (468, 1))
    xy[derived.FACE_OVAL] = _ring((56, 60), (40, 50), len(derived.FACE_OVAL))
    xy[derived.FOREHEAD], xy[derived.CHIN] = (56, 10), (56, 110)
    upper, lower = np.linspace(28, 44, 5), np.linspace(44, 28, 5)
    left_brow = np.concatenate([np.stack([upper, np.full(5, 32)], 1), np.stack([lower, np.full(5, 38)], 1)])
    xy[derived.LEFT_BROW] = left_brow
    xy[derived.RIGHT_BROW] = np.stack([112 - left_brow[:, 0], left_brow[:, 1]], 1)
    xy[LEFT_EYE] = _ring((38, 48), (8, 4), 16)
    xy[RIGHT_EYE] = _ring((74, 48), (8, 4), 16)
    xy[derived.NOSE] = _ring((56, 65), (6, 7), len(derived.NOSE))
    xy[derived.LIPS_OUTER] = _ring((56, 88), (14, 5), len(derived.LIPS_OUTER))
    return xy


def synthetic_mesh_3d() -> np.ndarray:
    """The synthetic mesh on a dome (z < 0 is nearer the camera), its nose tip 40 px nearer: a frontal face
    whose eyes are level and at one depth, and whose forehead and chin are at one depth."""
    xy = synthetic_mesh()
    u, v = (xy[:, 0] - 56) / 45, (xy[:, 1] - 60) / 55
    z = -30 * np.sqrt(np.clip(1 - u**2 - v**2, 0, None))
    points = np.concatenate([xy, z[:, None]], 1)
    points[NOSE_TIP] = (56, 62, -40)
    return points


def _yaw(deg: float) -> np.ndarray:
    c, s = np.cos(np.radians(deg)), np.sin(np.radians(deg))
    return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])  # about +y (image down), right-handed


def _pitch(deg: float) -> np.ndarray:
    c, s = np.cos(np.radians(deg)), np.sin(np.radians(deg))
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])


def _roll(deg: float) -> np.ndarray:
    c, s = np.cos(np.radians(deg)), np.sin(np.radians(deg))
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


def _rotated(rotation: np.ndarray) -> np.ndarray:
    mesh = synthetic_mesh_3d()
    centre = mesh.mean(0)
    return (mesh - centre) @ rotation.T + centre


def test_a_frontal_mesh_has_zero_pose() -> None:
    canonical = derived.canonical_face(synthetic_mesh_3d()[None])
    np.testing.assert_allclose(derived.head_pose(synthetic_mesh_3d(), canonical), 0, atol=1e-3)


def test_a_mesh_turned_by_a_known_yaw_gives_that_yaw_and_its_sign() -> None:
    canonical = derived.canonical_face(synthetic_mesh_3d()[None])
    turned = _rotated(_yaw(20))
    np.testing.assert_allclose(derived.head_pose(turned, canonical), [20, 0, 0], atol=1e-3)
    eyes_mid = (turned[LEFT_EYE, 0].mean() + turned[RIGHT_EYE, 0].mean()) / 2
    assert turned[NOSE_TIP, 0] < eyes_mid - 3  # yaw > 0: the nose moved to the image's left, as documented


def test_pitch_and_roll_and_their_composition() -> None:
    canonical = derived.canonical_face(synthetic_mesh_3d()[None])
    np.testing.assert_allclose(derived.head_pose(_rotated(_pitch(15)), canonical), [0, 15, 0], atol=1e-3)
    np.testing.assert_allclose(derived.head_pose(_rotated(_roll(-10)), canonical), [0, 0, -10], atol=1e-3)
    combined = _roll(5) @ _yaw(-25) @ _pitch(10)
    np.testing.assert_allclose(derived.head_pose(_rotated(combined), canonical), [-25, 10, 5], atol=1e-3)
    assert _rotated(_pitch(15))[NOSE_TIP, 1] > synthetic_mesh_3d()[NOSE_TIP, 1]  # pitch > 0: nose down


def test_the_canonical_face_of_turned_copies_is_frontal() -> None:
    meshes = np.stack([_rotated(_yaw(a) @ _pitch(-a / 2)) for a in (-20, -5, 10, 30)])
    canonical = derived.canonical_face(meshes)
    np.testing.assert_allclose(derived.head_pose(synthetic_mesh_3d(), canonical), 0, atol=1e-3)
    with pytest.raises(ValueError, match="3-D mesh"):
        derived.head_pose(synthetic_mesh(), canonical)


def test_parsing_regions_of_a_synthetic_mesh() -> None:
    mask = derived.parsing_mask(synthetic_mesh(), 112)
    assert mask.shape == (112, 112) and mask.dtype == np.uint8
    names = derived.PARSING_CLASSES
    expected = {
        (5, 5): "background",
        (56, 75): "skin",
        (36, 35): "brows",
        (76, 35): "brows",
        (38, 48): "eyes",
        (74, 48): "eyes",
        (56, 65): "nose",
        (56, 88): "mouth",
        (100, 108): "background",
    }
    for (x, y), name in expected.items():
        assert names[mask[y, x]] == name, (x, y)
    area = np.bincount(mask.ravel(), minlength=len(names))
    assert area[names.index("eyes")] == pytest.approx(2 * np.pi * 8 * 4, rel=0.3)
    assert area[names.index("brows")] == pytest.approx(2 * 16 * 6, rel=0.35)


def test_alignment_target_is_the_68_point_subset() -> None:
    mesh = synthetic_mesh() + np.arange(468)[:, None] * 0.01
    target = derived.alignment_target(mesh.astype(np.float16))
    assert target.shape == (68, 2) and target.dtype == np.float32
    np.testing.assert_allclose(target, mesh[MESH_68], atol=0.05)


def test_proxy_labels_split_at_the_median() -> None:
    base = synthetic_mesh()
    meshes = []
    for opening in (0.0, 1.0, 6.0, 8.0):
        mesh = base.copy()
        mesh[derived.INNER_LIP_TOP] = (56, 88 - opening / 2)
        mesh[derived.INNER_LIP_BOTTOM] = (56, 88 + opening / 2)
        meshes.append(mesh)
    expression, attributes = derived.proxy_labels(np.stack(meshes))
    assert attributes.shape == (4, len(derived.DERIVED_ATTRIBUTES)) and attributes.dtype == np.int8
    assert attributes[:, 0].tolist() == [0, 0, 1, 1]  # mouth_open
    assert set(expression.tolist()) <= {0, 1, 2, 3} and (expression >= 2).tolist() == [False, False, True, True]


def test_identity_split_is_stable_and_mostly_train() -> None:
    splits = [derived.identity_split(f"person_{i}") for i in range(400)]
    assert splits == [derived.identity_split(f"person_{i}") for i in range(400)]
    share = {s: splits.count(s) / len(splits) for s in derived.SPLITS}
    assert 0.7 < share["train"] < 0.9 and 0.05 < share["test"] < 0.15
