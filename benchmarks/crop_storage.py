"""What each ``align.storage`` and ``align.decode`` costs: bytes, error, encode and decode time per crop.

On the shared deepface photos, every photo goes through :func:`facekit.data.ops.detect_align.align_record`
twice (``align.decode: reduced`` and ``full``, PNG storage, so the stored crop is the aligned uint8 crop
itself). The reference is the float crop: the bilinear warp (``cv2.warpAffine``, float32) of the
full-resolution decode with the landmarks detect_align found. Per (decode, storage) row:

- bytes per crop (mean), mean and max absolute error of the decoded crop against the float crop (grey
  levels, over every pixel and channel of every photo);
- encode and decode time per crop: :func:`~facekit.data.images.encode_crop` and
  :func:`~facekit.data.images.decode_crop_rgb` (what the training loaders call), median of ``--rounds``
  rounds over all crops, one thread. WebP lossless (OpenCV) is measured for comparison only: it is not
  offered (smaller than PNG, but no faster to decode and far slower to encode).

The baseline is today's default, ``reduced`` + ``jpeg`` (4:2:0, q95), measured in the same run; the last
line gives each option's bytes and decode time as ratios of it. A second line gives detect_align's time per
photo (``align_record``: decode, detect, align, PNG encode) with each ``align.decode``, over the photos
large enough to be decoded reduced.

    FACEKIT_ASSETS=... python benchmarks/crop_storage.py [--rounds 7]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

from facekit.assets import assets_root
from facekit.config import AlignParams, DetectParams
from facekit.data.images import CROP_STORAGES, decode_crop_rgb, decode_image, decode_image_reduced, encode_crop
from facekit.data.ops.align import alignment_template, estimate_similarity
from facekit.data.ops.detect import select_face
from facekit.data.ops.detect_align import align_record, load_detector
from facekit.data.record import FaceRecord, RawRecord

DETECT = DetectParams()
ALIGN = AlignParams()
DECODES = ("reduced", "full")


def float_crop(data: bytes) -> np.ndarray:
    """[size, size, 3] float32 BGR: the bilinear warp of the full-size decode, with detect_align's landmarks."""
    view = decode_image_reduced(data, min_side=DETECT.input_size)
    dets = load_detector(DETECT).detect(view.pixels)
    landmarks = view.to_full(dets.landmarks[select_face(dets, min_size=DETECT.min_face_size)])
    m = estimate_similarity(landmarks, alignment_template(ALIGN.size, ALIGN.face_fraction))
    image = decode_image(data).astype(np.float32)
    return cv2.warpAffine(image, m, (ALIGN.size, ALIGN.size), flags=cv2.INTER_LINEAR, borderValue=0.0)


def median_per_item(fn: Callable[[int], object], count: int, rounds: int) -> float:
    """Median over ``rounds`` of the time per call of ``fn(0..count-1)``, microseconds."""
    per_round = []
    for _ in range(rounds):
        start = time.perf_counter()
        for i in range(count):
            fn(i)
        per_round.append((time.perf_counter() - start) / count * 1e6)
    return statistics.median(per_round)


def webp_lossless() -> tuple[Callable[[np.ndarray], bytes], Callable[[bytes], np.ndarray]]:
    """(encode BGR, decode to RGB) for OpenCV's WebP lossless (quality > 100)."""
    return (
        lambda bgr: cv2.imencode(".webp", bgr, [cv2.IMWRITE_WEBP_QUALITY, 101])[1].tobytes(),
        lambda data: cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR_RGB),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=Path, default=None, help="folder of photos (default: the deepface sample)")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    folder = args.photos or assets_root() / "faces" / "deepface"
    photos = {p.name: p.read_bytes() for p in sorted(folder.glob("*.jpg"))}

    crops: dict[str, list[np.ndarray]] = {decode: [] for decode in DECODES}
    references, align_ms = [], {decode: [] for decode in DECODES}
    for name, data in photos.items():
        records = {}
        for decode in DECODES:
            start = time.perf_counter()
            records[decode] = align_record(RawRecord(name, data), DETECT, AlignParams(storage="png", decode=decode))
            elapsed = (time.perf_counter() - start) * 1e3
            if decode_image_reduced(data, min_side=DETECT.input_size).reduction > 1:
                align_ms[decode].append(elapsed)
        if not all(isinstance(r, FaceRecord) for r in records.values()):
            continue
        for decode, record in records.items():
            crops[decode].append(np.ascontiguousarray(decode_crop_rgb(record.image)[..., ::-1]))
        references.append(float_crop(data))
    n = len(references)
    print(f"{n} crops of {len(photos)} photos ({folder.name}), {ALIGN.size} px, JPEG quality {ALIGN.jpeg_quality}")

    codecs: dict[str, tuple[Callable[[np.ndarray], bytes], Callable[[bytes], np.ndarray]]] = {
        storage: (lambda bgr, s=storage: encode_crop(bgr, s, ALIGN.jpeg_quality), decode_crop_rgb)
        for storage in CROP_STORAGES
    }
    codecs["webp lossless (not offered)"] = webp_lossless()
    rows = []
    for decode in DECODES:
        for storage, (encode, decode_rgb) in codecs.items():
            if decode == "reduced" and storage not in CROP_STORAGES:
                continue
            encoded = [encode(c) for c in crops[decode]]
            errors = np.stack([np.abs(decode_rgb(e)[..., ::-1] - r) for e, r in zip(encoded, references, strict=True)])
            rows.append(
                (
                    decode,
                    storage,
                    float(np.mean([len(e) for e in encoded])),
                    float(errors.mean()),
                    float(errors.max()),
                    median_per_item(lambda i, e=encode, c=crops[decode]: e(c[i]), n, args.rounds),
                    median_per_item(lambda i, d=decode_rgb, e=encoded: d(e[i]), n, args.rounds),
                )
            )
    uint8 = np.stack([np.abs(c - r) for c, r in zip(crops["full"], references, strict=True)])
    print(
        "| `align.decode` | `align.storage` | bytes/crop | mean abs error | max abs error | encode µs | decode µs |\n"
        "|---|---|---|---|---|---|---|"
    )
    for decode, storage, size, mean, worst, enc, dec in rows:
        print(f"| {decode} | {storage} | {size:,.0f} | {mean:.2f} | {worst:.0f} | {enc:.0f} | {dec:.0f} |")
    print(f"(the uint8 crop itself, full decode, before storage: mean {uint8.mean():.2f}, max {uint8.max():.2f})")
    print(
        f"align_record ms/photo over the {len(align_ms['full'])} photos decoded reduced for detection: "
        + ", ".join(f"{decode} {statistics.median(align_ms[decode]):.1f}" for decode in DECODES)
        + " (median)"
    )
    base = rows[0]
    ratios = ", ".join(
        f"{decode}+{storage}: bytes {size / base[2]:.2f}x decode {dec / base[6]:.2f}x"
        for decode, storage, size, _, _, _, dec in rows[1:]
        if storage in CROP_STORAGES
    )
    print(f"vs baseline reduced+jpeg ({base[2]:,.0f} B, {base[6]:.0f} µs decode): {ratios}")


if __name__ == "__main__":
    main()
