"""detect_align's shortcuts lose nothing: reduced-decode crops vs the full-decode path, the fallback to a
larger decode for small faces, and the largest-shard-first order of the process pool."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from facekit.config import AlignParams, DetectParams, Params, ShardingParams, SourceParams
from facekit.data.images import decode_image, decode_image_reduced, decode_jpeg_rgb, encode_jpeg
from facekit.data.ops.align import align_face
from facekit.data.ops.detect import FaceDetector, create_detector, select_face
from facekit.data.record import FaceRecord, RawRecord
from facekit.data.stages.detect_align import align_record, run_detect_align
from facekit.data.stages.sharding import shard_of
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


def test_shards_start_largest_first_and_reports_merge_in_shard_order(tmp_path: Path) -> None:
    """The pool gets the shards by decreasing key count; the merged rejections stay in shard order."""
    raw = tmp_path / "raw"
    for i in range(40):
        (raw / f"id{i % 3}").mkdir(parents=True, exist_ok=True)
        (raw / f"id{i % 3}" / f"{i:03d}.jpg").write_text("not a photo")
    params = Params(source=SourceParams(path=str(raw), name="t"), sharding=ShardingParams(num_shards=5, workers=1))
    sizes = Counter(shard_of(f"t/id{i % 3}/{i:03d}", 5) for i in range(40))
    calls: list[int] = []

    def recording_map(fn: Callable[..., Any], args: Sequence[tuple[Any, ...]]) -> Iterator[Any]:
        for call in args:
            calls.append(call[1])
            yield fn(*call)

    report = run_detect_align(params, tmp_path / "aligned", progress=False, shard_map=recording_map)
    assert sorted(calls) == list(range(5))
    assert [sizes[i] for i in calls] == sorted(sizes.values(), reverse=True)
    assert (report.read, report.rejected) == (40, 40)
    assert [shard_of(r.key, 5) for r in report.rejections] == sorted(shard_of(r.key, 5) for r in report.rejections)
