"""Faces/s of facekit's detect + align + pack vs insightface's detector + norm_crop + one PNG per face.

Both run in this process's run on the same photos (the shared deepface photos, repeated ``--repeat``
times under distinct keys), on all cores of this machine. Baseline: the loop a researcher writes with
insightface's model zoo (SCRFD-500M at 640, ``norm_crop`` to 112, ``cv2.imwrite`` PNG). facekit: the
``detect_align`` and ``pack`` stages (single-threaded detector per process, JPEG crops into LMDB).

    FACEKIT_ASSETS=... python benchmarks/preprocess.py [--repeat 3]

Ends with ``speedup=<facekit / baseline faces/s> goal=1.5``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import cv2
from insightface.model_zoo import get_model
from insightface.utils.face_align import norm_crop

from facekit.assets import asset_path, assets_root
from facekit.config import PackParams, Params, SampleParams, ShardingParams, SourceParams
from facekit.data.stages.detect_align import run_detect_align
from facekit.data.stages.pack import run_pack
from facekit.data.stages.sample import run_sample

GOAL = 1.5


def baseline(photos: list[Path], out: Path, model: Path) -> tuple[int, float]:
    """insightface detect → largest face → norm_crop → PNG; returns (faces, seconds)."""
    detector = get_model(str(model))
    detector.prepare(ctx_id=-1, input_size=(640, 640), det_thresh=0.5)
    out.mkdir(parents=True)
    faces, start = 0, time.perf_counter()
    for i, path in enumerate(photos):
        img = cv2.imread(str(path))
        boxes, kps = detector.detect(img, input_size=(640, 640))
        if len(boxes) == 0:
            continue
        areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        crop = norm_crop(img, kps[areas.argmax()], image_size=112)
        cv2.imwrite(str(out / f"{i:06d}.png"), crop)
        faces += 1
    return faces, time.perf_counter() - start


def facekit_run(raw: Path, work: Path, workers: int) -> tuple[int, float]:
    """detect_align + pack stages over the identity folders in ``raw``; returns (faces, seconds)."""
    params = Params(
        source=SourceParams(path=str(raw), name="bench"),
        pack=PackParams(dedupe=False),  # the repeated photos are identical on purpose
        sharding=ShardingParams(num_shards=4 * workers, workers=workers),
    )
    start = time.perf_counter()
    run_detect_align(params, work / "aligned", progress=False)
    report = run_pack(params, work / "aligned", work / "shards", progress=False)
    return report.written, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="copies of the sample photos to process")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="facekit processes")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        sample = run_sample(SampleParams(), assets_root(), work / "one")
        raw = work / "raw"
        for r in range(args.repeat):  # distinct keys, same photos
            for photo in (work / "one").glob("*/*.jpg"):
                dst = raw / photo.parent.name / f"{photo.stem}_{r}.jpg"
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(photo, dst)
        photos = sorted(raw.glob("*/*.jpg"))
        print(f"photos: {len(photos)} ({sample.written} distinct x {args.repeat}), cores: {os.cpu_count()}")
        n_base, t_base = baseline(photos, work / "png", asset_path("models/scrfd_500m_bnkps.onnx"))
        print(f"baseline insightface + norm_crop + PNG: {n_base} faces, {t_base:.2f}s, {n_base / t_base:.1f} faces/s")
        n_fk, t_fk = facekit_run(raw, work, args.workers)
        print(
            f"facekit detect_align + pack, {args.workers} procs: {n_fk} faces, {t_fk:.2f}s, {n_fk / t_fk:.1f} faces/s"
        )
    print(f"speedup={(n_fk / t_fk) / (n_base / t_base):.2f} goal={GOAL}")


if __name__ == "__main__":
    main()
