"""Frozen-feature probes of a representation on labelled faces (the held-out people of a split).

Three views of how well embeddings ``[N, D]`` separate identities, none of which trains the embedding:

- :func:`~facekit.eval.knn.knn_identity_accuracy`: leave-one-out 1-NN top-1 (cosine);
- :func:`linear_probe_accuracy`: scikit-learn ``LogisticRegression`` on the L2-normalised features of half of
  each person's faces (:func:`half_split`, seeded), scored on the other half;
- :func:`pair_verification`: every same-person pair and as many different-person pairs (drawn, seeded, by
  :func:`~facekit.eval.identity_pairs.identity_pairs`), cosine scores → 10-fold accuracy and AUC
  (:func:`~facekit.eval.verification.verify`) and the TAR at the smallest FAR the pairs can measure,
  1 / #different pairs.

:func:`probe` returns all of them; :func:`spread` gives mean ± std over several embeddings (random inits).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import normalize

from facekit.eval.identity_pairs import identity_pairs
from facekit.eval.knn import knn_identity_accuracy
from facekit.eval.verification import verify

#: The metrics :func:`probe` returns, in table order.
METRICS = ("knn_top1", "linear_probe", "verification_accuracy", "verification_auc", "verification_tar")


def half_split(labels: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train rows, test rows) of ``labels`` ``[N]``: of each identity's n rows, a seeded shuffle puts
    ``n // 2`` in train and the rest in test (an identity needs 2 rows to be on both sides)."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for label in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == label))
        train.extend(rows[: len(rows) // 2])
        test.extend(rows[len(rows) // 2 :])
    return np.sort(np.array(train, int)), np.sort(np.array(test, int))


def linear_probe_accuracy(embeddings: np.ndarray, labels: np.ndarray, seed: int) -> float:
    """Top-1 accuracy on the test half (:func:`half_split`) of a logistic regression (scikit-learn defaults,
    ``max_iter`` 1000) fit on the train half of the L2-normalised ``embeddings`` ``[N, D]``."""
    x = normalize(np.asarray(embeddings, np.float64))
    train, test = half_split(np.asarray(labels), seed)
    if len(train) == 0 or len(test) == 0:
        raise ValueError("the linear probe needs an identity with at least two faces")
    model = LogisticRegression(max_iter=1000).fit(x[train], labels[train])
    return float((model.predict(x[test]) == labels[test]).mean())


def pair_verification(embeddings: np.ndarray, labels: np.ndarray, seed: int, folds: int = 10) -> dict[str, float]:
    """Verification on every same-identity pair of rows and as many different-identity pairs (seeded):
    ``{accuracy (10-fold), auc, tar (at far), far = 1 / #different, same_pairs, different_pairs}``."""
    identity_of = {f"{i:07d}": int(label) for i, label in enumerate(labels)}
    sizes = np.unique(np.asarray(labels), return_counts=True)[1]
    pairs = identity_pairs(identity_of, max_same=int((sizes * (sizes - 1) // 2).sum()), seed=seed)
    first = np.array([int(n) for n in pairs.first])
    second = np.array([int(n) for n in pairs.second])
    result = verify(embeddings[first], embeddings[second], pairs.issame, n_folds=folds)
    different = int((~pairs.issame).sum())
    far = 1.0 / different
    tar = float(result.tpr[np.searchsorted(result.fpr, far, side="right") - 1])
    return {
        "accuracy": result.accuracy,
        "auc": result.auc,
        "tar": tar,
        "far": far,
        "same_pairs": float(pairs.issame.sum()),
        "different_pairs": float(different),
    }


def probe(embeddings: np.ndarray, labels: Sequence[int] | np.ndarray, seed: int) -> dict[str, float]:
    """Every metric of :data:`METRICS` (and the pair counts and FAR) of ``embeddings`` ``[N, D]`` with
    identity ``labels`` ``[N]``."""
    x, y = np.asarray(embeddings, np.float64), np.asarray(labels)
    pairs = pair_verification(x, y, seed)
    return {
        "knn_top1": knn_identity_accuracy(x, y, k=1),
        "linear_probe": linear_probe_accuracy(x, y, seed),
        "verification_accuracy": pairs["accuracy"],
        "verification_auc": pairs["auc"],
        "verification_tar": pairs["tar"],
        "verification_far": pairs["far"],
        "same_pairs": pairs["same_pairs"],
        "different_pairs": pairs["different_pairs"],
    }


def spread(results: Sequence[dict[str, float]]) -> dict[str, dict[str, float]]:
    """``{metric: {mean, std, min, max}}`` over several :func:`probe` results (std: population, ddof 0)."""
    return {
        m: {
            "mean": float(np.mean([r[m] for r in results])),
            "std": float(np.std([r[m] for r in results])),
            "min": float(np.min([r[m] for r in results])),
            "max": float(np.max([r[m] for r in results])),
        }
        for m in METRICS
    }
