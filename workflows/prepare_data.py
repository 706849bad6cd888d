"""The ``prepare-data`` Prefect flow: the DVC lineage sample → detect_align → pack, scheduled by Prefect.

Two ways to run the stages, chosen by the ``lineage`` parameter:

- ``"dvc"`` (default): each stage is a task running ``dvc repro <stage>`` in the working directory, so DVC
  decides what is stale and ``dvc.lock`` records the lineage (``dvc repro detect_align`` runs ``scan``, the
  manifest of the source it depends on, first). DVC's "Unable to acquire lock" is retried.
- ``"none"`` (scale-out): facekit's stage functions run in a sub-flow whose task runner (threads, a local
  process pool, or Dask) executes every shard as a Prefect task with retries. Nothing is recorded in
  ``dvc.lock``.

Both return the same summary: per-stage counts and the packed dataset's content hash. The flow runs in
the project directory (the one holding ``dvc.yaml`` and ``params.yaml``); Dask workers on other machines
need that directory at the same path (a shared file system).
"""

# no ``from __future__ import annotations``: a served flow is pickled into its run process by value and
# Prefect validates the parameters against the real annotation objects

import json
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import ProcessPoolTaskRunner, TaskRunner, ThreadPoolTaskRunner

from facekit.config import load_params
from facekit.data.shards import read_index
from facekit.stages import detect_align, landmarks, masks, pack, sample
from workflows.dvc_tasks import dvc_repro

STAGES = ("sample", "detect_align", "landmarks", "masks", "pack")
RunnerName = Literal["thread", "process", "dask"]


def task_runner(name: RunnerName = "thread", address: str | None = None, workers: int | None = None) -> TaskRunner:
    """A task runner by name: ``thread``, ``process`` (one machine) or ``dask``.

    ``dask`` connects to the scheduler at ``address`` (``tcp://host:8786``) when given, otherwise starts a
    local cluster of ``workers`` single-threaded processes.
    """
    if name == "thread":
        return ThreadPoolTaskRunner(max_workers=workers)
    if name == "process":
        return ProcessPoolTaskRunner(max_workers=workers)
    if name == "dask":
        from prefect_dask import DaskTaskRunner

        if address:
            return DaskTaskRunner(address=address)
        cluster = {"n_workers": workers or 2, "processes": True, "threads_per_worker": 1}
        return DaskTaskRunner(cluster_kwargs=cluster)
    raise ValueError(f"unknown task runner {name!r}: use 'thread', 'process' or 'dask'")


def prefect_shard_map(fn: Callable[..., Any], calls: Sequence[tuple[Any, ...]]) -> Iterator[Any]:
    """A facekit ``ShardMap``: one Prefect task per shard on the current flow's task runner, results in order.

    The shard functions are pure and resumable, so a failed shard is simply retried. No Prefect caching:
    the shard folders on disk (and DVC) are the cache.
    """
    shard_task = task(fn, name=fn.__name__, retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)
    futures = shard_task.map(*(list(column) for column in zip(*calls, strict=True)))
    for future in futures:
        yield future.result()


@task(name="sample", retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)
def sample_task(params_path: str) -> dict[str, Any]:
    """The sample stage: copy the shared photos into the source folder."""
    params = load_params(params_path)
    return sample.run(params, params.paths).to_dict()


@flow(name="prepare-data-shards")
def scale_out(params_path: str = "params.yaml") -> dict[str, dict[str, Any]]:
    """The stages without DVC; the per-shard stages fan their shards out on this flow's task runner."""
    params = load_params(params_path)
    paths = params.paths
    return {
        "sample": sample_task(params_path),
        "detect_align": detect_align.run(params, paths, shard_map=prefect_shard_map, progress=False).to_dict(),
        "landmarks": landmarks.run(params, paths, shard_map=prefect_shard_map, progress=False).to_dict(),
        "masks": masks.run(params, paths, shard_map=prefect_shard_map, progress=False).to_dict(),
        "pack": pack.run(params, paths, shard_map=prefect_shard_map, progress=False).to_dict(),
    }


@flow(name="prepare-data", log_prints=True)
def prepare_data(
    lineage: Literal["dvc", "none"] = "dvc",
    runner: RunnerName = "process",
    address: str | None = None,
    params_path: str = "params.yaml",
) -> dict[str, Any]:
    """Run sample → detect_align → pack in the working directory and summarise the result.

    ``runner`` and ``address`` choose the task runner of the scale-out sub-flow (``lineage="none"``);
    with ``lineage="dvc"`` the stages run one after the other through DVC and the runner is not used.
    Returns ``{"lineage", "stages": {stage: {"read", "written", "rejected"}}, "faces", "content_hash"}``.
    """
    params = load_params(params_path)
    if lineage == "dvc":
        reports = {}
        for stage in STAGES:
            dvc_repro(stage)
            reports[stage] = json.loads(params.paths.report(stage).read_text())
    elif lineage == "none":
        workers = params.sharding.workers
        reports = scale_out.with_options(task_runner=task_runner(runner, address, workers))(params_path)
    else:
        raise ValueError(f"unknown lineage {lineage!r}: use 'dvc' or 'none'")
    shards = Path(params.paths.shards)
    index = read_index(shards)
    summary = {
        "lineage": lineage,
        "stages": {s: {k: reports[s][k] for k in ("read", "written", "rejected")} for s in STAGES},
        "faces": index["count"],
        "content_hash": index["content_hash"],
    }
    print(f"prepare-data: {index['count']} faces in {shards}, content hash {index['content_hash'][:16]}")
    return summary
