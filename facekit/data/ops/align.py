"""Five-point face alignment: a similarity transform from detected landmarks onto the ArcFace template.

Landmarks are in ArcFace order (left eye, right eye, nose tip, left and right mouth corner, as seen in
the image), ``(x, y)`` pixels. Images are BGR uint8 ``[H, W, 3]``.

Deviation from insightface's ``norm_crop``: :func:`align_face` warps in float and rounds once, so its crop is
the nearest uint8 of the bilinear float crop (``cv2.warpAffine`` of the float32 image) and a lossless
``align.storage`` keeps exactly that. OpenCV's uint8 warp (``norm_crop``'s) rounds fixed-point weights and
is one grey level off on ~1 in 10,000 values of real photos (tests/data/test_align.py keeps the two within a
grey level; tests/data/test_crop_storage.py sees the rounding). Only the source pixels under the crop are
converted to float: ~0.5 ms per face against OpenCV's ~0.1 ms, next to detect_align's ~40 ms per photo.
"""

from __future__ import annotations

import cv2
import numpy as np
from skimage.transform import SimilarityTransform

#: [5, 2] float32, the standard ArcFace five points in a 112 x 112 crop.
ARCFACE_TEMPLATE = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    dtype=np.float32,
)
_ARCFACE_FRAME = 112.0


def alignment_template(size: int, face_fraction: float = 1.0) -> np.ndarray:
    """The ArcFace template for a ``size`` x ``size`` crop: [5, 2] float32.

    The 112 x 112 ArcFace frame is scaled to ``face_fraction * size`` pixels and centred, so
    ``face_fraction < 1`` leaves a margin around the face (e.g. 224 with 0.75 for self-supervised crops).
    ``alignment_template(112, 1.0)`` is ``ARCFACE_TEMPLATE``.
    """
    if size < 1:
        raise ValueError(f"size must be a positive number of pixels, got {size}")
    if not face_fraction > 0.0:
        raise ValueError(f"face_fraction must be positive, got {face_fraction}")
    scale = size * face_fraction / _ARCFACE_FRAME
    centred = (ARCFACE_TEMPLATE.astype(np.float64) - _ARCFACE_FRAME / 2) * scale + size / 2
    return centred.astype(np.float32)


def _as_points(points: np.ndarray, name: str, count: int | None = None) -> np.ndarray:
    arr = np.asarray(points, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != 2 or (count is not None and arr.shape[0] != count):
        want = f"[{count}, 2]" if count is not None else "[K, 2]"
        raise ValueError(f"{name} must have shape {want}, got {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return arr


def estimate_similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation) mapping ``src`` onto ``dst``.

    src, dst: [5, 2] points. Returns M: [2, 3] float64, ``dst ~= M @ [x, y, 1]``.
    """
    src_pts = _as_points(src, "src", 5)
    dst_pts = _as_points(dst, "dst", 5)
    tform = SimilarityTransform.from_estimate(src_pts, dst_pts)
    if not tform:
        raise ValueError(f"cannot fit a similarity transform to landmarks {src_pts.tolist()} (degenerate)")
    return tform.params[:2, :].copy()


def transform_points(points: np.ndarray, M: np.ndarray) -> np.ndarray:
    """Apply an affine ``M`` ([2, 3]) to ``points`` ([K, 2]); returns [K, 2] float32."""
    pts = _as_points(points, "points")
    M = np.asarray(M, dtype=np.float64)
    if M.shape != (2, 3):
        raise ValueError(f"M must have shape [2, 3], got {M.shape}")
    return (pts @ M[:, :2].T + M[:, 2]).astype(np.float32)


def align_face(
    img_bgr: np.ndarray, landmarks: np.ndarray, *, size: int = 112, face_fraction: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """Warp the face with ``landmarks`` ([5, 2], source pixels) onto :func:`alignment_template`.

    Returns the crop ([size, size, 3] uint8, same channel order as ``img_bgr``, black outside the
    source) and M ([2, 3] float64, source pixels -> crop pixels; map landmarks with
    :func:`transform_points`).
    """
    if not isinstance(img_bgr, np.ndarray) or img_bgr.dtype != np.uint8 or img_bgr.ndim != 3:
        raise ValueError(
            f"expected a uint8 image [H, W, 3], got {getattr(img_bgr, 'dtype', type(img_bgr).__name__)} "
            f"{getattr(img_bgr, 'shape', '')}"
        )
    M = estimate_similarity(landmarks, alignment_template(size, face_fraction))
    return warp_rounded(img_bgr, M, size), M


def warp_rounded(img: np.ndarray, M: np.ndarray, size: int) -> np.ndarray:
    """``[size, size, C]`` uint8: the bilinear warp of ``img`` ([H, W, C] uint8) by ``M`` ([2, 3], source ->
    crop pixels), computed in float32 on the source pixels under the crop and rounded (black outside)."""
    corners = np.array([[0, 0], [size - 1, 0], [0, size - 1], [size - 1, size - 1]], np.float64)
    inverse = cv2.invertAffineTransform(M)
    source = corners @ inverse[:, :2].T + inverse[:, 2]
    h, w = img.shape[:2]
    x0, y0 = np.clip(np.floor(source.min(axis=0)).astype(int) - 1, 0, [w, h])
    x1, y1 = np.clip(np.ceil(source.max(axis=0)).astype(int) + 2, 0, [w, h])
    if x1 <= x0 or y1 <= y0:
        return np.zeros((size, size, img.shape[2]), np.uint8)
    shifted = M.copy()
    shifted[:, 2] += M[:, :2] @ [x0, y0]  # the region's pixel (0, 0) is the image's (x0, y0)
    region = img[y0:y1, x0:x1].astype(np.float32)
    crop = cv2.warpAffine(region, shifted, (size, size), flags=cv2.INTER_LINEAR, borderValue=0.0)
    return np.rint(crop).clip(0, 255).astype(np.uint8)
