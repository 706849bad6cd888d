"""Verification benchmarks of an embedding model: insightface ``.bin`` sets (LFW, CFP-FP, AgeDB-30, ...)
and image folders with a pair list (LFW ``pairs.txt`` or ``file_x,file_y,same`` CSV).

Protocol as insightface's ``verification.py`` (and the LAFS / FaceT evaluations): flip test (the
embeddings of a face and its mirror are added, then normalised), cosine scores, 10-fold accuracy with
the threshold chosen on the nine other folds (consecutive folds, no shuffle), ROC and TAR at FAR 1e-4 /
1e-3 / 1e-2 / 1e-1 where the number of different-person pairs allows it (see :func:`verify`). A model that
needs each face's mesh landmarks (LAFS, ``landmarks="mesh"``) gets them from the set's landmarks file
(:func:`~facekit.eval.make_bin.read_landmarks`); image folders have none, so it cannot score those.

Results are written for DVC: one metrics JSON (set name -> metric -> value), and per set a ROC CSV
(``fpr,tpr``, for ``dvc plots``) plus one PNG of all curves.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np
from sklearn.metrics import auc

from facekit.data.images import ImageError, decode_image
from facekit.data.ops.detect import FaceDetector
from facekit.data.sources.verification_bin import load_verification_bin
from facekit.eval.embedding_model import EmbeddingModel
from facekit.eval.make_bin import AlignedFaces, read_landmarks, read_pairs
from facekit.eval.verification import VerificationResult, far_key, verify

if TYPE_CHECKING:
    from matplotlib.figure import Figure

#: Faces decoded and embedded at a time (bounds memory on 12,000-image sets).
CHUNK = 512


class FaceSizeError(ValueError):
    """An aligned face whose size is not the model's input size (and resizing was not asked for)."""


@dataclass(frozen=True)
class BenchmarkResult:
    """One set's verification: ``name`` (e.g. ``lfw``), ``pairs`` evaluated, whether the flip test was on."""

    name: str
    pairs: int
    flip: bool
    verification: VerificationResult

    def metrics(self) -> dict[str, float]:
        """Flat metrics for DVC: accuracy (mean / std over folds), threshold, AUC, TAR at each measurable FAR."""
        v = self.verification
        out = {
            "accuracy": v.accuracy,
            "accuracy_std": v.accuracy_std,
            "threshold": v.threshold,
            "best_threshold_accuracy": v.best_threshold_accuracy,
            "auc": v.auc,
            "pairs": float(self.pairs),
        }
        out.update({far_key(far): tar for far, tar in v.tar_at_far.items()})
        return out

    def summary(self) -> str:
        v = self.verification
        tars = ", ".join(f"TAR@FAR={far:g} {tar:.4f}" for far, tar in v.tar_at_far.items())
        return (
            f"{self.name}: {self.pairs} pairs, accuracy {v.accuracy:.4f} ± {v.accuracy_std:.4f} "
            f"(threshold {v.threshold:.3f}, AUC {v.auc:.4f}{', ' + tars if tars else ''})"
        )


def decode_faces(
    images: Sequence[bytes], size: tuple[int, int] = (112, 112), *, resize: bool, source: str = ""
) -> np.ndarray:
    """Encoded aligned faces -> [N, H, W, 3] uint8 RGB for ``size = (H, W)``. A face of another size is a
    :class:`FaceSizeError` naming ``source`` and both sizes, unless ``resize`` (then it is resized, as
    insightface does)."""
    out = np.empty((len(images), *size, 3), np.uint8)
    for i, data in enumerate(images):
        try:
            bgr = decode_image(data)
        except ImageError as e:
            raise ValueError(f"{source}: image {i}: {e}") from e
        if bgr.shape[:2] != size:
            if not resize:
                raise FaceSizeError(
                    f"{source}: image {i} is {bgr.shape[0]}x{bgr.shape[1]}, the model takes {size[0]}x{size[1]}"
                )
            bgr = cv2.resize(bgr, (size[1], size[0]), interpolation=cv2.INTER_AREA)
        out[i] = bgr[:, :, ::-1]
    return out


def embed_encoded(
    model: EmbeddingModel,
    images: Sequence[bytes],
    *,
    flip: bool,
    resize: bool,
    source: str = "",
    landmarks: np.ndarray | None = None,
) -> np.ndarray:
    """Embed encoded aligned faces [N] -> [N, D] float32 unit rows (faces decoded to ``model.input_hw``, see
    :func:`decode_faces`; ``landmarks`` [N, 196, 2] passed on for a model that needs them); identical byte
    strings are embedded once, the distinct ones in chunks of :data:`CHUNK`."""
    if not images:
        raise ValueError(f"{source}: no images to embed")
    if landmarks is not None and resize:
        raise ValueError(f"{source}: mesh landmarks are in the faces' own pixels: the faces cannot be resized")
    row: dict[bytes, int] = {}
    first: list[int] = []
    for i, data in enumerate(images):
        if row.setdefault(bytes(data), len(row)) == len(first):
            first.append(i)
    distinct = list(row)
    points = None if landmarks is None else np.asarray(landmarks)[first]
    emb = np.concatenate(
        [
            model.embed(
                decode_faces(distinct[i : i + CHUNK], model.input_hw, resize=resize, source=source),
                flip=flip,
                landmarks=None if points is None else points[i : i + CHUNK],
            )
            for i in range(0, len(distinct), CHUNK)
        ]
    )
    return emb[[row[bytes(data)] for data in images]]


