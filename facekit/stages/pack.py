"""The ``pack`` stage: per-shard aligned faces → final LMDB shards with an ``index.json``.

Two steps so that shards can be packed independently (by a process pool or Prefect task runners):
:func:`plan_pack` reads the keys, labels and source hashes of every aligned shard and decides which records
are duplicates (identical source files: the smallest key is kept; a copy labelled with another identity is
rejected as ``duplicate_conflicting_identity``); :func:`pack_shard` then re-packs one aligned shard into final
shards under the size limit, a pure function of its inputs.
"""

from __future__ import annotations

import itertools
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from facekit.config import Params, PathsParams, section_hash
from facekit.data.grid import save_grid
from facekit.data.images import decode_crop_rgb
from facekit.data.record import FaceRecord, Rejection
from facekit.data.report import StageReport, withdraw_report
from facekit.data.shards import ShardInfo, ShardReader, ShardSetWriter, read_index, write_index
from facekit.stages.shard_map import ShardMap, process_map

#: faces per row (one person per row) of the face grids, and how many records a grid reads at most
GRID_COLUMNS = 8
GRID_SCAN_LIMIT = 20_000


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


def save_face_grid(shards: list[Path], path: Path, count: int, names: Sequence[str] | None = None) -> Path:
    """A PNG grid of about ``count`` faces of ``shards``: one row of up to 8 faces per person, people in order
    of first appearance, each face labelled with its identity (``names[identity]`` when given, else
    ``id <n>``); a source without identities fills the grid in shard order, unlabelled. Reads the shards
    in order until the rows are full (at most ``GRID_SCAN_LIMIT`` records)."""
    people = max(count // GRID_COLUMNS, 1)
    rows: dict[int, list[FaceRecord]] = {}
    unlabelled: list[FaceRecord] = []
    records = (record for shard in shards for record in ShardReader(shard))
    for record in itertools.islice(records, GRID_SCAN_LIMIT):
        if record.identity < 0:
            if len(unlabelled) < count:
                unlabelled.append(record)
            continue
        if record.identity not in rows and len(rows) < people:
            rows[record.identity] = []
        row = rows.get(record.identity)
        if row is not None and len(row) < GRID_COLUMNS:
            row.append(record)
        if len(rows) == people and all(len(r) == GRID_COLUMNS for r in rows.values()):
            break
    if not rows:
        return save_grid([decode_crop_rgb(r.image) for r in unlabelled], path, columns=GRID_COLUMNS)
    cells = [c for row in rows.values() for c in [*row, *[None] * (GRID_COLUMNS - len(row))]]
    faces = [None if r is None else decode_crop_rgb(r.image) for r in cells]
    labels = ["" if r is None else names[r.identity] if names else f"id {r.identity}" for r in cells]
    return save_grid(faces, path, columns=GRID_COLUMNS, labels=labels)


def run(params: Params, paths: PathsParams, *, shard_map: ShardMap | None = None, progress: bool = True) -> StageReport:
    """The stage: the faces of ``paths.masked`` de-duplicated and packed into ``paths.shards``, the report
    ``<metrics>/pack.json`` and a grid of the packed faces ``<plots>/faces.png``."""
    withdraw_report(paths.report("pack"))
    out = Path(paths.shards)
    result = run_pack(params, Path(paths.masked), out, progress=progress, shard_map=shard_map)
    result.write(paths.report("pack"))
    index = read_index(out)
    shards = [out / s["name"] for s in index["shards"]]
    save_face_grid(shards, paths.plot("faces"), params.pack.grid_size, index["identities"])
    return result
