"""Verification benchmarks on real faces: a .bin of the 280 deepface pairs scored by the shared MobileFaceNet
ONNX as an external embedding model, folder + pair-list evaluation, DVC metrics / plots and the CLI."""

from __future__ import annotations

import csv
import json
import os
import pickle
from pathlib import Path

import cv2
import numpy as np
import pytest

from facekit.cli import main
from facekit.data.images import decode_image, encode_jpeg
from facekit.data.ops.align import align_face
from facekit.data.ops.detect import create_detector, select_face
from facekit.data.sources.verification_bin import load_verification_bin
from facekit.eval.benchmarks import BenchmarkResult, evaluate_bin, evaluate_pairs, read_roc, roc_figure, write_reports
from facekit.eval.embedding_model import EmbeddingModel, load_embedding_model
from facekit.eval.make_bin import AlignedFaces, build_bin, read_pairs
from facekit.eval.verification import verify


@pytest.fixture(scope="module")
def faces(assets: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The 61 photos detected (SCRFD) and aligned into a flat folder of 112 x 112 JPEGs, and the 280-pair
    .bin built from it with the deepface pairs.csv."""
    root = tmp_path_factory.mktemp("bench")
    folder = assets / "faces" / "deepface"
    detector = create_detector("scrfd", assets / "models" / "scrfd_500m_bnkps.onnx")
    aligned = root / "aligned"
    aligned.mkdir()
    with open(folder / "identities.csv") as f:
        for row in csv.DictReader(f):
            img = decode_image((folder / row["file"]).read_bytes())
            dets = detector.detect(img)
            crop, _ = align_face(img, dets.landmarks[select_face(dets, min_size=0)], size=112)
            (aligned / row["file"]).write_bytes(encode_jpeg(crop))
    pairs_csv = folder / "pairs.csv"
    pairs = read_pairs(pairs_csv)
    bin_path = root / "deepface.bin"
    build_bin(pairs, AlignedFaces.from_folder(aligned, pairs.names()), bin_path)
    return {"aligned": aligned, "pairs_csv": pairs_csv, "bin": bin_path}


@pytest.fixture(scope="module")
def model_path(assets: Path) -> Path:
    return assets / "models" / "mobilefacenet_128d.onnx"


@pytest.fixture(scope="module")
def model(model_path: Path) -> EmbeddingModel:
    return load_embedding_model(model_path)


@pytest.fixture(scope="module")
def deepface_result(faces: dict, model: EmbeddingModel) -> BenchmarkResult:
    return evaluate_bin(faces["bin"], model, flip=True)


def test_deepface_bin_scores_at_least_97_percent(
    faces: dict, model: EmbeddingModel, deepface_result: BenchmarkResult
) -> None:
    assert isinstance(model, EmbeddingModel)
    print(f"\n{deepface_result.summary()}")
    assert deepface_result.pairs == 280 and deepface_result.flip
    v = deepface_result.verification
    assert v.accuracy >= 0.97
    assert v.auc >= 0.99
    assert set(v.tar_at_far) == {1e-2, 1e-1}  # 140 different pairs: FAR 1e-3 is not measurable
    # Independently: decode with OpenCV, embed the 61 distinct faces, verify; another JPEG decoder moves
    # the scores a little only.
    vbin = load_verification_bin(faces["bin"])
    distinct = list(dict.fromkeys(vbin.images))
    assert len(distinct) == 61
    decoded = [cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_COLOR)[:, :, ::-1] for b in distinct]
    emb = dict(zip(distinct, model.embed(np.ascontiguousarray(np.stack(decoded)), flip=True), strict=True))
    ref = verify(
        np.stack([emb[b] for b in vbin.images[0::2]]), np.stack([emb[b] for b in vbin.images[1::2]]), vbin.issame
    )
    assert abs(ref.accuracy - v.accuracy) <= 2 / 280
    assert abs(ref.auc - v.auc) <= 0.005


def test_folder_and_pairs_equal_the_bin_built_from_them(
    faces: dict, model: EmbeddingModel, deepface_result: BenchmarkResult
) -> None:
    from_folder = evaluate_pairs(faces["aligned"], faces["pairs_csv"], model)
    assert from_folder.name == "pairs" and from_folder.pairs == 280
    a, b = from_folder.verification, deepface_result.verification
    assert (a.accuracy, a.threshold, a.auc) == pytest.approx((b.accuracy, b.threshold, b.auc))
    assert a.tar_at_far == pytest.approx(b.tar_at_far)


def test_reports_for_dvc(deepface_result: BenchmarkResult, tmp_path: Path) -> None:
    result = deepface_result
    written = write_reports([result], tmp_path / "metrics" / "eval.json", tmp_path / "plots", title="t")
    assert [p.name for p in written] == ["eval.json", "roc_deepface.csv", "roc.png"]
    metrics = json.loads((tmp_path / "metrics" / "eval.json").read_text())["deepface"]
    v = result.verification
    assert metrics["accuracy"] == pytest.approx(v.accuracy, abs=1e-6) and metrics["pairs"] == 280
    assert metrics["tar_at_far_1e-2"] == pytest.approx(v.tar_at_far[1e-2], abs=1e-6)
    assert set(metrics) == {
        "accuracy", "accuracy_std", "threshold", "best_threshold_accuracy", "auc", "pairs",
        "tar_at_far_1e-2", "tar_at_far_1e-1",
    }  # fmt: skip
    fpr, tpr = read_roc(tmp_path / "plots" / "roc_deepface.csv")
    np.testing.assert_allclose(np.stack([fpr, tpr], 1), np.stack([v.fpr, v.tpr], 1), atol=1e-7)
    png = cv2.imread(str(tmp_path / "plots" / "roc.png"))
    assert png is not None and png.shape[2] == 3 and png.std() > 0
    with pytest.raises(ValueError, match="unique"):
        write_reports([result, result], tmp_path / "m.json", tmp_path / "p", title="t")


def test_cli_eval_bin_and_pairs(
    faces: dict, model_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = ["--metrics", str(tmp_path / "bin.json"), "--plots", str(tmp_path / "plots")]
    assert main(["eval", "bin", str(faces["bin"]), "--model", str(model_path), *out]) == 0
    assert "deepface: 280 pairs, accuracy 0.9" in capsys.readouterr().out
    assert json.loads((tmp_path / "bin.json").read_text())["deepface"]["accuracy"] >= 0.97
    args = ["eval", "pairs", str(faces["aligned"]), str(faces["pairs_csv"]), "--model", str(model_path)]
    assert main([*args, "--metrics", str(tmp_path / "pairs.json"), "--plots", str(tmp_path / "p2")]) == 0
    assert (tmp_path / "p2" / "roc_pairs.csv").is_file()


def test_bad_inputs_exit_with_one_line(model_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    evil = tmp_path / "evil.bin"
    evil.write_bytes(pickle.dumps(os.system))  # a pickle calling a global: refused before anything runs
    assert main(["eval", "bin", str(evil), "--model", str(model_path)]) == 2
    assert "refused to load global 'posix.system'" in capsys.readouterr().err
    assert main(["eval", "bin", str(tmp_path / "none.bin"), "--model", str(model_path)]) == 2
    assert "verification set not found" in capsys.readouterr().err
    assert main(["eval", "bin", str(evil), "--model", str(tmp_path / "m.pt")]) == 2
    assert "expected an .onnx embedding model" in capsys.readouterr().err


def test_cli_eval_bin_refuses_faces_of_another_size_unless_resize(
    faces: dict, model_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    vbin = load_verification_bin(faces["bin"])
    small = [
        encode_jpeg(cv2.resize(decode_image(data), (100, 100), interpolation=cv2.INTER_AREA)) for data in vbin.images
    ]
    path = tmp_path / "small.bin"
    path.write_bytes(pickle.dumps((small, vbin.issame.tolist()), protocol=4))
    out = ["--model", str(model_path), "--metrics", str(tmp_path / "m.json"), "--plots", str(tmp_path / "p")]
    assert main(["eval", "bin", str(path), *out]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("facekit: error:")
    assert str(path) in err[0] and "100x100" in err[0] and "112x112" in err[0] and "--resize" in err[0]
    assert not (tmp_path / "m.json").exists()
    assert main(["eval", "bin", str(path), "--resize", *out]) == 0
    assert "small: 280 pairs, accuracy" in capsys.readouterr().out
    assert json.loads((tmp_path / "m.json").read_text())["small"]["accuracy"] > 0.9


def test_the_roc_figure_names_each_curve_with_its_auc_and_dashes_the_reference() -> None:
    """AUC by hand: a perfect curve 1, the diagonal 0.5, the staircase (0,0)-(0,.5)-(.5,.5)-(.5,1)-(1,1) 0.75."""
    curves = {
        "perfect": (np.array([0.0, 0.0, 1.0]), np.array([0.0, 1.0, 1.0])),
        "reference": (np.array([0.0, 1.0]), np.array([0.0, 1.0])),
        "stairs": (np.array([0.0, 0.0, 0.5, 0.5, 1.0]), np.array([0.0, 0.5, 0.5, 1.0, 1.0])),
    }
    fig = roc_figure(curves, title="run x: ROC", reference="reference")
    ax = fig.axes[0]
    assert ax.get_title() == "run x: ROC" and ax.get_xscale() == "log"
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["perfect (AUC 1.000)", "stairs (AUC 0.750)", "reference (AUC 0.500)"]  # reference last
    styles = {line.get_label(): (line.get_linestyle(), line.get_color()) for line in ax.get_lines()}
    assert styles["reference (AUC 0.500)"] == ("--", "black") and styles["stairs (AUC 0.750)"][0] == "-"
