"""The downstream metrics against hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest

from facekit.eval.downstream_metrics import (
    attribute_accuracy,
    ced_auc,
    classification_scores,
    failure_rate,
    nme,
    parsing_f1,
    pose_mae,
)

#: layout -> (outer eye corners, pupil points), written out from each benchmark's point chart.
EYES = {98: ((60, 72), (96, 97)), 19: ((6, 11), (7, 10)), 29: ((8, 9), (16, 17)), 106: ((66, 79), (104, 105))}


def _faces(count: int, points: int) -> np.ndarray:
    """Ground truth far from the eye points (so a wrong eye index changes the length)."""
    return np.random.default_rng(0).uniform(200, 400, size=(count, points, 2))


def _shifted(gt: np.ndarray) -> np.ndarray:
    """A prediction 5 px off every point (a 3-4-5 triangle)."""
    return gt + np.array([3.0, 4.0])


def test_nme_300w_inter_ocular_and_inter_pupil() -> None:
    gt = _faces(1, 68)
    gt[0, 36:42] = [(10, 20), (15, 15), (25, 15), (30, 20), (25, 25), (15, 25)]  # left eye, centre (20, 20)
    gt[0, 42:48] = [(50, 20), (55, 15), (65, 15), (70, 20), (65, 25), (55, 25)]  # right eye, centre (60, 20)
    pred = _shifted(gt)
    assert nme(pred, gt, "inter_ocular", 68) == pytest.approx([5 / 60])  # corners 36 (10, 20) and 45 (70, 20)
    assert nme(pred, gt, "inter_pupil", 68) == pytest.approx([5 / 40])


@pytest.mark.parametrize("layout", sorted(EYES))
def test_nme_eye_points_of_each_layout(layout: int) -> None:
    (left_corner, right_corner), (left_pupil, right_pupil) = EYES[layout]
    gt = _faces(1, layout)
    gt[0, left_corner], gt[0, right_corner] = (0, 0), (100, 0)
    gt[0, left_pupil], gt[0, right_pupil] = (20, 0), (70, 0)
    pred = _shifted(gt)
    assert nme(pred, gt, "inter_ocular", layout) == pytest.approx([0.05])
    assert nme(pred, gt, "inter_pupil", layout) == pytest.approx([0.1])


def test_nme_box_and_diagonal() -> None:
    gt = _faces(2, 19)
    pred = _shifted(gt)
    boxes = np.array([[0, 0, 30, 40], [10, 10, 50, 20]], dtype=np.float64)
    assert nme(pred, gt, "box", 19, boxes) == pytest.approx([5 / np.sqrt(1200), 5 / 20])
    assert nme(pred, gt, "diagonal", 19, boxes) == pytest.approx([5 / 50, 5 / np.hypot(40, 10)])


def test_nme_box_defaults_to_the_landmarks_box() -> None:
    gt = np.array([[[0, 0], [40, 10], [20, 90]]], dtype=np.float64)  # box 40 x 90: sqrt = 60, diagonal = 98.49
    pred = _shifted(gt)
    assert nme(pred, gt, "box", 3) == pytest.approx([5 / 60])
    assert nme(pred, gt, "diagonal", 3) == pytest.approx([5 / np.hypot(40, 90)])


def test_nme_rejects_a_layout_mismatch_and_unknown_norm() -> None:
    gt = _faces(1, 68)
    with pytest.raises(ValueError, match="layout 98"):
        nme(gt, gt, "inter_ocular", 98)
    with pytest.raises(ValueError, match="norm 'ocular'"):
        nme(gt, gt, "ocular", 68)


def test_failure_rate_and_auc_at_8_and_10_percent() -> None:
    errors = np.array([0.02, 0.04, 0.08, 0.09, 0.2])
    assert failure_rate(errors, 0.08) == pytest.approx(2 / 5)  # an error of exactly 0.08 is no failure
    assert failure_rate(errors, 0.10) == pytest.approx(1 / 5)
    assert ced_auc(errors, 0.08) == pytest.approx((0.06 + 0.04) / 5 / 0.08)
    assert ced_auc(errors, 0.10) == pytest.approx((0.08 + 0.06 + 0.02 + 0.01) / 5 / 0.10)
    grid = np.linspace(0, 0.10, 100001)  # the area under the sampled curve agrees with the exact one
    curve = (errors[None, :] <= grid[:, None]).mean(axis=1)
    assert ced_auc(errors, 0.10) == pytest.approx(np.trapezoid(curve, grid) / 0.10, abs=1e-4)
    assert ced_auc(np.zeros(3), 0.08) == 1.0 and ced_auc(np.full(3, 0.5), 0.08) == 0.0


def test_parsing_f1_with_a_class_absent_from_both() -> None:
    gt = np.array([[[0, 1, 1, 2]]])
    pred = np.array([[[0, 1, 2, 2]]])
    per_class, mean = parsing_f1(pred, gt, num_classes=4)
    # class 1: TP 1, FN 1 -> 2/3; class 2: TP 1, FP 1 -> 2/3; class 3 in neither -> NaN, out of the mean
    np.testing.assert_allclose(per_class[:3], [1.0, 2 / 3, 2 / 3])
    assert np.isnan(per_class[3])
    assert mean == pytest.approx(2 / 3)  # the background's 1.0 is not in it


def test_parsing_f1_accumulates_over_the_set() -> None:
    gt = np.zeros((2, 10, 10), dtype=np.uint8)
    gt[0, :, :] = 1  # 100 pixels of class 1, all found
    gt[1, 0, 0] = 1  # 1 pixel of class 1, missed
    pred = gt.copy()
    pred[1, 0, 0] = 0
    per_class, mean = parsing_f1(pred, gt, num_classes=2)
    assert per_class[1] == pytest.approx(200 / 201)  # per-image averaging would give 0.5
    assert mean == pytest.approx(200 / 201)


def test_pose_mae_wraps_angle_differences() -> None:
    gt = np.array([[179.0, -170.0, 0.0]])
    pred = np.array([[-179.0, 175.0, -1.0]])
    scores = pose_mae(pred, gt, limit=180.0)
    assert (scores["yaw"], scores["pitch"], scores["roll"]) == pytest.approx((2, 15, 1))  # 179 vs -179 is 2 degrees
    assert scores["mean"] == pytest.approx(6)


def test_pose_mae_filters_items_beyond_99_degrees() -> None:
    gt = np.array([[20.0, 10.0, -20.0], [30.0, -99.0, 0.0], [120.0, 0.0, 0.0], [0.0, 0.0, -99.5]])
    pred = np.array([[22.0, 13.0, -10.0], [32.0, -90.0, 4.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    scores = pose_mae(pred, gt)
    assert scores["yaw"] == pytest.approx((2 + 2) / 2)
    assert scores["pitch"] == pytest.approx((3 + 9) / 2)  # -99 is kept; the yaw-120 and roll -99.5 items are not
    assert scores["roll"] == pytest.approx((10 + 4) / 2)
    assert scores["mean"] == pytest.approx((2 + 6 + 7) / 3)
    assert (scores["kept"], scores["filtered"]) == (2, 2)
    assert pose_mae(pred, gt, limit=180.0)["yaw"] == pytest.approx((2 + 2 + 120 + 0) / 4)


def test_classification_scores_leave_an_empty_class_out() -> None:
    gt = np.array([0, 0, 1, 1, 1, 2])  # class 3 has no item
    pred = np.array([0, 1, 1, 1, 0, 3])
    scores = classification_scores(pred, gt, num_classes=4)
    assert scores["top1"] == pytest.approx(3 / 6)
    assert scores["mean_class_accuracy"] == pytest.approx((1 / 2 + 2 / 3 + 0) / 3)


def test_attribute_accuracy_per_attribute_and_mean() -> None:
    gt = np.array([[1, 0, 1], [0, 0, 1]], dtype=np.int8)
    pred = np.array([[1, 1, 1], [1, 0, 1]], dtype=np.int8)
    per_attribute, mean = attribute_accuracy(pred, gt)
    np.testing.assert_allclose(per_attribute, [0.5, 0.5, 1.0])
    assert mean == pytest.approx(2 / 3)
