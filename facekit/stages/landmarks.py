"""The ``landmarks`` stage: aligned faces -> the same faces with MediaPipe's 468 dense landmarks.

Runs between ``detect_align`` and ``pack``. Per shard (:func:`landmarks_shard`, a pure function of the
parameters and the shard id) it reads ``in_dir/shard-NNNNN.lmdb``, runs the face mesh on every crop
(:func:`~facekit.data.ops.landmarks.mesh_aligned_face`) and writes ``out_dir/shard-NNNNN.lmdb`` with
``extra["dense_landmarks"]``: [468, 2] float16, x, y in crop pixels. The mesh also sees a little beyond
the crop, so points near the chin may lie a few pixels outside the tight 112 crop; they are kept as
predicted, not clipped.

A face whose mesh finds no face (presence below ``min_presence``: ``mesh_failed``) or whose mesh lands
away from the detector's five points (:func:`~facekit.data.ops.landmarks.agreement` above
``max_disagreement``: ``mesh_disagrees``) is rejected with its numbers, or kept without dense landmarks
when ``on_failure="keep"``. Every record read is either written or rejected.
"""

from __future__ import annotations

import traceback
from functools import lru_cache
from pathlib import Path

import numpy as np
from tqdm import tqdm

from facekit.assets import resolve_model
from facekit.config import LandmarkParams, Params, PathsParams, section_hash
from facekit.data.images import ImageError, decode_crop_rgb
from facekit.data.ops.landmarks import DENSE_KEY, FaceMesh, MeshResult, agreement, mesh_aligned_face
from facekit.data.record import FaceRecord
from facekit.data.report import StageReport, withdraw_report
from facekit.data.shards import ShardReader, ShardWriter
from facekit.stages.shard_folders import shard_to_shard_ids
from facekit.stages.shard_map import ShardMap, process_map
from facekit.stages.sharding import shard_name


@lru_cache(maxsize=2)
def _mesh(model: str) -> FaceMesh:
    """One single-threaded face mesh per process (several processes scale better than threads)."""
    return FaceMesh(resolve_model(model), num_threads=1)


def stage_hash(params: Params, lparams: LandmarkParams) -> str:
    """Hash of every parameter that changes this stage's output."""
    return section_hash(params.source, params.detect, params.align, params.sharding, lparams)


def _failure(result: MeshResult, score: float, lparams: LandmarkParams) -> tuple[str, str] | None:
    """(reason, detail) when the mesh is not to be trusted, else None."""
    numbers = f"presence {result.presence:.3f}, disagreement {score:.3f} of the inter-ocular distance"
    if result.presence < lparams.min_presence:
        return "mesh_failed", f"{numbers}; min_presence {lparams.min_presence:g}"
    if not score <= lparams.max_disagreement:
        return "mesh_disagrees", f"{numbers}; max_disagreement {lparams.max_disagreement:g}"
    return None


def mesh_shard(
    params: Params, lparams: LandmarkParams, shard_id: int, in_dir: Path, out_dir: Path
) -> tuple[StageReport, list[float]]:
    """:func:`landmarks_shard`, plus the agreement of every face written with dense landmarks."""
    name = shard_name(shard_id)
    reader = ShardReader(in_dir / f"{name}.lmdb")
    meta = {**reader.meta, "stage": "landmarks", "params_hash": stage_hash(params, lparams)}
    for reserved in ("schema_version", "count", "content_hash"):
        meta.pop(reserved, None)
    mesh = _mesh(lparams.model)
    report = StageReport("landmarks", extra={"kept_without_landmarks": 0})
    scores: list[float] = []
    with ShardWriter(out_dir / f"{name}.lmdb", meta=meta) as writer:
        for i in range(len(reader)):
            record = reader[i]
            report.read += 1
            try:
                result = mesh_aligned_face(
                    mesh, decode_crop_rgb(record.image), record.landmarks, face_fraction=lparams.face_fraction
                )
                score = agreement(result.points, record.landmarks)
            except ImageError as e:
                report.reject(record.key, e.reason, e.detail)
                continue
            except Exception as e:  # a bug must not lose the record: it is reported with its cause
                where = traceback.extract_tb(e.__traceback__)[-1]
                detail = f"{type(e).__name__}: {e} ({where.filename}:{where.lineno})"
                report.reject(record.key, "internal_error", detail)
                continue
            failure = _failure(result, score, lparams)
            if failure is None:
                dense = result.points[:, :2].astype(np.float16)
                writer.put(record.replace(extra={**record.extra, DENSE_KEY: dense}))
                scores.append(score)
            elif lparams.on_failure == "keep":
                writer.put(_without_dense(record))
                report.extra["kept_without_landmarks"] += 1
            else:
                report.reject(record.key, *failure)
                continue
            report.written += 1
    reader.close()
    return report.check(), scores


def _without_dense(record: FaceRecord) -> FaceRecord:
    return record.replace(extra={k: v for k, v in record.extra.items() if k != DENSE_KEY})


def landmarks_shard(params: Params, lparams: LandmarkParams, shard_id: int, in_dir: Path, out_dir: Path) -> StageReport:
    """Add dense landmarks to the faces of ``in_dir/shard-NNNNN.lmdb``, into ``out_dir/shard-NNNNN.lmdb``.

    The report's extra holds ``kept_without_landmarks`` (faces written without dense landmarks because
    ``on_failure="keep"``); it merges by summing like every report. A median does not, so the median
    agreement is computed by :func:`run_landmarks` over the faces of all shards.
    """
    return mesh_shard(params, lparams, shard_id, in_dir, out_dir)[0]


def run_landmarks(
    params: Params,
    lparams: LandmarkParams,
    in_dir: Path,
    out_dir: Path,
    *,
    progress: bool = True,
    shard_map: ShardMap | None = None,
) -> StageReport:
    """All shards of ``in_dir`` (in ``params.sharding.workers`` processes unless ``shard_map`` says
    otherwise); the merged report's ``median_agreement`` is the median over every face of every shard."""
    ids = shard_to_shard_ids("landmarks", in_dir, out_dir, "run detect_align first")
    run = shard_map or process_map(params.sharding.workers)
    total = StageReport("landmarks", extra={"kept_without_landmarks": 0})
    scores: list[float] = []
    with tqdm(total=len(ids), desc="landmarks", unit="shard", disable=not progress) as bar:
        for rep, shard_scores in run(mesh_shard, [(params, lparams, i, in_dir, out_dir) for i in ids]):
            total.merge(rep)
            scores.extend(shard_scores)
            bar.set_postfix(faces=total.written, rejected=total.rejected)
            bar.update()
    if scores:  # over the faces written with dense landmarks
        total.extra["median_agreement"] = float(np.median(scores))
    return total.check()


def run(params: Params, paths: PathsParams, *, shard_map: ShardMap | None = None, progress: bool = True) -> StageReport:
    """The stage: dense landmarks for every face of ``paths.aligned`` into ``paths.landmarks`` (faces the
    mesh fails on are rejected), the report ``<metrics>/landmarks.json``."""
    withdraw_report(paths.report("landmarks"))
    aligned, out = Path(paths.aligned), Path(paths.landmarks)
    result = run_landmarks(params, params.landmarks, aligned, out, progress=progress, shard_map=shard_map)
    result.write(paths.report("landmarks"))
    return result
