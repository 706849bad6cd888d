"""One raw photo → one detected, 5-point-aligned face (:func:`align_record`), as the ``detect_align`` stage
makes them.

A JPEG much larger than the detector input is decoded at 1/2, 1/4 or 1/8 in the DCT domain for detection
(:func:`~facekit.data.images.decode_image_reduced`, longer side still >= ``detect.input_size``). The face
is aligned from that same image when it still holds at least the crop's resolution over the face (the
similarity onto the template is a downscale); otherwise the photo is decoded again at the largest
reduction that does (at worst full size), so the shortcut never loses detail the crop could show.
``align.decode: full`` aligns every reduced photo from its full-size decode instead (the DCT-reduced pixels
differ from a bilinear warp of the full-size ones by ~1 grey level on average). The crop is stored as
``align.storage`` says (:func:`~facekit.data.images.encode_crop`). Boxes, ``min_face_size`` and the reports
are in full-resolution source pixels either way. A photo whose shorter side is below ``min_face_size``
cannot hold a face that is kept: it is rejected as ``too_small`` before detection (rather than as ``no_face``).
"""

from __future__ import annotations

import hashlib
from functools import lru_cache

import cv2
import numpy as np

from facekit.assets import AssetsError, resolve_model
from facekit.config import AlignParams, DetectParams
from facekit.data.images import (
    DCT_REDUCTIONS,
    ImageError,
    ReducedImage,
    decode_image,
    decode_image_reduced,
    encode_crop,
)
from facekit.data.ops.align import ARCFACE_TEMPLATE, align_face, transform_points
from facekit.data.ops.detect import Detections, FaceDetector, create_detector, select_face
from facekit.data.record import FaceRecord, RawRecord, Rejection

JPEG_SOI = b"\xff\xd8"


@lru_cache(maxsize=4)
def load_detector(params: DetectParams) -> FaceDetector:
    """One single-threaded detector per process (several processes scale better than threads). A model file
    that is missing or does not load as ``params.detector`` is a ValueError naming ``detect.model``."""
    try:
        path = resolve_model(params.model)
    except AssetsError as e:
        raise ValueError(f"detect.model: {e}") from None
    try:
        return create_detector(
            params.detector,
            path,
            input_size=params.input_size,
            score_threshold=params.score_threshold,
            nms_threshold=params.nms_threshold,
            num_threads=1,
        )
    except (RuntimeError, OSError, ValueError) as e:  # onnxruntime's load errors are RuntimeErrors
        raise ValueError(f"detect.model: {path} does not load as a {params.detector} detector: {e}") from None


def align_record(raw: RawRecord, detect: DetectParams, align: AlignParams) -> FaceRecord | Rejection:
    """Decode → detect → keep one face → align → encode. Never raises for bad input."""
    sha = hashlib.sha256(raw.data).hexdigest()
    channel_order = raw.meta.get("channel_order", "rgb")
    if detect.assume_aligned:
        try:
            img = decode_image(raw.data, max_pixels=detect.max_pixels, channel_order=channel_order)
        except ImageError as e:
            return Rejection(raw.key, e.reason, e.detail)
        return _already_aligned(raw, img, sha, align)
    try:
        view = decode_image_reduced(
            raw.data, min_side=detect.input_size, max_pixels=detect.max_pixels, channel_order=channel_order
        )
    except ImageError as e:
        return Rejection(raw.key, e.reason, e.detail)
    w, h = view.full_size
    if min(w, h) < detect.min_face_size:
        detail = f"{w}x{h} photo: its shorter side is below detect.min_face_size = {detect.min_face_size:g}"
        return Rejection(raw.key, "too_small", detail)
    dets = _full_resolution(load_detector(detect).detect(view.pixels), view)
    if len(dets) == 0:
        return Rejection(raw.key, "no_face", f"no face above score {detect.score_threshold} in {w}x{h}")
    i = select_face(dets, min_size=detect.min_face_size, policy=detect.select)
    if i is None:
        sides = np.minimum(dets.boxes[:, 2] - dets.boxes[:, 0], dets.boxes[:, 3] - dets.boxes[:, 1])
        return Rejection(
            raw.key,
            "face_too_small",
            f"{len(dets)} face(s), largest {sides.max():.0f}px < min_face_size {detect.min_face_size:g}",
        )
    crop, m, points = _align_without_loss(raw, view, dets.landmarks[i], detect, align)
    return FaceRecord(
        key=raw.key,
        image=encode_crop(crop, align.storage, align.jpeg_quality),
        identity=raw.identity,
        landmarks=transform_points(points, m).astype(np.float32),
        bbox=dets.boxes[i].astype(np.float32),
        det_score=float(dets.scores[i]),
        num_faces=len(dets),
        source=raw.source,
        source_sha256=sha,
    )


