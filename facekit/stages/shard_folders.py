"""The folders of a shard → shard stage (``landmarks``, ``masks``): one output shard per input shard."""

from __future__ import annotations

import shutil
from pathlib import Path


def shard_to_shard_ids(stage: str, in_dir: Path, out_dir: Path, missing_hint: str) -> list[int]:
    """Shard ids of ``in_dir/shard-NNNNN.lmdb`` for a shard → shard stage, with ``out_dir`` emptied of its
    earlier shards (a re-run after a crash starts clean); ``missing_hint`` says which stage to run first."""
    shards = sorted(in_dir.glob("shard-*.lmdb"))
    if not shards:
        raise FileNotFoundError(f"no shards in {in_dir}: {missing_hint}")
    if out_dir.resolve() == in_dir.resolve():
        raise ValueError(f"the {stage} stage cannot write into its input folder {in_dir}")
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in [*out_dir.glob("*.tmp"), *out_dir.glob("*.old"), *out_dir.glob("shard-*.lmdb")]:
        shutil.rmtree(stale)
    return [int(path.stem.split("-")[1]) for path in shards]
