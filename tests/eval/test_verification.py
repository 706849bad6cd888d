"""Verification maths on hand-built scores, and the full detect -> align -> embed -> verify chain."""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np
import pytest
from insightface.model_zoo import get_model

from facekit.data.ops.align import align_face
from facekit.data.ops.detect import create_detector, select_face
from facekit.eval.embedder import OnnxEmbedder
from facekit.eval.verification import best_threshold, cosine_scores, far_key, verify

DETECTOR_FILES = {"retinaface": "retinaface_mbnet0.25.onnx", "scrfd": "scrfd_500m_bnkps.onnx"}


def unit_pairs(cosines: list[float]) -> tuple[np.ndarray, np.ndarray]:
    """2-D embedding pairs whose cosine similarities are exactly ``cosines``: [P, 2] each."""
    angles = np.arccos(np.asarray(cosines))
    emb_a = np.tile([1.0, 0.0], (len(cosines), 1))
    emb_b = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    return emb_a, emb_b


# ---------------------------------------------------------------- maths on hand-built scores


def test_cosine_scores_by_hand() -> None:
    a = np.array([[1.0, 0.0], [3.0, 4.0], [1.0, 1.0]])
    b = np.array([[2.0, 2.0], [-3.0, -4.0], [5.0, 5.0]])
    np.testing.assert_allclose(cosine_scores(a, b), [1 / np.sqrt(2), -1.0, 1.0])


def test_small_case_computed_by_hand() -> None:
    """Scores 0.9 S, 0.5 D, 0.4 S, 0.1 D in two folds [0, 1] / [2, 3].

    Fold 1 trains on (0.4 S, 0.1 D) -> threshold 0.25, then accepts 0.5 D: 1/2 correct.
    Fold 2 trains on (0.9 S, 0.5 D) -> threshold 0.7, then rejects 0.4 S: 1/2 correct.
    One threshold on all four gets 3/4 at best; AUC = 3 of 4 (same, different) pairs ordered = 0.75.
    """
    emb_a, emb_b = unit_pairs([0.9, 0.5, 0.4, 0.1])
    res = verify(emb_a, emb_b, np.array([True, False, True, False]), n_folds=2)
    assert res.accuracy == pytest.approx(0.5)
    assert res.accuracy_std == pytest.approx(0.0)
    assert res.threshold == pytest.approx((0.25 + 0.7) / 2)
    assert res.best_threshold_accuracy == pytest.approx(0.75)
    assert res.auc == pytest.approx(0.75)
    assert res.tar_at_far == {}  # two different pairs cannot measure a FAR of 10%


def test_best_threshold_splits_between_distinct_scores() -> None:
    scores = np.array([0.8, 0.8, 0.3, 0.6])
    thr, acc = best_threshold(scores, np.array([True, False, False, True]))
    # The tie at 0.8 cannot be split: accepting both 0.8s and 0.6 gets 3/4 right.
    assert (thr, acc) == (pytest.approx(0.45), pytest.approx(0.75))


def test_perfectly_separable_pairs() -> None:
    rng = np.random.default_rng(0)
    cos = np.concatenate([rng.uniform(0.5, 0.99, 100), rng.uniform(-0.5, 0.3, 100)])
    issame = np.arange(200) < 100
    order = rng.permutation(200)
    emb_a, emb_b = unit_pairs(list(cos[order]))
    res = verify(emb_a, emb_b, issame[order])
    assert res.accuracy == 1.0 and res.accuracy_std == 0.0 and res.best_threshold_accuracy == 1.0
    assert 0.3 < res.threshold < 0.5
    assert res.auc == 1.0
    assert res.tar_at_far == {1e-2: 1.0, 1e-1: 1.0}  # 100 negatives: FAR 1e-3 is not measurable
    assert res.fpr.shape == res.tpr.shape and res.fpr[0] == 0.0 and res.tpr[-1] == 1.0


def test_tar_at_far_by_hand() -> None:
    """10 different pairs, the top one at 0.95: FAR 10% accepts it but not 0.88, so 3 of 5 same pairs pass."""
    negatives = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.88, 0.95]
    positives = [0.82, 0.85, 0.9, 0.97, 0.99]
    emb_a, emb_b = unit_pairs(negatives + positives)
    res = verify(emb_a, emb_b, np.array([False] * 10 + [True] * 5), n_folds=5)
    assert res.tar_at_far == {1e-1: pytest.approx(0.6)}
    assert res.auc == pytest.approx(45 / 50)  # same pairs outrank 8 + 8 + 9 + 10 + 10 of the 10 different


def test_bad_inputs_give_clear_errors() -> None:
    emb_a, emb_b = unit_pairs([0.9, 0.1, 0.8, 0.2])
    with pytest.raises(ValueError, match="same shape"):
        verify(emb_a, emb_b[:3], np.array([True, False, True]))
    with pytest.raises(ValueError, match="issame"):
        verify(emb_a, emb_b, np.array([True, False]))
    with pytest.raises(ValueError, match="both"):
        verify(emb_a, emb_b, np.ones(4, bool))
    with pytest.raises(ValueError, match="n_folds"):
        verify(emb_a, emb_b, np.array([True, False, True, False]), n_folds=10)
    with pytest.raises(ValueError, match="NaN"):
        cosine_scores(np.full((2, 3), np.nan), np.ones((2, 3)))


# ---------------------------------------------------------------- embedder


@pytest.fixture(scope="module")
def embedder(assets: Path) -> OnnxEmbedder:
    return OnnxEmbedder(assets / "models" / "mobilefacenet_128d.onnx")


