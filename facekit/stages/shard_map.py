"""How a stage runs its per-shard function over all shards.

A stage takes a ``ShardMap``: given a function and its per-shard argument tuples, it yields the results
in order. :func:`process_map` runs them in a local process pool; an orchestrator passes its own (the
Prefect flow maps them as tasks over a process pool or a Dask cluster), so there is one stage code path.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any

ShardMap = Callable[[Callable[..., Any], Sequence[tuple[Any, ...]]], Iterator[Any]]

#: ``prctl`` option from ``<linux/prctl.h>``: the signal a process gets when its parent thread exits.
PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int) -> None:
    """Pool initializer: ask Linux to SIGKILL this worker when its parent dies, and exit at once if the
    parent (``parent_pid``) already died between the fork and this call (the signal would never come)."""
    if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent_pid:
        os._exit(1)


def process_map(workers: int) -> ShardMap:
    """Run shard calls in ``workers`` processes (inline when ``workers <= 1``), results in order.

    The workers are forked by the thread that consumes the results and are killed when it dies, so a
    ``kill -9`` of the stage leaves no orphans behind.
    """

    def run(fn: Callable[..., Any], calls: Sequence[tuple[Any, ...]]) -> Iterator[Any]:
        if workers <= 1 or len(calls) <= 1:
            yield from (fn(*args) for args in calls)
            return
        with ProcessPoolExecutor(
            min(workers, len(calls)),
            mp_context=multiprocessing.get_context("fork"),
            initializer=die_with_parent,
            initargs=(os.getpid(),),
        ) as pool:
            yield from pool.map(fn, *zip(*calls, strict=True))

    return run
