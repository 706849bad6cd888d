"""Serve ``prepare-data/prepare-data`` and ``push-dataset/push-dataset`` (one machine, no work pool).

Run from the project root (flow runs start in this process's working directory)::

    prefect server start                                   # terminal 1
    prefect config set PREFECT_API_URL=http://127.0.0.1:4200/api
    python -m workflows.deployments                        # terminal 2: keeps serving
    prefect deployment run 'prepare-data/prepare-data' --watch
    prefect deployment run 'prepare-data/prepare-data' -p lineage=none -p runner=dask --watch
    prefect deployment run 'push-dataset/push-dataset' -p repo_id=OWNER/NAME --watch   # HF_TOKEN set here
    prefect deployment run 'pretrain/pretrain-mae' --watch          # one deployment per run in params.yaml
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from prefect import serve as serve_deployments
from prefect.deployments.runner import RunnerDeployment
from prefect.types.entrypoint import EntrypointType

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
    ]


def serve(name: str = "prepare-data", limit: int | None = 1) -> None:
    """Register the deployments and execute their runs here until interrupted (``limit`` runs at a time)."""
    serve_deployments(*deployments(name), limit=limit)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m workflows.deployments", description=__doc__.splitlines()[0])
    parser.add_argument("--name", default="prepare-data", help="deployment name (default: prepare-data)")
    parser.add_argument("--limit", type=int, default=1, help="flow runs at a time (default: 1)")
    args = parser.parse_args(argv)
    serve(args.name, args.limit)


if __name__ == "__main__":
    main()