def test_embedder_matches_insightface_arcface_wrapper(assets: Path, embedder: OnnxEmbedder) -> None:
    faces = np.random.default_rng(1).integers(0, 256, (3, 112, 112, 3), dtype=np.uint8)
    emb = embedder.embed(faces)
    assert emb.shape == (3, 128) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    reference = get_model(str(assets / "models" / "mobilefacenet_128d.onnx"), providers=["CPUExecutionProvider"])
    reference.input_std = 128.0  # insightface defaults to 127.5; facekit uses (x - 127.5) / 128
    ref = np.concatenate([reference.get_feat(np.ascontiguousarray(f[:, :, ::-1])) for f in faces])
    np.testing.assert_allclose(emb, ref / np.linalg.norm(ref, axis=1, keepdims=True), atol=1e-5)


def test_embedder_flip_and_errors(embedder: OnnxEmbedder, tmp_path: Path) -> None:
    faces = np.random.default_rng(2).integers(0, 256, (2, 112, 112, 3), dtype=np.uint8)
    mirrored = faces[:, :, ::-1]
    # Flip averaging makes the embedding blind to a horizontal flip of the input (and only to that).
    np.testing.assert_allclose(embedder.embed(faces, flip=True), embedder.embed(mirrored, flip=True), atol=1e-5)
    assert not np.allclose(embedder.embed(faces, flip=True), embedder.embed(faces[:, ::-1], flip=True), atol=1e-3)
    assert not np.allclose(embedder.embed(faces), embedder.embed(mirrored), atol=1e-3)
    assert embedder.embed(faces[:0]).shape == (0, 128)
    with pytest.raises(ValueError, match=r"\[N, 112, 112, 3\]"):
        embedder.embed(faces[0])
    with pytest.raises(ValueError, match="uint8"):
        embedder.embed(faces.astype(np.float32))
    with pytest.raises(FileNotFoundError, match="FACEKIT_ASSETS"):
        OnnxEmbedder(tmp_path / "missing.onnx")


# ---------------------------------------------------------------- end to end on the 280 deepface pairs


def swap_xy(lmk: np.ndarray) -> np.ndarray:
    """A classic bug: landmarks read as (y, x)."""
    return lmk[:, ::-1]


def swap_left_right(lmk: np.ndarray) -> np.ndarray:
    """Another: left/right points exchanged (a mirrored template order)."""
    return lmk[[1, 0, 2, 4, 3]]


@pytest.fixture(scope="module")
def deepface(assets: Path) -> dict:
    """Photos, pair list and, per detector, the largest face's landmarks of every photo."""
    folder = assets / "faces" / "deepface"
    with open(folder / "identities.csv") as f:
        files = [row["file"] for row in csv.DictReader(f)]
    with open(folder / "pairs.csv") as f:
        pairs = [(r["file_x"], r["file_y"], r["same"] == "1") for r in csv.DictReader(f)]
    images = {name: cv2.imread(str(folder / name)) for name in files}
    landmarks = {}
    for kind, model in DETECTOR_FILES.items():
        detector = create_detector(kind, assets / "models" / model)
        found = {name: detector.detect(img) for name, img in images.items()}
        landmarks[kind] = {name: d.landmarks[select_face(d, min_size=0)] for name, d in found.items()}
    return {"files": files, "pairs": pairs, "images": images, "landmarks": landmarks}


def pair_accuracy(deepface: dict, embedder: OnnxEmbedder, kind: str, corrupt=None, flip: bool = False):
    """10-fold verification of the 280 pairs with faces aligned on ``kind``'s (optionally corrupted) points."""
    faces = []
    for name in deepface["files"]:
        lmk = deepface["landmarks"][kind][name]
        crop, _ = align_face(deepface["images"][name], corrupt(lmk) if corrupt else lmk, size=112)
        faces.append(crop[:, :, ::-1])  # BGR -> RGB
    emb = dict(zip(deepface["files"], embedder.embed(np.stack(faces), flip=flip), strict=True))
    emb_a = np.stack([emb[x] for x, _, _ in deepface["pairs"]])
    emb_b = np.stack([emb[y] for _, y, _ in deepface["pairs"]])
    return verify(emb_a, emb_b, np.array([same for _, _, same in deepface["pairs"]]))


def test_pair_list_is_balanced_and_covered(deepface: dict) -> None:
    pairs = deepface["pairs"]
    assert len(pairs) == 280 and sum(same for _, _, same in pairs) == 140
    assert {x for x, _, _ in pairs} | {y for _, y, _ in pairs} <= set(deepface["files"])


@pytest.mark.parametrize("kind", sorted(DETECTOR_FILES))
def test_end_to_end_accuracy(deepface: dict, embedder: OnnxEmbedder, kind: str) -> None:
    res = pair_accuracy(deepface, embedder, kind)
    assert res.accuracy >= 0.97, f"{kind}: 10-fold accuracy {res.accuracy:.4f}"
    assert res.auc >= 0.99
    assert 0.2 < res.threshold < 0.7
    assert pair_accuracy(deepface, embedder, kind, flip=True).accuracy >= 0.97


@pytest.mark.parametrize("corrupt", [swap_xy, swap_left_right])
def test_broken_alignment_is_caught(deepface: dict, embedder: OnnxEmbedder, corrupt) -> None:
    good = pair_accuracy(deepface, embedder, "scrfd")
    bad = pair_accuracy(deepface, embedder, "scrfd", corrupt=corrupt)
    assert bad.accuracy < 0.75 and good.accuracy - bad.accuracy > 0.25
    assert bad.auc < 0.8


def test_far_key() -> None:
    assert [far_key(f) for f in (1e-6, 1e-4, 1e-2, 0.1)] == [
        "tar_at_far_1e-6", "tar_at_far_1e-4", "tar_at_far_1e-2", "tar_at_far_1e-1",
    ]  # fmt: skip
