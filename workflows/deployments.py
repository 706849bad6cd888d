"""Serve ``prepare-data`` as the deployment ``prepare-data/prepare-data`` (one machine, no work pool).

Run from the project root (flow runs start in this process's working directory)::

    prefect server start                                   # terminal 1
    prefect config set PREFECT_API_URL=http://127.0.0.1:4200/api
    python -m workflows.deployments                        # terminal 2: keeps serving
    prefect deployment run 'prepare-data/prepare-data' --watch
    prefect deployment run 'prepare-data/prepare-data' -p lineage=none -p runner=dask --watch
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from prefect.types.entrypoint import EntrypointType

from workflows.prepare_data import prepare_data


def serve(name: str = "prepare-data", limit: int | None = 1) -> None:
    """Register the deployment and execute its runs here until interrupted (``limit`` runs at a time)."""
    # a module entrypoint: the runs load ``workflows.prepare_data`` whatever the working directory
    prepare_data.serve(name=name, limit=limit, entrypoint_type=EntrypointType.MODULE_PATH)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m workflows.deployments", description=__doc__.splitlines()[0])
    parser.add_argument("--name", default="prepare-data", help="deployment name (default: prepare-data)")
    parser.add_argument("--limit", type=int, default=1, help="flow runs at a time (default: 1)")
    args = parser.parse_args(argv)
    serve(args.name, args.limit)


if __name__ == "__main__":
    main()
