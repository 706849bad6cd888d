"""The lineage steps as the command line, DVC and Prefect run them: stage + report + picture.

Each step runs its stage, writes the stage report (a DVC metrics file plus the rejections list) and,
where a person would rather look, a PNG grid of faces. The CLI and the Prefect flow both call these,
so there is one code path; ``shard_map`` lets an orchestrator fan the per-shard work out.
"""

from __future__ import annotations

from pathlib import Path

from facekit.assets import assets_root
from facekit.config import Params
from facekit.data.report import StageReport
from facekit.data.shards import read_index
from facekit.data.stages.detect_align import run_detect_align
from facekit.data.stages.fanout import ShardMap
from facekit.data.stages.pack import run_pack, save_face_grid
from facekit.data.stages.sample import run_sample

ALIGNED = Path("data/aligned")
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


def pack_step(
    params: Params,
    *,
    aligned: Path = ALIGNED,
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
