"""The downstream tasks' standard metrics: NME / FR / AUC (alignment), F1 (parsing), MAE (pose), accuracies."""

from __future__ import annotations

import numpy as np

NORMALISATIONS = ("inter_ocular", "inter_pupil", "box", "diagonal")


def nme(pred: np.ndarray, gt: np.ndarray, norm: str, layout: int, boxes: np.ndarray | None = None) -> np.ndarray:
    """Per-item normalised mean error ``(N,)`` of ``pred``/``gt`` ``(N, K, 2)``; ``boxes`` ``(N, 4)`` x0, y0, x1, y1."""
    raise NotImplementedError


def failure_rate(nmes: np.ndarray, threshold: float) -> float:
    """Fraction of items whose NME exceeds ``threshold``."""
    raise NotImplementedError


def ced_auc(nmes: np.ndarray, threshold: float) -> float:
    """Area under the cumulative error distribution on [0, threshold], normalised to 1."""
    raise NotImplementedError


def parsing_f1(pred: np.ndarray, gt: np.ndarray, num_classes: int) -> tuple[np.ndarray, float]:
    """Per-class F1 ``(C,)`` over the whole set (NaN for a class absent from both) and the mean without class 0."""
    raise NotImplementedError


def pose_mae(pred: np.ndarray, gt: np.ndarray, limit: float = 99.0) -> dict[str, float]:
    """Yaw / pitch / roll / mean absolute error in degrees of ``(N, 3)`` angles, wrapped; ``kept``, ``filtered``."""
    raise NotImplementedError


def classification_scores(pred: np.ndarray, gt: np.ndarray, num_classes: int) -> dict[str, float]:
    """``top1`` and ``mean_class_accuracy`` of ``(N,)`` class ids (a class with no gt item left out of the mean)."""
    raise NotImplementedError


def attribute_accuracy(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, float]:
    """Per-attribute accuracy ``(A,)`` of ``(N, A)`` binary predictions and its mean."""
    raise NotImplementedError
