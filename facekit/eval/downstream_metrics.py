"""The downstream tasks' standard metrics: NME / FR / AUC (alignment), F1 (parsing), MAE (pose), accuracies.

Landmark layouts are named by their point count: 68 (300W, 300-VW, AFLW2000-3D), 98 (WFLW), 19 (AFLW-19), 29 (COFW),
106 (LaPa). Their eye points (0-based): outer eye corners 36/45, 60/72, 6/11, 8/9, 66/79 (the pairs mmpose and HRNet
normalise by); pupils the centre of points 36-41 / 42-47 for 68 (the layout has no pupil point), else 96/97, 7/10,
16/17, 104/105.
"""

from __future__ import annotations

import numpy as np

NORMALISATIONS = ("inter_ocular", "inter_pupil", "box", "diagonal")
#: layout -> (left, right) outer eye corner.
EYE_CORNERS: dict[int, tuple[int, int]] = {68: (36, 45), 98: (60, 72), 19: (6, 11), 29: (8, 9), 106: (66, 79)}
#: layout -> (left, right) points whose centre is the pupil.
PUPILS: dict[int, tuple[tuple[int, ...], tuple[int, ...]]] = {
    68: (tuple(range(36, 42)), tuple(range(42, 48))),
    98: ((96,), (97,)),
    19: ((7,), (10,)),
    29: ((16,), (17,)),
    106: ((104,), (105,)),
}


def landmark_boxes(points: np.ndarray) -> np.ndarray:
    """The tight boxes ``(N, 4)`` x0, y0, x1, y1 of landmarks ``(N, K, 2)``."""
    return np.concatenate([points.min(axis=1), points.max(axis=1)], axis=1)


def nme(pred: np.ndarray, gt: np.ndarray, norm: str, layout: int, boxes: np.ndarray | None = None) -> np.ndarray:
    """Per-item normalised mean error ``(N,)``: the mean point-to-point distance of ``pred`` and ``gt`` ``(N, K, 2)``
    over a length per item.

    ``norm``: ``inter_ocular`` (outer eye corners), ``inter_pupil`` (eye centres), ``box`` (sqrt(w * h)) or
    ``diagonal`` (sqrt(w² + h²), AFLW-19's NME_diag) of ``boxes`` ``(N, 4)`` x0, y0, x1, y1, by default the tight
    box of the ground-truth landmarks. ``layout``: the point count K naming the eye indices.
    """
    pred, gt = np.asarray(pred, dtype=np.float64), np.asarray(gt, dtype=np.float64)
    if pred.shape != gt.shape or gt.ndim != 3 or gt.shape[2] != 2:
        raise ValueError(f"pred {pred.shape} and gt {gt.shape} must both be (N, K, 2)")
    if norm not in NORMALISATIONS:
        raise ValueError(f"norm {norm!r} is not one of {', '.join(NORMALISATIONS)}")
    if norm in ("inter_ocular", "inter_pupil"):
        if layout not in EYE_CORNERS:
            raise ValueError(f"layout {layout} has no known eye points (known: {sorted(EYE_CORNERS)})")
        if gt.shape[1] != layout:
            raise ValueError(f"layout {layout} needs {layout} points, got {gt.shape[1]}")
        if norm == "inter_ocular":
            left, right = EYE_CORNERS[layout]
            length = np.linalg.norm(gt[:, left] - gt[:, right], axis=1)
        else:
            left_points, right_points = PUPILS[layout]
            left_eye = gt[:, list(left_points)].mean(axis=1)
            right_eye = gt[:, list(right_points)].mean(axis=1)
            length = np.linalg.norm(left_eye - right_eye, axis=1)
    else:
        boxes = landmark_boxes(gt) if boxes is None else np.asarray(boxes, dtype=np.float64)
        if boxes.shape != (gt.shape[0], 4):
            raise ValueError(f"boxes {boxes.shape} must be ({gt.shape[0]}, 4)")
        width, height = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
        length = np.sqrt(width * height) if norm == "box" else np.hypot(width, height)
    if np.any(length <= 0):
        raise ValueError(f"{norm} length is not positive for items {np.flatnonzero(length <= 0).tolist()}")
    return np.linalg.norm(pred - gt, axis=2).mean(axis=1) / length


def failure_rate(nmes: np.ndarray, threshold: float) -> float:
    """Fraction of items whose NME exceeds ``threshold`` (e.g. 0.08 or 0.10)."""
    return float(np.mean(np.asarray(nmes) > threshold))


def ced_auc(nmes: np.ndarray, threshold: float) -> float:
    """Area under the cumulative error distribution on [0, threshold], normalised to 1.

    Computed exactly: an item of error e adds (threshold - e) / threshold where e < threshold (the area under its
    step), so a perfect set scores 1 and a set failing everywhere 0.
    """
    nmes = np.asarray(nmes, dtype=np.float64)
    return float(np.mean(np.clip(threshold - nmes, 0.0, None)) / threshold)


