"""Pair verification (LFW-style): cosine scores, 10-fold accuracy, ROC and TAR at fixed FAR.

A pair is predicted "same" when its cosine similarity is >= the threshold. For each fold
(``sklearn.model_selection.KFold``, no shuffle, as in the LFW protocol) the threshold maximising accuracy
on the other folds is applied to the held-out fold.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve
from sklearn.model_selection import KFold

#: False-accept rates at which the true-accept rate is reported (when the negatives allow it).
FAR_LEVELS = (1e-4, 1e-3, 1e-2, 1e-1)


def far_key(far: float) -> str:
    """Metric name of a TAR: ``1e-4 -> "tar_at_far_1e-4"``."""
    mantissa, exponent = f"{far:.0e}".split("e")
    return f"tar_at_far_{mantissa}e{int(exponent)}"


@dataclass(frozen=True)
class VerificationResult:
    """Verification metrics on P pairs.

    accuracy, accuracy_std: mean / std of the held-out fold accuracies.
    threshold:              mean over folds of the chosen cosine threshold.
    best_threshold_accuracy: accuracy of the single best threshold chosen on all pairs (optimistic).
    tar_at_far:             FAR -> TAR for each level in ``FAR_LEVELS`` with at least one negative pair
                            per 1/FAR (e.g. FAR 1e-3 needs >= 1000 different-identity pairs).
    fpr, tpr:               [T] float64 ROC curve (``sklearn.metrics.roc_curve``).
    auc:                    area under the ROC curve.
    """

    accuracy: float
    accuracy_std: float
    threshold: float
    best_threshold_accuracy: float
    tar_at_far: dict[float, float]
    fpr: np.ndarray
    tpr: np.ndarray
    auc: float


def cosine_scores(emb_a: np.ndarray, emb_b: np.ndarray) -> np.ndarray:
    """Cosine similarity of each row pair: emb_a, emb_b [P, D] -> [P] float64 (need not be normalised)."""
    a = np.asarray(emb_a, dtype=np.float64)
    b = np.asarray(emb_b, dtype=np.float64)
    if a.ndim != 2 or a.shape != b.shape:
        raise ValueError(f"embeddings must both be [P, D] with the same shape, got {a.shape} and {b.shape}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("embeddings contain NaN or infinite values")
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return np.einsum("pd,pd->p", a, b) / np.maximum(norms, 1e-12)


def best_threshold(scores: np.ndarray, issame: np.ndarray) -> tuple[float, float]:
    """Threshold maximising accuracy of ``scores >= t`` on these pairs, and that accuracy.

    scores: [P] float, issame: [P] bool. The threshold is the midpoint between the two scores at the
    best cut (or just outside the score range when everything is accepted or rejected).
    """
    order = np.argsort(-scores, kind="stable")
    s, y = scores[order], issame[order]
    # Accepting the top k pairs (k = 0..P): true accepts among them + true rejects among the rest.
    true_accepts = np.concatenate([[0], np.cumsum(y)])
    false_accepts = np.arange(len(s) + 1) - true_accepts
    correct = true_accepts + ((~y).sum() - false_accepts)
    # Only cuts between two distinct scores are realisable by a threshold.
    valid = np.concatenate([[True], s[:-1] > s[1:], [True]])
    k = int(np.argmax(np.where(valid, correct, -1)))
    if k == 0:
        thr = s[0] + 1e-6
    elif k == len(s):
        thr = s[-1] - 1e-6
    else:
        thr = (s[k - 1] + s[k]) / 2
    return float(thr), float(correct[k] / len(s))


def verify(emb_a: np.ndarray, emb_b: np.ndarray, issame: np.ndarray, n_folds: int = 10) -> VerificationResult:
    """Verification metrics of pairs (emb_a[i], emb_b[i]) with labels issame [P] bool; emb_* [P, D]."""
    scores = cosine_scores(emb_a, emb_b)
    labels = np.asarray(issame)
    if labels.shape != scores.shape:
        raise ValueError(f"issame must have shape [{scores.shape[0]}], got {labels.shape}")
    labels = labels.astype(bool)
    n_same = int(labels.sum())
    if n_same == 0 or n_same == labels.size:
        raise ValueError("verification needs both same-identity and different-identity pairs")
    if not 2 <= n_folds <= labels.size:
        raise ValueError(f"n_folds must be between 2 and the number of pairs ({labels.size}), got {n_folds}")

    fold_acc, fold_thr = [], []
    for train, test in KFold(n_splits=n_folds, shuffle=False).split(scores):
        thr, _ = best_threshold(scores[train], labels[train])
        fold_thr.append(thr)
        fold_acc.append(float(np.mean((scores[test] >= thr) == labels[test])))

    fpr, tpr, _ = roc_curve(labels, scores)
    n_diff = labels.size - n_same
    tar_at_far = {
        far: float(tpr[np.searchsorted(fpr, far, side="right") - 1]) for far in FAR_LEVELS if far * n_diff >= 1
    }
    return VerificationResult(
        accuracy=float(np.mean(fold_acc)),
        accuracy_std=float(np.std(fold_acc)),
        threshold=float(np.mean(fold_thr)),
        best_threshold_accuracy=best_threshold(scores, labels)[1],
        tar_at_far=tar_at_far,
        fpr=fpr,
        tpr=tpr,
        auc=float(roc_auc_score(labels, scores)),
    )
