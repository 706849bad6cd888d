"""Faces/s of facekit's preprocessing stages vs insightface's detector + norm_crop + one PNG per face.

Both run in this process's run on the same photos (the shared deepface photos, repeated ``--repeat``
times under distinct keys), on all cores of this machine. Baseline: the loop a researcher writes with
insightface's model zoo (SCRFD-500M at 640, ``norm_crop`` to 112, ``cv2.imwrite`` PNG). facekit: the
lineage as DVC runs it with ``Params()`` defaults (single-threaded models, one per process):
``detect_align`` → ``landmarks`` (468-point mesh) → ``masks`` (synthetic masked twins) → ``pack``.

Per stage it prints faces/s (faces the stage wrote / its wall time), CPU ms per face (this process and
its workers; steadier than wall time on a shared machine) and the peak RSS so far (``ru_maxrss``
high-water marks of this process and of its largest worker). The speedup compares detect_align + pack
(faces packed / their summed wall time) with the baseline, as the DVC pipeline without the optional
landmarks and masks stages would do it.

    FACEKIT_ASSETS=... python benchmarks/preprocess.py [--repeat 3] [--workers N]

Ends with ``speedup=<facekit detect_align + pack / baseline faces/s> goal=1.5``.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
from insightface.model_zoo import get_model
from insightface.utils.face_align import norm_crop

from facekit.assets import asset_path, assets_root
from facekit.config import PackParams, Params, SampleParams, ShardingParams, SourceParams
from facekit.data.report import StageReport
from facekit.stages.detect_align import run_detect_align
from facekit.stages.landmarks import run_landmarks
from facekit.stages.masks import run_masks
from facekit.stages.pack import run_pack
from facekit.stages.sample import run_sample

GOAL = 1.5


@dataclass(frozen=True)
class Timing:
    """One measured step: faces written, wall seconds, CPU seconds of this process and its workers."""

    name: str
    faces: int
    wall_s: float
    cpu_s: float

    def line(self) -> str:
        rss_self, rss_child = peak_rss_mib()
        return (
            f"{self.name:<40s} {self.faces:4d} faces {self.wall_s:6.2f}s {self.faces / self.wall_s:6.1f} faces/s "
            f"{1000 * self.cpu_s / max(self.faces, 1):5.1f} cpu-ms/face  "
            f"peak RSS self {rss_self:.0f} MiB, largest worker {rss_child:.0f} MiB"
        )


def _cpu_seconds() -> float:
    """User + system CPU time of this process and of its finished (waited-for) workers."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def peak_rss_mib() -> tuple[float, float]:
    """RSS high-water marks (MiB) of this process and of its largest finished worker (Linux: KiB units)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_maxrss / 1024, kids.ru_maxrss / 1024


def timed(name: str, step: Callable[[], int]) -> Timing:
    """Run ``step`` (returns the faces it wrote) and measure it."""
    cpu, start = _cpu_seconds(), time.perf_counter()
    faces = step()
    timing = Timing(name, faces, time.perf_counter() - start, _cpu_seconds() - cpu)
    print(timing.line(), flush=True)
    return timing


def baseline(photos: list[Path], out: Path, model: Path) -> int:
    """insightface detect → largest face → norm_crop → PNG; returns the faces written."""
    detector = get_model(str(model))
    detector.prepare(ctx_id=-1, input_size=(640, 640), det_thresh=0.5)
    out.mkdir(parents=True)
    faces = 0
    for i, path in enumerate(photos):
        img = cv2.imread(str(path))
        boxes, kps = detector.detect(img, input_size=(640, 640))
        if len(boxes) == 0:
            continue
        areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        crop = norm_crop(img, kps[areas.argmax()], image_size=112)
        cv2.imwrite(str(out / f"{i:06d}.png"), crop)
        faces += 1
    return faces


def facekit_stages(raw: Path, work: Path, workers: int) -> dict[str, Timing]:
    """detect_align → landmarks → masks → pack over the identity folders in ``raw``, each timed."""
    params = Params(
        source=SourceParams(path=str(raw), name="bench"),
        pack=PackParams(dedupe=False),  # the repeated photos are identical on purpose
        sharding=ShardingParams(num_shards=4 * workers, workers=workers),
    )
    aligned, dense, masked = work / "aligned", work / "landmarks", work / "masked"

    def written(report: StageReport) -> int:
        return report.written

    steps: dict[str, Callable[[], int]] = {
        "detect_align": lambda: written(run_detect_align(params, aligned, progress=False)),
        "landmarks": lambda: written(run_landmarks(params, params.landmarks, aligned, dense, progress=False)),
        "masks": lambda: written(run_masks(params, params.masks, dense, masked, progress=False)),
        "pack": lambda: written(run_pack(params, masked, work / "shards", progress=False)),
    }
    return {name: timed(f"facekit {name}, {workers} procs", step) for name, step in steps.items()}


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
        model = asset_path("models/scrfd_500m_bnkps.onnx")
        base = timed("baseline insightface + norm_crop + PNG", lambda: baseline(photos, work / "png", model))
        stages = facekit_stages(raw, work, args.workers)
    da, pack = stages["detect_align"], stages["pack"]
    fk_rate = pack.faces / (da.wall_s + pack.wall_s)
    print(f"facekit detect_align + pack: {pack.faces} faces, {fk_rate:.1f} faces/s")
    cpu_ratio = (base.cpu_s / base.faces) / ((da.cpu_s + pack.cpu_s) / pack.faces)
    print(f"cpu-time ratio (baseline / facekit per face)={cpu_ratio:.2f}")
    print(f"speedup={fk_rate / (base.faces / base.wall_s):.2f} goal={GOAL}")


if __name__ == "__main__":
    main()
