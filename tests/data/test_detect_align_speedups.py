"""detect_align's shortcuts lose nothing: reduced-decode crops vs the full-decode path and the fallback to a
larger decode for small faces (the largest-shard-first order: tests/stages/test_detect_align.py)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from facekit.config import AlignParams, DetectParams
from facekit.data.images import decode_image, decode_image_reduced, decode_jpeg_rgb, encode_jpeg
from facekit.data.ops.align import align_face
from facekit.data.ops.detect import FaceDetector, create_detector, select_face
from facekit.data.ops.detect_align import align_record
from facekit.data.record import FaceRecord, RawRecord, Rejection
from facekit.eval.embedder import OnnxEmbedder

DETECT, ALIGN = DetectParams(), AlignParams()


@pytest.fixture(scope="module")
def detector(assets: Path) -> FaceDetector:
    return create_detector("scrfd", assets / DETECT.model, input_size=DETECT.input_size)


def _full_path_crop(data: bytes, detector: FaceDetector) -> tuple[np.ndarray, np.ndarray]:
    """The plain path: full decode → detect → largest face → align. Returns (BGR crop, [5, 2] landmarks)."""
    img = decode_image(data)
    dets = detector.detect(img)
    i = select_face(dets, min_size=DETECT.min_face_size)
    assert i is not None
    return align_face(img, dets.landmarks[i])[0], dets.landmarks[i]


def _record_crop(data: bytes, key: str = "photo") -> tuple[FaceRecord, np.ndarray]:
    record = align_record(RawRecord(key, data), DETECT, ALIGN)
    assert isinstance(record, FaceRecord), record
    return record, decode_jpeg_rgb(record.image)[:, :, ::-1]


def _mad(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float32) - b).mean())


def test_reduced_decode_crops_match_the_full_decode_path(assets: Path, detector: FaceDetector) -> None:
    """On every real photo decoded reduced: same landmarks → crops within ~2 grey levels (the decode
    alone); end to end (own detection, JPEG) within a few grey levels and the same identity."""
    photos = sorted((assets / "faces" / "deepface").glob("*.jpg"))
    same_landmarks, end_to_end, full_crops, our_crops = [], [], [], []
    for path in photos:
        data = path.read_bytes()
        view = decode_image_reduced(data, min_side=DETECT.input_size)
        if view.reduction == 1:
            continue
        full_crop, landmarks = _full_path_crop(data, detector)
        same_landmarks.append(_mad(align_face(view.pixels, view.from_full(landmarks))[0], full_crop))
        record, ours = _record_crop(data, path.stem)
        full_jpeg = decode_jpeg_rgb(encode_jpeg(full_crop, ALIGN.jpeg_quality))[:, :, ::-1]
        end_to_end.append(_mad(ours, full_jpeg))
        full_crops.append(full_jpeg)
        our_crops.append(ours)
        assert record.bbox[2] > record.bbox[0] and record.bbox[2] <= view.full_size[0] + 1, "bbox in full pixels"
    assert len(same_landmarks) >= 25
    assert np.mean(same_landmarks) < 3.0 and max(same_landmarks) < 8.0, same_landmarks
    assert np.mean(end_to_end) < 6.5 and max(end_to_end) < 18.0, end_to_end
    embedder = OnnxEmbedder(assets / "models/mobilefacenet_128d.onnx")
    ref = embedder.embed(np.stack(full_crops)[..., ::-1].copy())
    new = embedder.embed(np.stack(our_crops)[..., ::-1].copy())
    cosine = (ref * new).sum(1) / np.linalg.norm(ref, axis=1) / np.linalg.norm(new, axis=1)
    assert cosine.min() > 0.85 and cosine.mean() > 0.97, cosine


@pytest.mark.parametrize(("photo_scale", "max_mad"), [(0.19, 2.5), (0.3, 4.0)])
def test_small_faces_are_aligned_from_a_larger_decode(
    assets: Path, detector: FaceDetector, photo_scale: float, max_mad: float
) -> None:
    """A face that the 1/4 detection image holds below the crop's resolution is aligned from a decode
    that holds it (1/1 for a face at ~0.7 crop px per pixel, 1/2 at ~0.45): as sharp as the full decode
    with the same landmarks. Aligning from the 1/4 image upsamples and misses these bounds (7.1 and 4.9)."""
    photo = cv2.imread(str(assets / "faces" / "deepface" / "img1.jpg"))
    small = cv2.resize(photo, None, fx=photo_scale, fy=photo_scale, interpolation=cv2.INTER_AREA)
    canvas = np.full((2000, 2600, 3), 128, np.uint8)
    canvas[700 : 700 + small.shape[0], 1100 : 1100 + small.shape[1]] = small
    data = encode_jpeg(canvas, 95)
    view = decode_image_reduced(data, min_side=DETECT.input_size)
    assert view.reduction == 4
    dets = detector.detect(view.pixels)
    landmarks = view.to_full(dets.landmarks[select_face(dets, min_size=5.0)])
    expected = align_face(decode_image(data), landmarks)[0]
    _, ours = _record_crop(data)
    assert _mad(ours, expected) < max_mad


@pytest.mark.parametrize("size", [(1, 1), (19, 300), (300, 12)])
def test_photo_smaller_than_min_face_size_is_too_small(size: tuple[int, int], assets: Path) -> None:
    """A 1x1 photo, or one whose shorter side is below min_face_size, says so instead of ``no_face``."""
    face = cv2.resize(decode_image((assets / "faces" / "deepface" / "img1.jpg").read_bytes()), size)
    result = align_record(RawRecord("tiny", encode_jpeg(face)), DETECT, ALIGN)
    assert isinstance(result, Rejection) and result.reason == "too_small", result
    assert f"{size[0]}x{size[1]}" in result.detail and "min_face_size" in result.detail
    large_enough = cv2.resize(face, (20, 20))
    result = align_record(RawRecord("tiny", encode_jpeg(large_enough)), DETECT, ALIGN)
    assert isinstance(result, Rejection) and result.reason in ("no_face", "face_too_small"), result
