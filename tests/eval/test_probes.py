"""The frozen-feature probes against values computed by hand."""

from __future__ import annotations

import numpy as np
import pytest

from facekit.eval.probes import half_split, linear_probe_accuracy, pair_verification, probe, spread


def test_half_split_puts_half_of_each_person_in_train_seeded() -> None:
    labels = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2])
    train, test = half_split(labels, seed=0)
    assert sorted(np.bincount(labels[train])) == [1, 1, 2] and sorted(np.bincount(labels[test])) == [1, 2, 2]
    assert set(train).isdisjoint(test) and sorted([*train, *test]) == list(range(9))
    assert all((a == b).all() for a, b in zip(half_split(labels, 0), (train, test), strict=True))
    assert any(not np.array_equal(half_split(labels, s)[0], train) for s in range(1, 6))


def test_linear_probe_trains_on_the_train_half_and_scores_the_test_half() -> None:
    """Two people, 3 faces each: 1 in train, 2 in test. A's train face and one test face lie on e1, its other
    test face on e2; B's three faces on e2. Fit on {e1: A, e2: B}, the test half scores 3 of 4. Fit on the
    test half instead, the train half would score 2 of 2."""
    labels = np.array([0, 0, 0, 1, 1, 1])
    train, test = half_split(labels, seed=0)
    e1, e2 = np.array([1.0, 0, 0]), np.array([0, 1.0, 0])
    x = np.zeros((6, 3))
    a_train, (a_test1, a_test2) = train[labels[train] == 0][0], test[labels[test] == 0]
    x[a_train], x[a_test1], x[a_test2] = e1, 5 * e1, e2  # the scale of a row does not matter
    x[labels == 1] = [3 * e2, e2, 2 * e2]
    assert linear_probe_accuracy(x, labels, seed=0) == pytest.approx(3 / 4)


def _faces(scale: bool) -> tuple[np.ndarray, np.ndarray]:
    """4 people × 3 faces, person k's faces on axis k; with ``scale`` their norms are 1, 4, 9 (cosine blind)."""
    labels = np.repeat(np.arange(4), 3)
    x = np.eye(5)[labels] * (np.tile([1.0, 4.0, 9.0], 4)[:, None] if scale else 1.0)
    return x, labels


def test_pair_verification_of_perfect_features() -> None:
    x, labels = _faces(scale=True)
    scores = pair_verification(x, labels, seed=0)
    assert (scores["same_pairs"], scores["different_pairs"]) == (12, 12)  # 4 × C(3, 2), as many different
    assert scores["far"] == pytest.approx(1 / 12)
    assert (scores["accuracy"], scores["auc"], scores["tar"]) == (1.0, 1.0, 1.0)


def test_pair_verification_by_hand() -> None:
    """Person 0's third face on a fifth axis: 2 of the 12 same pairs score 0 like the 12 different pairs.
    AUC = 10/12 + ½ · 2/12 = 11/12; at FAR 1/12 no negative may pass, so TAR = 10/12."""
    x, labels = _faces(scale=False)
    x[2] = np.eye(5)[4]
    scores = pair_verification(x, labels, seed=0)
    assert scores["auc"] == pytest.approx(11 / 12)
    assert scores["tar"] == pytest.approx(10 / 12)


def test_probe_knn_is_cosine_and_spread_is_mean_std() -> None:
    """By angle each face's nearest is its own person's (kNN 1.0); by distance a0's nearest would be b1."""
    x = np.array([[1, 0], [10, 1], [1, 1.2], [0.8, 1.0]])
    labels = np.array([0, 0, 1, 1])
    x = np.kron(np.eye(3), x)  # three copies on orthogonal planes: enough pairs for 10 folds
    labels = np.concatenate([labels, labels + 2, labels + 4])
    assert probe(x, labels, seed=0)["knn_top1"] == 1.0
    runs = [dict.fromkeys(("knn_top1", "linear_probe"), v) for v in (0.2, 0.4)]
    runs = [r | dict.fromkeys(("verification_accuracy", "verification_auc", "verification_tar"), 0.5) for r in runs]
    assert spread(runs)["knn_top1"] == pytest.approx({"mean": 0.3, "std": 0.1, "min": 0.2, "max": 0.4})


def test_linear_probe_sees_only_directions() -> None:
    """Person A's faces along e1 with norm 1, B's along e1 with norm 10: after L2 normalisation every face is
    the same point, so the probe answers one person for all and scores 2 of the 4 test faces."""
    labels = np.array([0, 0, 0, 1, 1, 1])
    x = np.array([[1.0, 0.0]] * 3 + [[10.0, 0.0]] * 3)
    assert linear_probe_accuracy(x, labels, seed=0) == pytest.approx(2 / 4)
