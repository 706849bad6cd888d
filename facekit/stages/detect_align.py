"""The ``detect_align`` stage: raw photos → detected, 5-point-aligned faces in per-shard LMDBs.

The unit of work is one shard (:func:`detect_align_shard`, a pure function of the parameters and the
shard id), so the same code runs serially, in a local process pool (:func:`run_detect_align`) or fanned
out by Prefect over Dask workers. Every key of the source ends up either in the shard or in the shard's
report as a rejection with its reason; each photo goes through
:func:`~facekit.data.ops.detect_align.align_record`.

A shard's report (its counts and rejections) is stored inside the shard and becomes visible with it, in
one rename; a re-run (after a crash or ``kill -9`` at any point) keeps the complete shards made with the
same parameters, redoes the others and derives the stage report from the shards' reports, so it gives
the content and counts of an uninterrupted run. The stage report is withdrawn when the stage starts and
written (atomically) when it ends: a report on disk describes the shards of a completed run. The crash
tests stop the stage right after each of its writes with ``FACEKIT_FAULT`` (:mod:`facekit.data.faults`
lists the points).
"""

from __future__ import annotations

import shutil
import traceback
from collections import Counter
from pathlib import Path

from tqdm import tqdm

from facekit.config import Params, PathsParams, section_hash
from facekit.data.ops.detect_align import align_record, load_detector
from facekit.data.record import FaceRecord, Rejection
from facekit.data.report import StageReport, withdraw_report
from facekit.data.shards import ShardError, ShardReader, ShardWriter
from facekit.data.sources import open_source
from facekit.data.sources.base import Source, SourceError
from facekit.stages.pack import save_face_grid
from facekit.stages.shard_map import ShardMap, process_map
from facekit.stages.sharding import shard_name, shard_of


def stage_hash(params: Params) -> str:
    """Hash of every parameter that changes this stage's output."""
    return section_hash(params.source, params.detect, params.align, params.sharding)


def detect_align_shard(params: Params, shard_id: int, out_dir: Path) -> StageReport:
    """Process the source keys of one shard into ``out_dir/shard-NNNNN.lmdb``, its report stored in it.

    A shard already complete with the same parameters is kept as it is (resume after a crash).
    """
    shard_path = out_dir / f"{shard_name(shard_id)}.lmdb"
    phash = stage_hash(params)
    done = _complete_report(shard_path, phash)
    if done is not None:
        return done
    if params.detect.assume_aligned and params.align.face_fraction != 1.0:
        raise ValueError("assume_aligned sources are ArcFace crops: align.face_fraction must be 1.0")
    source = open_source(params.source.spec())
    keys = [k for k in source.keys() if shard_of(k, params.sharding.num_shards) == shard_id]
    meta = {"identities": source.identities(), "params_hash": phash, "stage": "detect_align"}
    report = StageReport("detect_align")
    with ShardWriter(shard_path, meta=meta) as writer:
        for key in keys:
            report.read += 1
            result = _process_key(source, key, params)
            if isinstance(result, Rejection):
                report.rejections.append(result)
            else:
                writer.put(result)
                report.written += 1
        writer.report = report.check().to_json()
    return report


def _complete_report(shard_path: Path, params_hash: str) -> StageReport | None:
    """The stored report of the shard at ``shard_path`` when it was made with ``params_hash``, else None."""
    if not shard_path.is_dir():
        return None
    reader = ShardReader(shard_path)
    try:
        stored = reader.report if reader.meta.get("params_hash") == params_hash else None
    except ShardError:  # not a shard of this facekit: it is rewritten
        return None
    finally:
        reader.close()
    return None if stored is None else StageReport.from_json(stored)


def _process_key(source: Source, key: str, params: Params) -> FaceRecord | Rejection:
    try:
        return align_record(source.read(key), params.detect, params.align)
    except SourceError as e:
        return Rejection(key, e.reason, e.detail)
    except Exception as e:  # a bug must not lose the record: it is reported with its cause
        where = traceback.extract_tb(e.__traceback__)[-1]
        return Rejection(key, "internal_error", f"{type(e).__name__}: {e} ({where.filename}:{where.lineno})")


def run_detect_align(
    params: Params, out_dir: Path, *, progress: bool = True, shard_map: ShardMap | None = None
) -> StageReport:
    """All shards (in ``params.sharding.workers`` processes unless ``shard_map`` says otherwise).

    Shards start largest first (longest-processing-time order), so with a few shards per worker no
    worker idles while another finishes a big shard started last; reports merge in shard order.
    """
    if not params.detect.assume_aligned:
        load_detector(params.detect)  # a missing or broken model fails here, before any photo is read
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in [*out_dir.glob("*.tmp"), *out_dir.glob("*.old")]:  # left by a killed run
        shutil.rmtree(stale)
    n = params.sharding.num_shards
    sizes = Counter(shard_of(key, n) for key in open_source(params.source.spec()).keys())
    order = sorted(range(n), key=lambda i: -sizes[i])
    run = shard_map or process_map(params.sharding.workers)
    reports: dict[int, StageReport] = {}
    faces = rejected = 0
    with tqdm(total=n, desc="detect_align", unit="shard", disable=not progress) as bar:
        for shard_id, rep in zip(order, run(detect_align_shard, [(params, i, out_dir) for i in order]), strict=True):
            reports[shard_id] = rep
            faces, rejected = faces + rep.written, rejected + rep.rejected
            bar.set_postfix(faces=faces, rejected=rejected)
            bar.update()
    total = StageReport("detect_align")
    for shard_id in range(n):
        total.merge(reports[shard_id])
    return total.check()


def run(params: Params, paths: PathsParams, *, shard_map: ShardMap | None = None, progress: bool = True) -> StageReport:
    """The stage: every source record into ``paths.aligned``, the report ``<metrics>/detect_align.json`` and a
    grid of the aligned faces ``<plots>/detect_align.png``."""
    withdraw_report(paths.report("detect_align"))
    out = Path(paths.aligned)
    result = run_detect_align(params, out, progress=progress, shard_map=shard_map)
    result.write(paths.report("detect_align"))
    save_face_grid(sorted(out.glob("shard-*.lmdb")), paths.plot("detect_align"), params.pack.grid_size)
    return result
