"""Serve ``prepare-data/prepare-data``, ``push-dataset/push-dataset``, ``pretrain/pretrain-<run>``,
``full-chain/full-chain`` and ``evaluate-downstream/evaluate-downstream`` (one machine, no work pool), or register
them on a work pool (``--pool``).

Run from the project root (flow runs start in this process's working directory)::

    prefect server start                                   # terminal 1
    prefect config set PREFECT_API_URL=http://127.0.0.1:4200/api
    python -m workflows.deployments                        # terminal 2: keeps serving
    prefect deployment run 'prepare-data/prepare-data' --watch
    prefect deployment run 'prepare-data/prepare-data' -p lineage=none -p runner=dask --watch
    prefect deployment run 'push-dataset/push-dataset' -p repo_id=OWNER/NAME --watch   # HF_TOKEN set here
    prefect deployment run 'pretrain/pretrain-mae' --watch          # one deployment per run in params.yaml
    prefect deployment run 'full-chain/full-chain' --watch          # GPU stages: dvc-stage/dvc-stage-gpu
    prefect deployment run 'evaluate-downstream/evaluate-downstream' --watch   # lineages/downstream

With ``--pool POOL`` the same deployments are registered on a work pool instead, and its workers run them
in this directory (``working_dir``)::

    prefect work-pool create gpu --type process --base-job-template workflows/gpu-pool-template.json
    prefect worker start --pool gpu                                  # terminal 2
    python -m workflows.deployments --pool gpu                       # registers, then exits
    prefect deployment run 'pretrain/pretrain-lafs' --watch
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from prefect import deploy as deploy_deployments
from prefect import serve as serve_deployments
from prefect.deployments.runner import RunnerDeployment
from prefect.types.entrypoint import EntrypointType

from workflows.downstream import evaluate_downstream
from workflows.full_chain import full_chain
from workflows.prepare_data import prepare_data
from workflows.pretrain import pretrain_deployments
from workflows.push_dataset import push_dataset


def deployments(name: str = "prepare-data") -> list[RunnerDeployment]:
    """The served deployments; ``name`` names the ``prepare-data`` one. Module entrypoints: the runs load
    ``workflows.<module>`` whatever the working directory."""
    return [
        prepare_data.to_deployment(name=name, entrypoint_type=EntrypointType.MODULE_PATH),
        push_dataset.to_deployment(name="push-dataset", entrypoint_type=EntrypointType.MODULE_PATH),
        *pretrain_deployments(),  # pretrain/pretrain-<run> for every run in params.yaml
        full_chain.to_deployment(name="full-chain", entrypoint_type=EntrypointType.MODULE_PATH),
        evaluate_downstream.to_deployment(name="evaluate-downstream", entrypoint_type=EntrypointType.MODULE_PATH),
    ]


def serve(name: str = "prepare-data", limit: int | None = 1) -> None:
    """Register the deployments and execute their runs here until interrupted (``limit`` runs at a time)."""
    serve_deployments(*deployments(name), limit=limit)


def deploy(pool: str, name: str = "prepare-data") -> None:
    """Register the deployments on the work pool ``pool``; its workers run them in this working directory."""
    registered = deployments(name)
    for deployment in registered:
        deployment.job_variables = {**deployment.job_variables, "working_dir": str(Path.cwd())}
    deploy_deployments(*registered, work_pool_name=pool, print_next_steps_message=False, ignore_warnings=True)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m workflows.deployments", description=__doc__.splitlines()[0])
    parser.add_argument("--name", default="prepare-data", help="deployment name (default: prepare-data)")
    parser.add_argument("--limit", type=int, default=1, help="flow runs at a time (default: 1)")
    parser.add_argument("--pool", help="register the deployments on this work pool instead of serving them")
    args = parser.parse_args(argv)
    if args.pool:
        deploy(args.pool, args.name)
    else:
        serve(args.name, args.limit)


if __name__ == "__main__":
    main()