def evaluate_bin(
    path: Path, model: EmbeddingModel, *, flip: bool = True, n_folds: int = 10, resize: bool = False
) -> BenchmarkResult:
    """Verification on an insightface ``.bin`` (loaded with the restricted unpickler); name = file stem.
    Faces that are not the model's input size are an error unless ``resize`` (see :func:`decode_faces`); a
    model that needs mesh landmarks reads the set's landmarks file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"verification set not found: {path}")
    vbin = load_verification_bin(path)
    landmarks = read_landmarks(path, len(vbin.images)) if model.needs_landmarks else None
    emb = embed_encoded(model, vbin.images, flip=flip, resize=resize, source=str(path), landmarks=landmarks)
    result = verify(emb[0::2], emb[1::2], vbin.issame, n_folds=n_folds)
    return BenchmarkResult(name=path.stem, pairs=len(vbin), flip=flip, verification=result)


def evaluate_pairs(
    folder: Path,
    pairs_path: Path,
    model: EmbeddingModel,
    *,
    detector: FaceDetector | None = None,
    flip: bool = True,
    n_folds: int | None = None,
    name: str | None = None,
) -> BenchmarkResult:
    """Verification on the faces of ``folder`` listed by ``pairs_path`` (see :mod:`facekit.eval.make_bin`).

    Aligned 112 x 112 images are used as they are; with a ``detector``, other photos are detected and
    aligned. ``n_folds`` defaults to the protocol's (LFW: 10), else 10. Each image is embedded once.
    """
    pairs = read_pairs(pairs_path)
    names = pairs.names()
    faces = AlignedFaces.from_folder(folder, names, detector=detector)
    if faces.failed:
        first = next(iter(faces.failed.values()))
        raise ValueError(f"{len(faces.failed)} of {len(names)} faces of {pairs_path} unusable, e.g. {first}")
    emb = embed_encoded(model, [faces.images[n] for n in names], flip=flip, resize=True, source=str(folder))
    row = {n: i for i, n in enumerate(names)}
    emb_a = emb[[row[n] for n in pairs.first]]
    emb_b = emb[[row[n] for n in pairs.second]]
    folds = n_folds or pairs.n_folds or 10
    result = verify(emb_a, emb_b, pairs.issame, n_folds=folds)
    return BenchmarkResult(name=name or Path(pairs_path).stem, pairs=len(pairs), flip=flip, verification=result)


def write_metrics(metrics: Mapping[str, Mapping[str, float]], path: Path) -> Path:
    """Write ``{set: {metric: value}}`` as a DVC metrics JSON (sorted keys, floats rounded to 6 digits)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean = {name: {k: round(float(v), 6) for k, v in m.items()} for name, m in metrics.items()}
    path.write_text(json.dumps(clean, indent=2, sort_keys=True) + "\n")
    return path


def roc_figure(
    curves: Mapping[str, tuple[np.ndarray, np.ndarray]], *, title: str, reference: str | None = None
) -> Figure:
    """One figure of ROC curves (``{name: (fpr [P], tpr [P])}``) on a log FAR axis, each labelled with its
    AUC (trapezoids over the curve's points); the curve named ``reference`` is drawn dashed black, on top."""
    from matplotlib.figure import Figure  # heavy; only the plots need it

    fig = Figure(figsize=(6.4, 4.8), dpi=100)
    ax = fig.subplots()
    smallest = 1.0
    for name, (fpr, tpr) in sorted(curves.items(), key=lambda item: item[0] == reference):
        positive = fpr[fpr > 0]
        smallest = min(smallest, float(positive.min()) if positive.size else 1.0)
        style = {"color": "black", "ls": "--", "lw": 1.6, "zorder": 3} if name == reference else {"lw": 1.2}
        ax.plot(np.maximum(fpr, 1e-12), tpr, label=f"{name} (AUC {auc(fpr, tpr):.3f})", **style)
    ax.set_xscale("log")
    ax.set_xlim(min(smallest, 1e-1), 1.0)
    ax.set_ylim(0.0, 1.01)
    ax.set_xlabel("false accept rate")
    ax.set_ylabel("true accept rate")
    ax.set_title(title)
    ax.grid(True, which="both", ls=":", lw=0.5)
    ax.legend(loc="lower right", fontsize="small")
    fig.tight_layout()
    return fig


def write_roc(curves: Mapping[str, tuple[np.ndarray, np.ndarray]], plots_dir: Path, *, title: str) -> list[Path]:
    """Per curve ``roc_<name>.csv`` (``fpr,tpr``) and one ``roc.png`` of all curves (:func:`roc_figure`)."""
    plots_dir = Path(plots_dir)
    plots_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, (fpr, tpr) in curves.items():
        csv_path = plots_dir / f"roc_{name}.csv"
        with csv_path.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["fpr", "tpr"])
            writer.writerows(zip((f"{x:.8g}" for x in fpr), (f"{y:.8g}" for y in tpr), strict=True))
        written.append(csv_path)
    png = plots_dir / "roc.png"
    roc_figure(curves, title=title).savefig(png)
    return [*written, png]


def read_roc(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``(fpr [P], tpr [P])`` of a ``roc_<name>.csv`` written by :func:`write_roc`."""
    table = np.loadtxt(path, delimiter=",", skiprows=1, ndmin=2)
    return table[:, 0], table[:, 1]


def write_reports(results: Sequence[BenchmarkResult], metrics_path: Path, plots_dir: Path, *, title: str) -> list[Path]:
    """Metrics JSON and ROC plots (titled ``title``) of several benchmark results (names must differ)."""
    names = [r.name for r in results]
    if len(set(names)) != len(names):
        raise ValueError(f"benchmark names must be unique, got {names}")
    written = [write_metrics({r.name: r.metrics() for r in results}, metrics_path)]
    curves = {r.name: (r.verification.fpr, r.verification.tpr) for r in results}
    return written + write_roc(curves, plots_dir, title=title)
