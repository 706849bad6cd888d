"""IJB-B/C 1:1: pooling and TAR maths on hand-built numbers, meta parsing, and the full pipeline on a
tiny IJB-style fixture in insightface's exact layout built from the shared deepface photos."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from insightface.utils.face_align import norm_crop

from facekit.cli import main
from facekit.data.images import decode_image
from facekit.data.ops.detect import create_detector, select_face
from facekit.eval.embedder import OnnxEmbedder
from facekit.eval.ijb import (
    IJB_FAR_LEVELS,
    embed_faces,
    evaluate_ijb,
    load_ijb_meta,
    pool_templates,
    score_pairs,
    tar_at_far,
)

# ---------------------------------------------------------------- maths on hand-built numbers


def test_media_then_template_pooling_by_hand() -> None:
    """Template 5: media 1 = mean([1,0], [0,1]) = [.5,.5]; media 2 = [1,0]; sum [1.5,.5] -> [3,1]/√10.

    A plain mean over the three faces would give [2,1]/√5 instead. Template 2: one media, mean([0,2],
    [0,-1]) = [0,.5] -> [0,1].
    """
    feats = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 2.0], [0.0, -1.0]])
    templates = np.array([5, 5, 5, 2, 2])
    medias = np.array([1, 1, 2, 9, 9])
    ids, pooled = pool_templates(feats, templates, medias)
    np.testing.assert_array_equal(ids, [2, 5])
    np.testing.assert_allclose(pooled, [[0.0, 1.0], [3 / np.sqrt(10), 1 / np.sqrt(10)]])
    # Detector-score weights scale each face first: media 1 = ([1,0] + [0,3]) / 2, + [1,0] = [1.5, 1.5].
    _, weighted = pool_templates(feats, templates, medias, weights=np.array([1.0, 3.0, 1.0, 1.0, 1.0]))
    np.testing.assert_allclose(weighted[1], [1 / np.sqrt(2), 1 / np.sqrt(2)])
    # The same media id in two templates is two different medias.
    _, split = pool_templates(feats[:2], np.array([7, 8]), np.array([1, 1]))
    np.testing.assert_allclose(split, [[1.0, 0.0], [0.0, 1.0]])
    scores = score_pairs(ids, pooled, np.array([[5, 2], [2, 2], [5, 5]]))
    np.testing.assert_allclose(scores, [1 / np.sqrt(10), 1.0, 1.0])
    with pytest.raises(ValueError, match="no pooled feature"):
        score_pairs(ids, pooled, np.array([[5, 3]]))


def test_tar_at_far_uses_the_closest_roc_point() -> None:
    """10 impostors at 0.0 ... 0.9, genuine at 0.95, 0.85, 0.65, 0.05. ROC points (FAR, TAR): (0, .25),
    (.1, .25), (.1, .5), ..., (.3, .5), (.3, .75), ..., (.9, 1), (1, 1).

    FAR 1e-6 -> closest FAR 0, best TAR .25; FAR .1 -> .5; FAR .28 -> the FAR .3 points, best .75 (a
    "largest FAR <= target" rule would give .5 here).
    """
    impostors = np.arange(10) / 10
    genuine = np.array([0.95, 0.85, 0.65, 0.05])
    labels = np.array([0] * 10 + [1] * 4)
    tars, fpr, tpr = tar_at_far(labels, np.concatenate([impostors, genuine]), (1e-6, 0.1, 0.28))
    assert tars == {1e-6: 0.25, 0.1: 0.5, 0.28: 0.75}
    assert fpr[0] == 0.0 and tpr[-1] == 1.0


# ---------------------------------------------------------------- the IJB fixture from the deepface photos


def write_meta(meta: Path, faces: list[tuple[str, int, int, np.ndarray, float]], pairs: list[tuple[int, int, int]]):
    """The three insightface meta files for target ``ijbc``."""
    meta.mkdir(parents=True, exist_ok=True)
    (meta / "ijbc_face_tid_mid.txt").write_text("".join(f"{n} {t} {m}\n" for n, t, m, _, _ in faces))
    (meta / "ijbc_name_5pts_score.txt").write_text(
        "".join(f"{n} {' '.join(f'{v:.2f}' for v in lmk.ravel())} {s:.6f}\n" for n, _, _, lmk, s in faces)
    )
    (meta / "ijbc_template_pair_label.txt").write_text("".join(f"{a} {b} {y}\n" for a, b, y in pairs))


@pytest.fixture(scope="module")
def ijb(assets: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Loose crops = the 61 photos renamed ``<k>.jpg``; five points and scores from SCRFD. Per identity two
    templates (photos 0, 2, 4, ... and 1, 3, 5, ...), consecutive photos of a template sharing a media.
    Genuine pairs: the two templates of each identity (13); impostors: every cross-identity template
    pair with a first template (156) and the first templates among themselves (78)."""
    root = tmp_path_factory.mktemp("ijb")
    folder = assets / "faces" / "deepface"
    with open(folder / "identities.csv") as f:
        rows = [(r["file"], int(r["identity_id"])) for r in csv.DictReader(f)]
    detector = create_detector("scrfd", assets / "models" / "scrfd_500m_bnkps.onnx")
    crops = root / "loose_crop"
    crops.mkdir()
    by_identity: dict[int, list[str]] = {}
    points: dict[str, tuple[np.ndarray, float]] = {}
    for k, (file, identity) in enumerate(rows, start=1):
        name = f"{k}.jpg"
        shutil.copyfile(folder / file, crops / name)
        dets = detector.detect(cv2.imread(str(crops / name)))
        best = select_face(dets, min_size=0)
        points[name] = (dets.landmarks[best], float(dets.scores[best]))
        by_identity.setdefault(identity, []).append(name)
    faces, first, second = [], {}, {}
    for identity, names in sorted(by_identity.items()):
        for half, table in ((0, first), (1, second)):
            tid = 1000 + 7 * identity + 3 * half
            table[identity] = tid
            for j, name in enumerate(names[half::2]):
                faces.append((name, tid, 100 * tid + j // 2, *points[name]))
    ids = sorted(by_identity)
    pairs = [(first[i], second[i], 1) for i in ids]
    pairs += [(first[i], second[j], 0) for i in ids for j in ids if i != j]
    pairs += [(first[i], first[j], 0) for i in ids for j in ids if i < j]
    write_meta(root / "meta", faces, pairs)
    model = OnnxEmbedder(assets / "models" / "mobilefacenet_128d.onnx")
    return {"root": root, "faces": faces, "pairs": pairs, "model": model}


def test_meta_is_read_in_insightface_layout(ijb: dict) -> None:
    meta = load_ijb_meta(ijb["root"] / "meta")
    assert meta.target == "ijbc"
    assert len(meta.names) == 61 and meta.landmarks.shape == (61, 5, 2) and meta.det_scores.shape == (61,)
    assert meta.pairs.shape == (13 + 156 + 78, 2) and int(meta.labels.sum()) == 13
    assert len(np.unique(meta.templates)) == 26
    # Identities of 8, 8, 7, 6, 5, 5, 5, 4, 4, 3, 2, 2, 2 photos; halves of n photos hold ceil(n / 2) and
    # floor(n / 2), in medias of two: 2+2, 2+2, 2+2, 2+2, 3 x (2+1), 2 x (1+1), 1+1, 3 x (1+1) = 37 medias.
    assert len(np.unique(np.stack([meta.templates, meta.medias], 1), axis=0)) == 37
    name, tid, mid, lmk, score = ijb["faces"][5]
    assert (meta.names[5], meta.templates[5], meta.medias[5]) == (name, tid, mid)
    np.testing.assert_allclose(meta.landmarks[5], lmk, atol=0.006)
    assert meta.det_scores[5] == pytest.approx(score, abs=1e-6)


@pytest.fixture(scope="module")
def features(ijb: dict) -> np.ndarray:
    """Flip-test embeddings of the 61 faces: [61, 128]."""
    return embed_faces(load_ijb_meta(ijb["root"] / "meta"), ijb["root"] / "loose_crop", ijb["model"], batch_size=4)


@pytest.mark.filterwarnings("ignore:`estimate` is deprecated:FutureWarning")  # inside insightface's norm_crop
def test_faces_are_aligned_as_insightface_does(ijb: dict, features: np.ndarray) -> None:
    """The pipeline's embedding of a loose crop equals insightface's norm_crop of it, embedded with flip
    (a wrong template, landmark order or colour order moves embeddings by > 0.01)."""
    meta = load_ijb_meta(ijb["root"] / "meta")
    assert features.shape == (61, 128)
    for i in (0, 17, 60):
        img = decode_image((ijb["root"] / "loose_crop" / meta.names[i]).read_bytes())
        ref = norm_crop(img, meta.landmarks[i].astype(np.float64), image_size=112)[:, :, ::-1]
        # scikit-image's two transform estimators differ by ~1e-6 px: a few crop pixels differ by one level.
        np.testing.assert_allclose(features[i], ijb["model"].embed(ref[None].copy(), flip=True)[0], atol=2e-4)


def test_end_to_end_genuine_templates_score_higher(ijb: dict, features: np.ndarray) -> None:
    res = evaluate_ijb(ijb["root"] / "meta", ijb["root"] / "loose_crop", ijb["model"])
    genuine, impostor = res.scores[res.labels == 1], res.scores[res.labels == 0]
    print(
        f"\nIJB fixture: {res.summary()}\n  genuine cosine mean {genuine.mean():.3f} (min {genuine.min():.3f}), "
        f"impostor mean {impostor.mean():.3f} (max {impostor.max():.3f})"
    )
    assert (res.faces, res.templates) == (61, 26)
    assert list(res.tar_at_far) == list(IJB_FAR_LEVELS)
    assert res.tar_at_far[1e-1] >= 0.9
    assert res.auc >= 0.97
    assert genuine.mean() - impostor.mean() > 0.4
    # The scores are the detector-score-weighted pooling of the faces' features (insightface's default).
    meta = load_ijb_meta(ijb["root"] / "meta")
    ids, weighted = pool_templates(features, meta.templates, meta.medias, meta.det_scores)
    np.testing.assert_allclose(res.scores, score_pairs(ids, weighted, meta.pairs), atol=1e-6)
    _, plain = pool_templates(features, meta.templates, meta.medias)
    assert not np.allclose(weighted, plain, atol=1e-4)  # the weighting changes templates of several faces


def test_cli_writes_metrics_and_plots(ijb: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = str(ijb["model"].session._model_path)
    args = ["eval", "ijb", str(ijb["root"] / "meta"), str(ijb["root"] / "loose_crop"), "--model", model]
    assert main([*args, "--metrics", str(tmp_path / "m.json"), "--plots", str(tmp_path / "plots")]) == 0
    assert "ijbc: 61 faces, 26 templates, 247 pairs" in capsys.readouterr().out
    metrics = __import__("json").loads((tmp_path / "m.json").read_text())["ijbc"]
    assert {"auc", "tar_at_far_1e-6", "tar_at_far_1e-1", "templates"} <= set(metrics)
    assert (tmp_path / "plots" / "roc_ijbc.csv").read_text().startswith("fpr,tpr\n")
    assert cv2.imread(str(tmp_path / "plots" / "roc.png")) is not None


def test_bad_meta_gives_clear_errors(ijb: dict, tmp_path: Path) -> None:
    meta = tmp_path / "meta"
    shutil.copytree(ijb["root"] / "meta", meta)
    lines = (meta / "ijbc_name_5pts_score.txt").read_text().splitlines()
    (meta / "ijbc_name_5pts_score.txt").write_text("\n".join([lines[1], lines[0], *lines[2:]]) + "\n")
    with pytest.raises(ValueError, match=r"line 1: ijbc_face_tid_mid.txt names 1.jpg, ijbc_name_5pts_score.txt"):
        load_ijb_meta(meta)
    (meta / "ijbc_name_5pts_score.txt").write_text("\n".join(lines) + "\n")
    (meta / "ijbc_template_pair_label.txt").write_text("1000 424242 0\n1000 1003 1\n")
    with pytest.raises(ValueError, match=r"template\(s\) \[424242\] have no face"):
        load_ijb_meta(meta)
    (meta / "ijbc_template_pair_label.txt").write_text("1000 1003\n")
    with pytest.raises(ValueError, match="line 1 has 2 fields, expected 3"):
        load_ijb_meta(meta)
    (meta / "ijbb_face_tid_mid.txt").write_text("")
    with pytest.raises(ValueError, match="expected exactly one"):
        load_ijb_meta(meta)
