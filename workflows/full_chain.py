"""The ``full-chain`` Prefect flow: every stage of ``dvc.yaml`` in dependency order, GPU stages on a GPU work pool.

DVC owns the DAG and decides what is stale; Prefect places the work. The flow reads the pipeline from DVC
(:func:`read_dag`: ``sample → detect_align → landmarks → masks → pack → pretrain@<run> → finetune@<run> ...``),
asks DVC once which stages are stale, and submits each stage that is stale, or downstream of one that
runs, as soon as its upstream stages have finished:

- CPU stages run here, as tasks running ``dvc repro --single-item <stage>``
  (:func:`workflows.dvc_tasks.dvc_repro`, which retries DVC's lock contention);
- GPU stages (the part of the name before ``@`` in ``gpu_stages``: ``pretrain@mae``, ``finetune@mae`` ...) run
  as flow runs of the deployment ``dvc-stage/dvc-stage-gpu`` (:func:`dvc_stage`, the same command) on the
  GPU work pool, created from ``workflows/gpu-pool-template.json``.

Independent stages run concurrently: DVC holds its repository lock only while it checks and records a stage
(contention is retried), not while the stage's command runs, so two GPU stages can train at once;
``prefect work-pool set-concurrency-limit gpu 1`` makes the pool run them one at a time (then run
``full-chain`` itself elsewhere: served, or on a CPU pool). The GPU worker must see the project folder at
the same path (the same machine or a shared file system). A GPU stage fails, and cancels its flow run, once
the pool has had no online worker for ``worker_timeout_s`` (a worker that died or never started would
otherwise leave the chain waiting forever); a paused pool is waited for.
"""

# no ``from __future__ import annotations``: a served flow is pickled into its run process by value and
# Prefect validates the parameters against the real annotation objects

import time
from pathlib import Path
from typing import Any

import networkx as nx
from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import FlowRun, WorkPoolStatus
from prefect.deployments import run_deployment
from prefect.futures import PrefectFuture
from prefect.states import Cancelled, Completed, State

from workflows.dvc_tasks import dvc_repro

GPU_DEPLOYMENT = "dvc-stage/dvc-stage-gpu"
GPU_STAGES = ("pretrain", "finetune")
UP_TO_DATE = "Up to date"  # the dvc-stage flow run's final state name when DVC skipped the stage
WORKER_TIMEOUT_S = 600.0  # how long a GPU stage waits while its pool has no online worker


def read_dag(root: Path | str = ".", pipeline: str = "dvc.yaml") -> tuple[list[str], dict[str, list[str]], set[str]]:
    """The stages of ``root``'s ``pipeline`` file (and the stages of other ``dvc.yaml`` files they depend on,
    e.g. ``lineages/downstream/dvc.yaml`` on the medium lineage's) in a topological order (file order among
    independent stages), each stage's direct upstream stages, and the stages DVC reports as stale (a stage
    marked ``always_changed`` only when something else about it changed)."""
    from dvc.repo import Repo  # only the orchestrating process needs DVC's Python API
    from dvc.stage import PipelineStage

    with Repo(str(root)) as repo:
        stages = [s for s in repo.index.stages if isinstance(s, PipelineStage)]
        graph = repo.index.graph  # an edge goes from a stage to a stage it depends on
        upstream = {s.addressing: [u.addressing for u in graph.successors(s) if u in stages] for s in stages}
        target = (Path(root) / pipeline).resolve()
        chosen = {s.addressing for s in stages if Path(s.dvcfile.path).resolve() == target}
        if not chosen:
            raise ValueError(f"{pipeline}: no pipeline stages there (in {Path(root).resolve()})")
        for name in list(chosen):
            chosen |= upstream_closure(name, upstream)
        upstream = {name: ups for name, ups in upstream.items() if name in chosen}
        stale = {name for name, why in repo.status().items() if why != ["always changed"]} & chosen
    position = {name: i for i, name in enumerate(upstream)}
    dag = nx.DiGraph()
    dag.add_nodes_from(upstream)
    dag.add_edges_from((u, name) for name, ups in upstream.items() for u in ups)
    return list(nx.lexicographical_topological_sort(dag, key=position.__getitem__)), upstream, stale


def always_changed_stages(root: Path | str = ".") -> list[str]:
    """The stages of ``root``'s DVC project marked ``always_changed`` (``scan``: a cheap listing of the source)."""
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        return [s.addressing for s in repo.index.stages if getattr(s, "always_changed", False)]


def upstream_closure(stage: str, upstream: dict[str, list[str]]) -> set[str]:
    """Every stage ``stage`` depends on, directly or through others (``upstream``: stage -> direct upstream)."""
    found: set[str] = set()
    todo = list(upstream.get(stage, []))
    while todo:
        name = todo.pop()
        if name not in found:
            found.add(name)
            todo.extend(upstream.get(name, []))
    return found


def is_gpu_stage(stage: str, gpu_stages: tuple[str, ...]) -> bool:
    """Whether ``stage`` (``pretrain@mae``, ``pack``, ``sub/dvc.yaml:pretrain@mae``) belongs on the GPU pool:
    its name before ``@`` is listed."""
    return stage.rsplit(":", 1)[-1].split("@", 1)[0] in gpu_stages