def _full_resolution(dets: Detections, view: ReducedImage) -> Detections:
    """Detections in ``view``'s pixels → full-resolution source pixels."""
    if view.reduction == 1:
        return dets
    boxes = view.to_full(dets.boxes.reshape(-1, 2, 2)).reshape(-1, 4)
    return Detections(boxes.astype(np.float32), dets.scores, view.to_full(dets.landmarks).astype(np.float32))


def _align_without_loss(
    raw: RawRecord, view: ReducedImage, landmarks: np.ndarray, detect: DetectParams, align: AlignParams
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Align from ``view`` if its similarity onto the template is a downscale (scale <= 1), else from the
    most reduced decode where it is (at worst full size; always full size with ``align.decode: full``).
    ``landmarks``: [5, 2] full-resolution pixels.

    Returns (crop [size, size, 3] uint8 BGR, M [2, 3] from the aligned image's pixels, landmarks [5, 2]
    in those pixels).
    """
    points = view.from_full(landmarks)
    crop, m = align_face(view.pixels, points, size=align.size, face_fraction=align.face_fraction)
    scale = float(np.sqrt(abs(np.linalg.det(m[:, :2]))))  # crop pixels per view pixel
    if view.reduction == 1 or (scale <= 1.0 and align.decode == "reduced"):
        return crop, m, points
    reduction = 1
    if align.decode == "reduced":
        full_scale = scale / view.reduction
        reduction = next(r for r in DCT_REDUCTIONS if r == 1 or (r < view.reduction and full_scale * r <= 1.0))
    channel_order = raw.meta.get("channel_order", "rgb")
    view = decode_image_reduced(
        raw.data, max_reduction=reduction, max_pixels=detect.max_pixels, channel_order=channel_order
    )
    points = view.from_full(landmarks)
    crop, m = align_face(view.pixels, points, size=align.size, face_fraction=align.face_fraction)
    return crop, m, points


def _already_aligned(raw: RawRecord, img: np.ndarray, sha: str, align: AlignParams) -> FaceRecord | Rejection:
    """Sources such as MS1MV2/3 hold ArcFace-aligned crops: keep them, resized to ``align.size``. An RGB JPEG of
    that size is kept as it is whatever ``align.storage`` says: re-encoding cannot undo its loss."""
    h, w = img.shape[:2]
    if h != w:
        return Rejection(raw.key, "not_aligned", f"assume_aligned needs square crops, got {w}x{h}")
    reusable = w == align.size and raw.meta.get("channel_order", "rgb") == "rgb" and raw.data[:2] == JPEG_SOI
    resized = cv2.resize(img, (align.size, align.size), interpolation=cv2.INTER_AREA)
    data = raw.data if reusable else encode_crop(resized, align.storage, align.jpeg_quality)
    return FaceRecord(
        key=raw.key,
        image=data,
        identity=raw.identity,
        landmarks=(ARCFACE_TEMPLATE * (align.size / 112.0)).astype(np.float32),
        bbox=np.array([0, 0, w, h], np.float32),
        det_score=1.0,
        num_faces=1,
        source=raw.source,
        source_sha256=sha,
    )
