"""The ``pack`` stage: per-shard aligned faces → final LMDB shards with an ``index.json``.

Two steps so that shards can be packed independently (by a process pool or Prefect task runners):
:func:`plan_pack` reads the keys, labels and source hashes of every aligned shard and decides which records
are duplicates (identical source files: the smallest key is kept; a copy labelled with another identity is
rejected as ``duplicate_conflicting_identity``); :func:`pack_shard` then re-packs one aligned shard into final
shards under the size limit, a pure function of its inputs.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from facekit.config import Params, PathsParams, section_hash
from facekit.data.grid import save_grid
from facekit.data.images import decode_crop_rgb
from facekit.data.record import Rejection
from facekit.data.report import StageReport, withdraw_report
from facekit.data.shards import ShardInfo, ShardReader, ShardSetWriter, read_index, write_index
from facekit.stages.shard_map import ShardMap, process_map


@dataclass(frozen=True)
class PackPlan:
    """Aligned shards in order, the identity table, and duplicate key → its rejection (naming the kept key)."""

    shards: list[Path]
    identities: list[str]
    duplicates: dict[str, Rejection]
    max_shard_bytes: int
    params_hash: str


def plan_pack(params: Params, aligned_dir: Path) -> PackPlan:
    """Scan the aligned shards (keys, identities and source sha256) and find duplicate source files."""
    shards = sorted(aligned_dir.glob("shard-*.lmdb"))
    if not shards:
        raise FileNotFoundError(f"no aligned shards in {aligned_dir}: run detect_align first")
    identities = ShardReader(shards[0]).meta["identities"]
    entries = {r.key: (r.source_sha256, r.identity) for path in shards for r in ShardReader(path)}
    kept: dict[str, str] = {}
    for key in sorted(entries):
        kept.setdefault(entries[key][0], key)
    duplicates: dict[str, Rejection] = {}
    if params.pack.dedupe:
        for key, (sha, identity) in entries.items():
            if kept[sha] != key:
                duplicates[key] = _duplicate_rejection(key, identity, kept[sha], entries[kept[sha]][1], identities)
    upstream = (params.source, params.detect, params.align, params.sharding, params.landmarks, params.masks)
    phash = section_hash(*upstream, params.pack)
    return PackPlan(shards, identities, duplicates, params.pack.max_shard_bytes, phash)


def _duplicate_rejection(
    key: str, identity: int, kept_key: str, kept_identity: int, identities: list[str]
) -> Rejection:
    """The rejection of ``key``, a copy of ``kept_key``'s file; it names both labels when they differ."""
    if identity == kept_identity:
        return Rejection(key, "duplicate", f"same file as {kept_key}")

    def name(i: int) -> str:
        return identities[i] if i >= 0 else "unlabelled"

    detail = f"same file as {kept_key}, labelled {name(kept_identity)!r} there and {name(identity)!r} here"
    return Rejection(key, "duplicate_conflicting_identity", detail)


def pack_shard(plan: PackPlan, index: int, out_dir: Path) -> tuple[list[ShardInfo], StageReport]:
    """Re-pack aligned shard ``index`` into ``out_dir/part-NNNNN-MMMMM.lmdb`` (size-limited parts)."""
    report = StageReport("pack")
    meta = {"identities": plan.identities, "params_hash": plan.params_hash}
    writer = ShardSetWriter(out_dir, f"part-{index:05d}", max_shard_bytes=plan.max_shard_bytes, meta=meta)
    for record in ShardReader(plan.shards[index]):
        report.read += 1
        if record.key in plan.duplicates:
            report.rejections.append(plan.duplicates[record.key])
            continue
        writer.put(record)
        report.written += 1
    return writer.close(), report.check()


def run_pack(
    params: Params, aligned_dir: Path, out_dir: Path, *, progress: bool = True, shard_map: ShardMap | None = None
) -> StageReport:
    """Plan, pack every aligned shard, write ``index.json``; returns the merged report."""
    plan = plan_pack(params, aligned_dir)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    run = shard_map or process_map(params.sharding.workers)
    total = StageReport("pack")
    infos: list[ShardInfo] = []
    n = len(plan.shards)
    with tqdm(total=n, desc="pack", unit="shard", disable=not progress) as bar:
        for shard_infos, rep in run(pack_shard, [(plan, i, out_dir) for i in range(n)]):
            infos.extend(shard_infos)
            total.merge(rep)
            bar.update()
    write_index(out_dir, infos, identities=plan.identities, params_hash=plan.params_hash)
    total.extra.update({"shards": len(infos), "identities": len(plan.identities)})
    return total.check()


def save_face_grid(shards: list[Path], path: Path, count: int) -> Path:
    """A PNG grid of the first ``count`` faces of ``shards``."""
    faces: list[np.ndarray] = []
    for shard in shards:
        for record in ShardReader(shard):
            if len(faces) == count:
                return save_grid(faces, path)
            faces.append(decode_crop_rgb(record.image))
    return save_grid(faces, path)


def run(params: Params, paths: PathsParams, *, shard_map: ShardMap | None = None, progress: bool = True) -> StageReport:
    """The stage: the faces of ``paths.masked`` de-duplicated and packed into ``paths.shards``, the report
    ``<metrics>/pack.json`` and a grid of the packed faces ``<plots>/faces.png``."""
    withdraw_report(paths.report("pack"))
    out = Path(paths.shards)
    result = run_pack(params, Path(paths.masked), out, progress=progress, shard_map=shard_map)
    result.write(paths.report("pack"))
    save_face_grid([out / s["name"] for s in read_index(out)["shards"]], paths.plot("faces"), params.pack.grid_size)
    return result
