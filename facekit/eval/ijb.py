"""IJB-B / IJB-C 1:1 template verification in insightface's layout (``recognition/arcface_torch/eval_ijbc.py``).

``META_DIR`` holds, for a target ``ijbb`` or ``ijbc`` (space-separated, no header):

- ``<t>_face_tid_mid.txt``: ``image_name template_id media_id``, one line per face;
- ``<t>_name_5pts_score.txt``: ``image_name x1 y1 ... x5 y5 detector_score``, the same faces in the same
  order (five points in ArcFace order, pixels of the loose crop ``IMAGES_DIR/image_name``);
- ``<t>_template_pair_label.txt``: ``template_1 template_2 label`` (1 = same person).

Pipeline, as the released script: align each loose crop from its five points onto the ArcFace 112
template; embed it with the flip test; weight each face by its detector score (insightface's "D1",
optional here); average the faces of a media, add up the medias of a template (equal to averaging them
before normalisation) and L2-normalise; score a pair by the cosine of its templates; read TAR at FAR
1e-6 ... 1e-1 off ``sklearn.metrics.roc_curve``, at the ROC point whose FAR is closest to the target
(largest TAR on ties), as the released script does. Faces enter pooling L2-normalised (insightface's
"N0"): :class:`~facekit.eval.embedding_model.EmbeddingModel` returns unit vectors, so the released
default "N1" (raw feature norms as quality weights) is not reproduced.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve

from facekit.data.images import ImageError, decode_image
from facekit.data.ops.align import align_face
from facekit.eval.embedding_model import EmbeddingModel
from facekit.eval.verification import far_key

#: FARs of the IJB TAR table (insightface's ``x_labels``).
IJB_FAR_LEVELS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)
FACE_FILE = "{}_face_tid_mid.txt"
LANDMARK_FILE = "{}_name_5pts_score.txt"
PAIR_FILE = "{}_template_pair_label.txt"


@dataclass(frozen=True)
class IJBMeta:
    """The protocol of one IJB target.

    names [F] loose-crop file names; templates, medias [F] int64 ids; landmarks [F, 5, 2] float32 pixels;
    det_scores [F] float32; pairs [P, 2] int64 template ids; labels [P] int64 in {0, 1}.
    """

    target: str
    names: list[str]
    templates: np.ndarray
    medias: np.ndarray
    landmarks: np.ndarray
    det_scores: np.ndarray
    pairs: np.ndarray
    labels: np.ndarray


@dataclass(frozen=True)
class IJBResult:
    """1:1 verification: ``tar_at_far`` (FAR -> TAR over :data:`IJB_FAR_LEVELS`), ``auc``, ROC ``fpr``/``tpr``,
    ``scores`` [P] cosine per template pair (``labels`` [P]) and the counts evaluated."""

    target: str
    tar_at_far: dict[float, float]
    auc: float
    fpr: np.ndarray
    tpr: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    faces: int
    templates: int

    def metrics(self) -> dict[str, float]:
        """Flat metrics for DVC: AUC, counts and TAR at each FAR."""
        out = {"auc": self.auc, "faces": float(self.faces), "templates": float(self.templates)}
        out["pairs"] = float(self.labels.size)
        out.update({far_key(far): tar for far, tar in self.tar_at_far.items()})
        return out

    def summary(self) -> str:
        tars = ", ".join(f"{far:g}: {tar:.4f}" for far, tar in self.tar_at_far.items())
        return (
            f"{self.target}: {self.faces} faces, {self.templates} templates, {self.labels.size} pairs, "
            f"AUC {self.auc:.4f}, TAR@FAR {tars}"
        )


def find_target(meta_dir: Path) -> str:
    """The single target (``ijbb`` / ``ijbc`` / ...) whose face list is in ``meta_dir``."""
    suffix = FACE_FILE.format("")
    found = sorted(p.name[: -len(suffix)] for p in Path(meta_dir).glob(f"*{suffix}"))
    if len(found) != 1:
        raise ValueError(f"{meta_dir}: expected exactly one *{suffix}, found {found or 'none'}; pass the target")
    return found[0]


def _table(path: Path, columns: int, usecols: range, dtype: type) -> np.ndarray:
    """Columns ``usecols`` of a space-separated table with ``columns`` fields a line -> [R, len(usecols)]."""
    if not path.is_file():
        raise FileNotFoundError(f"IJB meta file not found: {path}")
    with path.open() as f:
        first = f.readline().split()
    if len(first) != columns:
        raise ValueError(f"{path}: line 1 has {len(first)} fields, expected {columns}")
    try:
        return np.loadtxt(path, usecols=usecols, dtype=dtype, ndmin=2)
    except ValueError as e:  # numpy names the bad line
        raise ValueError(f"{path}: {e}") from e


def _first_column(path: Path) -> list[str]:
    with path.open() as f:
        return [line.split(maxsplit=1)[0] for line in f if line.strip()]


def load_ijb_meta(meta_dir: Path, target: str | None = None) -> IJBMeta:
    """Read the three meta files of ``target`` (default: the one found in ``meta_dir``), checked for consistency."""
    meta_dir = Path(meta_dir)
    target = (target or find_target(meta_dir)).lower()
    face_path, lmk_path, pair_path = (meta_dir / f.format(target) for f in (FACE_FILE, LANDMARK_FILE, PAIR_FILE))
    ids = _table(face_path, 3, range(1, 3), np.int64)
    points = _table(lmk_path, 12, range(1, 12), np.float64)
    pairs = _table(pair_path, 3, range(3), np.int64)
    names, lmk_names = _first_column(face_path), _first_column(lmk_path)
    if len(names) != len(lmk_names):
        raise ValueError(f"{face_path} lists {len(names)} faces but {lmk_path} {len(lmk_names)}")
    if (bad := next((i for i, (a, b) in enumerate(zip(names, lmk_names, strict=True)) if a != b), None)) is not None:
        raise ValueError(f"line {bad + 1}: {face_path.name} names {names[bad]}, {lmk_path.name} {lmk_names[bad]}")
    if not np.isin(pairs[:, 2], (0, 1)).all():
        raise ValueError(f"{pair_path}: labels must be 0 or 1")
    if (missing := np.setdiff1d(pairs[:, :2], ids[:, 0])).size:
        raise ValueError(f"{pair_path}: template(s) {missing[:5].tolist()} have no face in {face_path.name}")
    return IJBMeta(
        target=target,
        names=names,
        templates=ids[:, 0],
        medias=ids[:, 1],
        landmarks=points[:, :10].reshape(-1, 5, 2).astype(np.float32),
        det_scores=points[:, 10].astype(np.float32),
        pairs=pairs[:, :2],
        labels=pairs[:, 2],
    )


def embed_faces(
    meta: IJBMeta, images_dir: Path, model: EmbeddingModel, *, flip: bool = True, batch_size: int = 256
) -> np.ndarray:
    """Align every loose crop from its five points to 112 x 112 and embed it: -> [F, D] float32 unit rows."""
    images_dir = Path(images_dir)
    out = []
    for start in range(0, len(meta.names), batch_size):
        crops = []
        chunk = slice(start, start + batch_size)
        for name, lmk in zip(meta.names[chunk], meta.landmarks[chunk], strict=True):
            path = images_dir / name
            if not path.is_file():
                raise FileNotFoundError(f"IJB loose crop not found: {path}")
            try:
                img = decode_image(path.read_bytes())
            except ImageError as e:
                raise ValueError(f"{path}: {e}") from e
            crops.append(align_face(img, lmk, size=112)[0][:, :, ::-1])  # BGR -> RGB
        out.append(model.embed(np.stack(crops), flip=flip))
    return np.concatenate(out)


def pool_templates(
    feats: np.ndarray, templates: np.ndarray, medias: np.ndarray, weights: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Media-then-template pooling: feats [F, D] (times ``weights`` [F] if given) are averaged within each
    (template, media), the media means summed per template, then L2-normalised.

    Returns (template ids [T] sorted, template features [T, D] float64 unit rows).
    """
    x = np.asarray(feats, dtype=np.float64)
    if weights is not None:
        x = x * np.asarray(weights, dtype=np.float64)[:, None]
    groups, group_of_face = np.unique(np.stack([templates, medias], axis=1), axis=0, return_inverse=True)
    group_of_face = group_of_face.ravel()
    media_sum = np.zeros((len(groups), x.shape[1]))
    np.add.at(media_sum, group_of_face, x)
    media_mean = media_sum / np.bincount(group_of_face, minlength=len(groups))[:, None]
    template_ids, template_of_group = np.unique(groups[:, 0], return_inverse=True)
    pooled = np.zeros((len(template_ids), x.shape[1]))
    np.add.at(pooled, template_of_group.ravel(), media_mean)
    return template_ids, pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)


