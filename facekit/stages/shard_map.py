"""How a stage runs its per-shard function over all shards.

A stage takes a ``ShardMap``: given a function and its per-shard argument tuples, it yields the results
in order. :func:`process_map` runs them in a local process pool; an orchestrator passes its own (the
Prefect flow maps them as tasks over a process pool or a Dask cluster), so there is one stage code path.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
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