def parsing_f1(pred: np.ndarray, gt: np.ndarray, num_classes: int) -> tuple[np.ndarray, float]:
    """Per-class F1 ``(C,)`` of class maps ``pred``/``gt`` (any equal shapes, e.g. (N, H, W)) accumulated over the
    whole set, as FaRL reports it, and the mean over classes 1.. (background excluded).

    A class absent from both ``pred`` and ``gt`` has F1 NaN and stays out of the mean.
    """
    pred, gt = np.asarray(pred).ravel().astype(np.int64), np.asarray(gt).ravel().astype(np.int64)
    if pred.shape != gt.shape:
        raise ValueError(f"pred and gt hold {pred.size} and {gt.size} pixels")
    for name, values in (("pred", pred), ("gt", gt)):
        if values.size and (values.min() < 0 or values.max() >= num_classes):
            raise ValueError(f"{name} holds class ids outside 0..{num_classes - 1}")
    confusion = np.bincount(gt * num_classes + pred, minlength=num_classes**2).reshape(num_classes, num_classes)
    true_positive = np.diag(confusion).astype(np.float64)
    denominator = confusion.sum(axis=0) + confusion.sum(axis=1)  # 2 TP + FP + FN
    with np.errstate(invalid="ignore", divide="ignore"):
        per_class = np.where(denominator > 0, 2 * true_positive / denominator, np.nan)
    foreground = per_class[1:]
    mean = float(np.nanmean(foreground)) if np.any(~np.isnan(foreground)) else float("nan")
    return per_class, mean


def pose_mae(pred: np.ndarray, gt: np.ndarray, limit: float = 99.0) -> dict[str, float]:
    """Mean absolute error in degrees of ``(N, 3)`` (yaw, pitch, roll) angles, each difference wrapped into
    [-180, 180) (179 vs -179 is 2 degrees).

    Items whose ground truth has any angle beyond ±``limit`` are left out (the usual AFLW2000-3D filter); the dict
    holds ``yaw``, ``pitch``, ``roll``, ``mean``, and the ``kept`` and ``filtered`` item counts.
    """
    pred, gt = np.asarray(pred, dtype=np.float64), np.asarray(gt, dtype=np.float64)
    if pred.shape != gt.shape or gt.ndim != 2 or gt.shape[1] != 3:
        raise ValueError(f"pred {pred.shape} and gt {gt.shape} must both be (N, 3)")
    keep = np.all(np.abs(gt) <= limit, axis=1)
    if not keep.any():
        raise ValueError(f"no item has every ground-truth angle within ±{limit}")
    error = np.abs((pred[keep] - gt[keep] + 180.0) % 360.0 - 180.0).mean(axis=0)
    return {
        "yaw": float(error[0]),
        "pitch": float(error[1]),
        "roll": float(error[2]),
        "mean": float(error.mean()),
        "kept": int(keep.sum()),
        "filtered": int((~keep).sum()),
    }


def classification_scores(pred: np.ndarray, gt: np.ndarray, num_classes: int) -> dict[str, float]:
    """``top1`` and ``mean_class_accuracy`` (the mean recall of the classes that have gt items; a class with none is
    left out, not counted as 0) of ``(N,)`` class ids."""
    pred, gt = np.asarray(pred, dtype=np.int64), np.asarray(gt, dtype=np.int64)
    if pred.shape != gt.shape or gt.ndim != 1 or gt.size == 0:
        raise ValueError(f"pred {pred.shape} and gt {gt.shape} must both be (N,) with N > 0")
    if gt.min() < 0 or gt.max() >= num_classes:
        raise ValueError(f"gt holds class ids outside 0..{num_classes - 1}")
    correct = pred == gt
    per_class_total = np.bincount(gt, minlength=num_classes)
    per_class_correct = np.bincount(gt[correct], minlength=num_classes)
    present = per_class_total > 0
    return {
        "top1": float(correct.mean()),
        "mean_class_accuracy": float(np.mean(per_class_correct[present] / per_class_total[present])),
    }


def attribute_accuracy(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, float]:
    """Per-attribute accuracy ``(A,)`` of ``(N, A)`` binary predictions and its mean (CelebA / LFWA's score)."""
    pred, gt = np.asarray(pred), np.asarray(gt)
    if pred.shape != gt.shape or gt.ndim != 2:
        raise ValueError(f"pred {pred.shape} and gt {gt.shape} must both be (N, A)")
    per_attribute = (pred.astype(bool) == gt.astype(bool)).mean(axis=0)
    return per_attribute, float(per_attribute.mean())