def score_pairs(template_ids: np.ndarray, template_feats: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """Cosine of each template pair: template_ids [T] sorted, template_feats [T, D] unit rows, pairs [P, 2] -> [P]."""
    rows = np.searchsorted(template_ids, pairs)
    if (rows >= len(template_ids)).any() or (template_ids[np.minimum(rows, len(template_ids) - 1)] != pairs).any():
        raise ValueError("a pair names a template with no pooled feature")
    return np.einsum("pd,pd->p", template_feats[rows[:, 0]], template_feats[rows[:, 1]])


def tar_at_far(
    labels: np.ndarray, scores: np.ndarray, far_levels: tuple[float, ...] = IJB_FAR_LEVELS
) -> tuple[dict[float, float], np.ndarray, np.ndarray]:
    """TAR at each FAR: the ROC point (``roc_curve``) with the FAR closest to it, largest TAR on ties.

    Returns ({far: tar}, fpr, tpr).
    """
    fpr, tpr, _ = roc_curve(labels, scores)
    out = {}
    for far in far_levels:
        gap = np.abs(fpr - far)
        out[far] = float(tpr[gap == gap.min()].max())
    return out, fpr, tpr


def evaluate_ijb(
    meta_dir: Path,
    images_dir: Path,
    model: EmbeddingModel,
    *,
    target: str | None = None,
    flip: bool = True,
    detector_score_weighting: bool = True,
) -> IJBResult:
    """IJB 1:1 verification of ``model`` (see the module docstring)."""
    meta = load_ijb_meta(meta_dir, target)
    if len(np.unique(meta.labels)) != 2:
        raise ValueError(f"{meta_dir}: the template pairs need both genuine (1) and impostor (0) labels")
    feats = embed_faces(meta, images_dir, model, flip=flip)
    weights = meta.det_scores if detector_score_weighting else None
    template_ids, template_feats = pool_templates(feats, meta.templates, meta.medias, weights)
    scores = score_pairs(template_ids, template_feats, meta.pairs)
    tars, fpr, tpr = tar_at_far(meta.labels, scores)
    return IJBResult(
        target=meta.target,
        tar_at_far=tars,
        auc=float(roc_auc_score(meta.labels, scores)),
        fpr=fpr,
        tpr=tpr,
        scores=scores,
        labels=meta.labels,
        faces=len(meta.names),
        templates=len(template_ids),
    )