@flow(name="dvc-stage", log_prints=True)
def dvc_stage(stage: str) -> State:
    """``dvc repro --single-item <stage>`` in the working directory (the project root); the run ends
    Completed when DVC ran the stage, in a Completed state named ``Up to date`` when DVC skipped it."""
    if dvc_repro(stage, single_item=True):
        return Completed(message=f"dvc ran {stage}")
    return Completed(name=UP_TO_DATE, message=f"{stage} is up to date")


@task(task_run_name="{stage}", cache_policy=NO_CACHE)
def gpu_stage(
    stage: str, deployment: str, poll_seconds: float, worker_timeout_s: float | None = WORKER_TIMEOUT_S
) -> bool:
    """Run ``stage`` as a flow run of ``deployment`` (on its work pool) and wait for it (:func:`wait_for_run`);
    returns whether DVC ran the stage."""
    run = run_deployment(deployment, parameters={"stage": stage}, flow_run_name=stage, timeout=0)
    run = wait_for_run(run, poll_seconds, worker_timeout_s)
    if run.state is None or not run.state.is_completed():
        state = run.state.name if run.state else "no state"
        raise RuntimeError(f"{stage} on {deployment}: flow run {run.name} ended {state}")
    return run.state.name != UP_TO_DATE


def wait_for_run(run: FlowRun, poll_seconds: float, worker_timeout_s: float | None) -> FlowRun:
    """Poll ``run`` every ``poll_seconds`` until its state is final; return it then.

    While it runs, its work pool is watched: once the pool has had no online worker (status ``NOT_READY``)
    for ``worker_timeout_s`` seconds in a row (None: never), the run is cancelled and a RuntimeError says
    which pool needs a worker.
    """
    offline_since: float | None = None
    with get_client(sync_client=True) as client:
        while True:
            run = client.read_flow_run(run.id)
            if run.state is not None and run.state.is_final():
                return run
            if worker_timeout_s is not None and run.work_pool_name:
                now = time.monotonic()
                if client.read_work_pool(run.work_pool_name).status != WorkPoolStatus.NOT_READY:
                    offline_since = None
                elif offline_since is None:
                    offline_since = now
                if offline_since is not None and now - offline_since >= worker_timeout_s:
                    message = (
                        f"{run.name}: no worker online in work pool {run.work_pool_name!r} for "
                        f"{worker_timeout_s:g} s (flow run {run.state.name if run.state else 'without state'}); "
                        f"start one with `prefect worker start --pool {run.work_pool_name}`"
                    )
                    client.set_flow_run_state(run.id, Cancelled(message=message), force=True)
                    raise RuntimeError(message)
            time.sleep(poll_seconds)


@flow(name="full-chain", log_prints=True)
def full_chain(
    gpu_stages: tuple[str, ...] = GPU_STAGES,
    gpu_deployment: str = GPU_DEPLOYMENT,
    poll_seconds: float = 10.0,
    worker_timeout_s: float | None = WORKER_TIMEOUT_S,
    pipeline: str = "dvc.yaml",
) -> dict[str, str]:
    """Bring every stage of the working directory's ``pipeline`` (the sample's ``dvc.yaml``, or e.g.
    ``lineages/medium/dvc.yaml``; with the stages it depends on) up to date, GPU stages through
    ``gpu_deployment`` (polled every ``poll_seconds``; failing after ``worker_timeout_s`` without an online
    worker in its pool, see :func:`wait_for_run`). Returns ``{stage: "ran" | "up to date"}`` in
    topological order; any failing stage fails the flow (stages downstream of it do not run)."""
    cpu_stage = dvc_repro.with_options(task_run_name="{stage}")
    order, upstream, stale = read_dag(pipeline=pipeline)
    # always-changed stages with nothing stale upstream run first, so that the stages after them are judged
    # on their fresh output; the others run in their place, after their upstream stages
    refreshed = [s for s in always_changed_stages() if s in upstream and not upstream_closure(s, upstream) & stale]
    for stage in refreshed:
        cpu_stage(stage, single_item=True)
    if refreshed:
        order, upstream, stale = read_dag(pipeline=pipeline)
    futures: dict[str, PrefectFuture[Any]] = {}
    for stage in order:
        if stage in refreshed:
            continue
        if stage not in stale and not any(u in futures for u in upstream[stage]):
            continue  # DVC would skip it: nothing upstream of it runs
        wait_for = [futures[u] for u in upstream[stage] if u in futures]
        if is_gpu_stage(stage, gpu_stages):
            futures[stage] = gpu_stage.submit(stage, gpu_deployment, poll_seconds, worker_timeout_s, wait_for=wait_for)
        else:
            futures[stage] = cpu_stage.submit(stage, single_item=True, wait_for=wait_for)
    summary = {
        stage: "ran" if stage in refreshed or (stage in futures and futures[stage].result()) else "up to date"
        for stage in order
    }
    ran = [stage for stage, what in summary.items() if what == "ran"]
    print(f"full-chain: {len(ran)} of {len(order)} stages ran: {', '.join(ran) or 'none'}")
    return summary
