"""How a stage runs its per-shard function over all shards.

A stage takes a ``ShardMap``: given a function and its per-shard argument tuples, it yields the results
in order. :func:`process_map` runs them in a local process pool; an orchestrator passes its own (the
Prefect flow maps them as tasks over a process pool or a Dask cluster), so there is one stage code path.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

ShardMap = Callable[[Callable[..., Any], Sequence[tuple[Any, ...]]], Iterator[Any]]


def process_map(workers: int) -> ShardMap:
    """Run shard calls in ``workers`` processes (inline when ``workers <= 1``), results in order."""

    def run(fn: Callable[..., Any], calls: Sequence[tuple[Any, ...]]) -> Iterator[Any]:
        if workers <= 1 or len(calls) <= 1:
            yield from (fn(*args) for args in calls)
            return
        with ProcessPoolExecutor(min(workers, len(calls))) as pool:
            yield from pool.map(fn, *zip(*calls, strict=True))

    return run


def shard_to_shard_ids(stage: str, in_dir: Path, out_dir: Path, missing_hint: str) -> list[int]:
    """Shard ids of ``in_dir/shard-NNNNN.lmdb`` for a shard → shard stage, with ``out_dir`` emptied of its
    earlier shards (a re-run after a crash starts clean); ``missing_hint`` says which stage to run first."""
    shards = sorted(in_dir.glob("shard-*.lmdb"))
    if not shards:
        raise FileNotFoundError(f"no shards in {in_dir}: {missing_hint}")
    if out_dir.resolve() == in_dir.resolve():
        raise ValueError(f"the {stage} stage cannot write into its input folder {in_dir}")
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in [*out_dir.glob("*.tmp"), *out_dir.glob("shard-*.lmdb")]:
        shutil.rmtree(stale)
    return [int(path.stem.split("-")[1]) for path in shards]
