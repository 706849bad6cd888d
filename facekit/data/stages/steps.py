"""The lineage steps as the command line, DVC and Prefect run them: stage + report + picture.

Each step runs its stage, writes the stage report (a DVC metrics file plus the rejections list) and,
where a person would rather look, a PNG grid of faces. The CLI and the Prefect flow both call these,
so there is one code path; ``shard_map`` lets an orchestrator fan the per-shard work out.
"""

from __future__ import annotations

from pathlib import Path

from facekit.assets import asset_path, assets_root
from facekit.config import Params
from facekit.data.report import StageReport
from facekit.data.shards import ShardReader, read_index
from facekit.data.stages.detect_align import resolve_model, run_detect_align
from facekit.data.stages.fanout import ShardMap
from facekit.data.stages.landmarks import run_landmarks
from facekit.data.stages.masks import mask_quality_report, run_masks, save_mask_grid
from facekit.data.stages.pack import run_pack, save_face_grid
from facekit.data.stages.sample import run_sample

ALIGNED = Path("data/aligned")
LANDMARKS = Path("data/landmarks")
MASKED = Path("data/masked")
SHARDS = Path("data/shards")


def sample_step(params: Params, *, report: Path = Path("metrics/sample.json")) -> StageReport:
    """Copy the sample photos from the assets folder into ``params.sample.out``."""
    result = run_sample(params.sample, assets_root())
    result.write(report)
    return result


def detect_align_step(
    params: Params,
    *,
    out: Path = ALIGNED,
    report: Path = Path("metrics/detect_align.json"),
    grid: Path = Path("plots/detect_align.png"),
    shard_map: ShardMap | None = None,
    progress: bool = True,
) -> StageReport:
    """Detect and align every source record into per-shard LMDBs under ``out``."""
    result = run_detect_align(params, out, progress=progress, shard_map=shard_map)
    result.write(report)
    save_face_grid(sorted(out.glob("shard-*.lmdb")), grid, params.pack.grid_size)
    return result


def landmarks_step(
    params: Params,
    *,
    aligned: Path = ALIGNED,
    out: Path = LANDMARKS,
    report: Path = Path("metrics/landmarks.json"),
    shard_map: ShardMap | None = None,
    progress: bool = True,
) -> StageReport:
    """Dense MediaPipe landmarks for every aligned face (faces the mesh fails on are rejected)."""
    result = run_landmarks(params, params.landmarks, aligned, out, progress=progress, shard_map=shard_map)
    result.write(report)
    return result


def masks_step(
    params: Params,
    *,
    landmarks: Path = LANDMARKS,
    out: Path = MASKED,
    report: Path = Path("metrics/masks.json"),
    grid: Path = Path("plots/masks.png"),
    shard_map: ShardMap | None = None,
    progress: bool = True,
) -> StageReport:
    """Synthetic masked twins; with ``masks.quality_pairs`` set, the masked-face accuracy drop too."""
    result = run_masks(params, params.masks, landmarks, out, progress=progress, shard_map=shard_map)
    shards = sorted(out.glob("shard-*.lmdb"))
    if params.masks.quality_pairs:
        model, pairs = resolve_model(params.masks.quality_model), asset_path(params.masks.quality_pairs)
        result.extra.update(mask_quality_report(shards, model, pairs, mparams=params.masks))
    result.write(report)
    save_mask_grid([r for path in shards for r in ShardReader(path)], grid)
    return result


def pack_step(
    params: Params,
    *,
    aligned: Path = MASKED,
    out: Path = SHARDS,
    report: Path = Path("metrics/pack.json"),
    grid: Path = Path("plots/faces.png"),
    shard_map: ShardMap | None = None,
    progress: bool = True,
) -> StageReport:
    """De-duplicate and pack the aligned faces into size-limited shards with an ``index.json``."""
    result = run_pack(params, aligned, out, progress=progress, shard_map=shard_map)
    result.write(report)
    save_face_grid([out / s["name"] for s in read_index(out)["shards"]], grid, params.pack.grid_size)
    return result
