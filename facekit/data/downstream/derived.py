"""Downstream labels the lineage derives from its own shards: alignment, head pose, parsing regions, and two
geometric proxies (expression, attributes), all on the shards' aligned crops (112 px).

Every packed face carries MediaPipe's 468-point mesh (``extra["dense_landmarks"]``, x, y in crop pixels; see
:mod:`facekit.data.ops.landmarks`). From it:

- **alignment**: the 68 points :data:`~facekit.data.ops.landmarks.MESH_68` (iBUG-300W order), ``[68, 2]``
  float32 crop pixels, scored with 300W's inter-ocular normalisation (outer eye corners 36 and 45).
- **pose**: (yaw, pitch, roll) in degrees. The mesh is run again on the crop to get its depth (the shards keep
  x, y only), the rotation from a canonical face to each mesh is fitted by least squares over all 468 points
  (Kabsch, :func:`head_pose`), and decomposed as ``R = Rz(roll) · Ry(yaw) · Rx(pitch)`` in the camera frame
  (x right, y down, z away from the camera). Signs: yaw > 0 turns the nose towards the image's left, pitch > 0
  tilts it down, roll > 0 turns the face clockwise in the image. The canonical face (:func:`canonical_face`)
  is the set's Procrustes mean put into its anatomical frame (x from the image-left eye centre to the
  image-right one, y from the forehead vertex 10 towards the chin vertex 152): 0° is "eyes level and at one
  depth, forehead and chin at one depth". (MediaPipe's own canonical model is not among the assets; a mean of
  real faces has no yaw or roll bias but may carry the set's mean pitch, which the anatomical frame removes
  only as far as forehead and chin are at one depth in a frontal face.)
- **parsing**: :data:`PARSING_CLASSES` rasterised with ``cv2.fillPoly`` from the mesh's outlines (face oval,
  brows, eyes, nose, mouth), ``[112, 112]`` uint8; later regions paint over earlier ones.
- **expression** (a documented synthetic fixture, not an emotion): 4 mouth states from two mesh ratios,
  :data:`EXPRESSION_CLASSES`, thresholds at the set's medians (so the classes are about equally frequent).
- **attributes** (the same kind of fixture): :data:`DERIVED_ATTRIBUTES`, 6 binary geometric attributes, each
  the measurement above the set's median.

Splits are by identity (a person's faces share one split): ``sha256(identity name)`` modulo 10, 0 -> test,
1 -> val, the rest train.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
from scipy.spatial.transform import Rotation
from tqdm import tqdm

from facekit.data.dataset import FaceShardDataset
from facekit.data.ops.landmarks import (
    DENSE_KEY,
    LEFT_EYE,
    MESH_68,
    MOUTH_LEFT,
    MOUTH_RIGHT,
    NUM_MESH_POINTS,
    RIGHT_EYE,
    FaceMesh,
    mesh_aligned_face,
)
from facekit.data.record import FaceRecord

DerivedTask = Literal["expression", "attributes", "alignment", "parsing", "pose"]
DERIVED_TASKS: tuple[DerivedTask, ...] = ("expression", "attributes", "alignment", "parsing", "pose")

#: Face silhouette, clockwise from the forehead (MediaPipe's face oval).
FACE_OVAL = np.array(
    [
        *(10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378, 400, 377, 152, 148),
        *(176, 149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54, 103, 67, 109),
    ]
)
#: Brow outlines (upper edge outer -> inner, lower edge back), image-left and image-right.
LEFT_BROW = np.array([70, 63, 105, 66, 107, 55, 65, 52, 53, 46])
RIGHT_BROW = np.array([300, 293, 334, 296, 336, 285, 295, 282, 283, 276])
#: Nose vertices whose convex hull is the nose region: nasion, bridge sides, ridge, alae, nostril base.
NOSE = np.array([168, 122, 351, 6, 197, 195, 4, 1, 64, 294, 48, 278, 98, 97, 2, 326, 327])
#: Outer lip contour, clockwise from the image-left mouth corner.
LIPS_OUTER = np.array([61, 185, 40, 39, 37, 0, 267, 269, 270, 409, 291, 375, 321, 405, 314, 17, 84, 181, 91, 146])
#: Forehead top and chin bottom of the face oval (the canonical frame's y axis).
FOREHEAD, CHIN = 10, 152
#: Inner lip midpoints (upper, lower): the mouth opening.
INNER_LIP_TOP, INNER_LIP_BOTTOM = 13, 14

#: Parsing class ids (0 = background); "mouth" is the lips and the opening between them.
PARSING_CLASSES = ("background", "skin", "brows", "eyes", "nose", "mouth")
#: Outlines painted for each class after the skin (in this order).
PARSING_REGIONS: tuple[tuple[int, tuple[np.ndarray, ...]], ...] = (
    (2, (LEFT_BROW, RIGHT_BROW)),
    (3, (LEFT_EYE, RIGHT_EYE)),
    (4, (NOSE,)),
    (5, (LIPS_OUTER,)),
)
#: The expression fixture's classes: mouth open (above the median opening) x smiling (corners above median lift).
EXPRESSION_CLASSES = ("closed", "closed_smile", "open", "open_smile")
#: The attribute fixture: name -> measurement (each thresholded at the set's median).
DERIVED_ATTRIBUTES = ("mouth_open", "smiling", "eyes_open", "brows_raised", "face_wide", "mouth_wide")
SPLITS = ("train", "val", "test")


def alignment_target(dense: np.ndarray) -> np.ndarray:
    """The 68 alignment points of a mesh: ``[468, 2+]`` -> ``[68, 2]`` float32 (iBUG-300W order)."""
    return np.asarray(dense, np.float32)[MESH_68, :2]


def parsing_mask(dense: np.ndarray, size: int) -> np.ndarray:
    """Parsing regions of a mesh ``[468, 2+]`` (pixels) on a ``size`` x ``size`` crop -> ``[size, size]`` uint8
    class ids of :data:`PARSING_CLASSES`: the face oval is skin, then brows, eyes, the nose's hull and the
    mouth are painted over it."""
    xy = np.asarray(dense, np.float64)[:, :2]
    mask = np.zeros((size, size), np.uint8)

    def polygon(indices: np.ndarray) -> np.ndarray:
        return np.round(xy[indices] * 16).astype(np.int32)  # 4 fractional bits: sub-pixel outlines

    cv2.fillPoly(mask, [polygon(FACE_OVAL)], 1, lineType=cv2.LINE_8, shift=4)
    for class_id, outlines in PARSING_REGIONS:
        shapes = [cv2.convexHull(polygon(o)) if o is NOSE else polygon(o) for o in outlines]
        cv2.fillPoly(mask, shapes, class_id, lineType=cv2.LINE_8, shift=4)
    return mask


def anatomical_frame(points: np.ndarray) -> np.ndarray:
    """The face's own axes ``[3, 3]`` (rows x, y, z) from a 3-D mesh ``[468, 3]``: x from the image-left eye
    centre to the image-right one, y the forehead -> chin direction made orthogonal to x, z = x × y."""
    p = np.asarray(points, np.float64)
    x = p[RIGHT_EYE].mean(0) - p[LEFT_EYE].mean(0)
    x /= np.linalg.norm(x)
    y = p[CHIN] - p[FOREHEAD]
    y -= (y @ x) * x
    y /= np.linalg.norm(y)
    return np.stack([x, y, np.cross(x, y)])


def _centred(points: np.ndarray) -> np.ndarray:
    p = np.asarray(points, np.float64)
    if p.shape != (NUM_MESH_POINTS, 3):
        raise ValueError(f"head pose needs a 3-D mesh [{NUM_MESH_POINTS}, 3], got {list(p.shape)}")
    return p - p.mean(0)


def canonical_face(meshes: np.ndarray, iterations: int = 3) -> np.ndarray:
    """The frontal reference ``[468, 3]`` of a set of 3-D meshes ``[N, 468, 3]``: their Procrustes mean (each
    mesh centred, scaled to unit size and rotated onto the running mean), expressed in its anatomical frame."""
    shapes = np.stack([_centred(m) for m in meshes])
    shapes /= np.linalg.norm(shapes, axis=(1, 2), keepdims=True)
    mean = shapes[0]
    for _ in range(iterations):
        aligned = [Rotation.align_vectors(mean, s)[0].apply(s) for s in shapes]
        mean = np.mean(aligned, axis=0)
        mean /= np.linalg.norm(mean)
    return mean @ anatomical_frame(mean).T


def head_pose(points: np.ndarray, canonical: np.ndarray) -> np.ndarray:
    """(yaw, pitch, roll) degrees ``[3]`` float32 of a 3-D mesh ``[468, 3]`` against ``canonical`` ``[468, 3]``:
    the least-squares rotation R with mesh ≈ s · R · canonical + t, as ``R = Rz(roll) · Ry(yaw) · Rx(pitch)``
    (signs: module docstring)."""
    rotation = Rotation.align_vectors(_centred(points), _centred(canonical))[0]
    roll, yaw, pitch = rotation.as_euler("ZYX", degrees=True)
    return np.array([yaw, pitch, roll], np.float32)


def _ratio(xy: np.ndarray, a: int | np.ndarray, b: int | np.ndarray) -> float:
    """Distance between vertices (or vertex means) a and b over the inter-ocular distance."""
    iod = np.linalg.norm(xy[RIGHT_EYE].mean(0) - xy[LEFT_EYE].mean(0))
    pa = xy[a].mean(0) if isinstance(a, np.ndarray) else xy[a]
    pb = xy[b].mean(0) if isinstance(b, np.ndarray) else xy[b]
    return float(np.linalg.norm(pa - pb) / iod)


def face_measurements(dense: np.ndarray) -> dict[str, float]:
    """The geometric measurements behind the expression and attribute fixtures, from a mesh ``[468, 2+]``,
    in inter-ocular units: mouth opening, smile (how far the mouth corners sit above the inner-lip midpoint),
    eye opening, brow height above the eyes, face width (oval's widest points), mouth width."""
    xy = np.asarray(dense, np.float64)[:, :2]
    iod = np.linalg.norm(xy[RIGHT_EYE].mean(0) - xy[LEFT_EYE].mean(0))
    lip_mid_y = (xy[INNER_LIP_TOP, 1] + xy[INNER_LIP_BOTTOM, 1]) / 2
    corners_y = (xy[MOUTH_LEFT, 1] + xy[MOUTH_RIGHT, 1]) / 2
    eye_open = (_ratio(xy, 159, 145) + _ratio(xy, 386, 374)) / 2  # upper / lower lid midpoints
    brows = (_ratio(xy, LEFT_BROW, LEFT_EYE) + _ratio(xy, RIGHT_BROW, RIGHT_EYE)) / 2
    return {
        "mouth_open": _ratio(xy, INNER_LIP_TOP, INNER_LIP_BOTTOM),
        "smiling": float((lip_mid_y - corners_y) / iod),
        "eyes_open": eye_open,
        "brows_raised": brows,
        "face_wide": _ratio(xy, 234, 454),
        "mouth_wide": _ratio(xy, MOUTH_LEFT, MOUTH_RIGHT),
    }


def proxy_labels(meshes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(expression ``[N]`` int64 of :data:`EXPRESSION_CLASSES`, attributes ``[N, 6]`` int8 of
    :data:`DERIVED_ATTRIBUTES`) of meshes ``[N, 468, 2+]``, each measurement thresholded at its median."""
    values = np.array([[face_measurements(m)[k] for k in DERIVED_ATTRIBUTES] for m in meshes])
    attributes = (values > np.median(values, axis=0)).astype(np.int8)
    expression = 2 * attributes[:, 0].astype(np.int64) + attributes[:, 1]
    return expression, attributes


def identity_split(identity: str) -> str:
    """``"test"``, ``"val"`` or ``"train"`` of one identity (sha256 of its name modulo 10: 0, 1, else)."""
    bucket = int(hashlib.sha256(identity.encode()).hexdigest(), 16) % 10
    return "test" if bucket == 0 else "val" if bucket == 1 else "train"


@dataclass(frozen=True)
class DerivedSet:
    """One task's derived labels on the shards' faces.

    images: uint8 ``[N, S, S, 3]`` RGB crops; targets: ``[N, ...]`` (expression ``[N]`` int64, attributes
    ``[N, 6]`` int8, alignment ``[N, 68, 2]`` float32 crop pixels, parsing ``[N, S, S]`` uint8, pose ``[N, 3]``
    float32 degrees); split: ``[N]`` str; keys: ``[N]`` record keys; num_classes: classes (expression,
    parsing), attributes, points or angles; class_names: their names; meshes: ``[N, 468, 2]`` float32 the
    faces' stored mesh (crop pixels).
    """

    task: DerivedTask
    images: np.ndarray
    targets: np.ndarray
    split: np.ndarray
    keys: list[str]
    num_classes: int
    class_names: tuple[str, ...]
    meshes: np.ndarray


def _read_faces(shards: Path, progress: bool) -> tuple[np.ndarray, np.ndarray, list[FaceRecord], list[str]]:
    """(images [N, S, S, 3], meshes [N, 468, 2] float32, records without images, identity names)."""

    class Keep:
        takes_record = True

        def __call__(self, rgb: np.ndarray, record: FaceRecord) -> dict[str, object]:
            if DENSE_KEY not in record.extra:
                raise ValueError(f"{shards}: record {record.key} has no {DENSE_KEY} (run the landmarks stage)")
            return {"image": rgb, "record": record.replace(image=b"", masked_image=None)}

    dataset = FaceShardDataset(Path(shards), transform=Keep())
    if len(dataset) == 0:
        raise ValueError(f"{shards}: no faces")
    items = [dataset[i] for i in tqdm(range(len(dataset)), desc="derive", unit="face", disable=not progress)]
    records = [item["record"] for item in items]
    meshes = np.stack([r.extra[DENSE_KEY][:, :2].astype(np.float32) for r in records])
    names = dataset.identities
    identities = [names[r.identity] if 0 <= r.identity < len(names) else str(r.identity) for r in records]
    return np.stack([item["image"] for item in items]), meshes, records, identities


def derive(
    shards: Path | str,
    task: DerivedTask,
    *,
    mesh_model: Path | None = None,
    progress: bool = False,
) -> DerivedSet:
    """The faces of ``shards`` with ``task``'s derived labels (see the module docstring). ``pose`` runs the
    face mesh again (``mesh_model``: MediaPipe's ``.tflite``) with the landmarks stage's margin (0.8)."""
    if task not in DERIVED_TASKS:
        raise ValueError(f"unknown downstream task {task!r}; derived tasks: {', '.join(DERIVED_TASKS)}")
    images, meshes, records, identities = _read_faces(Path(shards), progress)
    size = images.shape[1]
    split = np.array([identity_split(i) for i in identities])
    keys = [r.key for r in records]
    if task == "alignment":
        targets, names = np.stack([alignment_target(m) for m in meshes]), tuple(str(i) for i in range(68))
    elif task == "parsing":
        targets, names = np.stack([parsing_mask(m, size) for m in meshes]), PARSING_CLASSES
    elif task == "pose":
        if mesh_model is None:
            raise ValueError("derived head pose runs the face mesh again: give its model (mesh_model)")
        targets, names = _poses(images, records, FaceMesh(mesh_model), progress), ("yaw", "pitch", "roll")
    else:
        expression, attributes = proxy_labels(meshes)
        targets, names = (expression, EXPRESSION_CLASSES) if task == "expression" else (attributes, DERIVED_ATTRIBUTES)
    return DerivedSet(task, images, targets, split, keys, len(names), names, meshes)


def _poses(images: np.ndarray, records: list[FaceRecord], mesh: FaceMesh, progress: bool) -> np.ndarray:
    order = tqdm(range(len(records)), desc="mesh 3-D", unit="face", disable=not progress)
    points = np.stack([mesh_aligned_face(mesh, images[i], records[i].landmarks).points for i in order])
    canonical = canonical_face(points)
    return np.stack([head_pose(p, canonical) for p in points])
