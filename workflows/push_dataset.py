"""The ``push-dataset`` Prefect flow: packed shards → Parquet export → dataset card → Hugging Face Hub.

Runs in the project directory (the one holding ``data/shards``, ``dvc.lock`` and ``params.yaml``), after
``prepare-data``. The upload is retried on transient failures only (network, HTTP 429 and 5xx); a bad
token or a missing permission fails at once.

The Hub token is never a flow parameter (Prefect stores parameters in its database): the process that
executes the run reads it from ``HF_TOKEN`` or the login stored by ``hf auth login``.
"""

# no ``from __future__ import annotations``: a served flow is pickled into its run process by value and
# Prefect validates the parameters against the real annotation objects

from pathlib import Path
from typing import Any

import datasets
from prefect import Task, flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import TaskRun
from prefect.states import State

from facekit.hub.cards import write_dataset_card
from facekit.hub.datasets import export_dataset, upload_plan
from facekit.hub.datasets import push_dataset as push_export
from facekit.hub.tokens import HubError, check_repo_id


def _is_transient(_task: Task[..., Any], _run: TaskRun, state: State[Any]) -> bool:
    """Retry condition: only a transient Hub failure is worth another attempt."""
    try:
        state.result()
    except HubError as e:
        return e.transient
    except Exception:
        return False
    return False


@task(cache_policy=NO_CACHE)
def export(shards: Path, out: Path) -> datasets.Dataset:
    """Every record of the packed shards as Parquet files under ``out/data``."""
    return export_dataset(shards, out)


@task(cache_policy=NO_CACHE)
def card(
    out: Path,
    dataset: datasets.Dataset,
    shards: Path,
    dvc_lock: Path | None,
    params_path: Path,
    license: str | None,
    repo_id: str,
) -> Path:
    """The dataset card (README.md) with sources, parameters, DVC lineage and counts."""
    return write_dataset_card(
        out, dataset, shards, dvc_lock=dvc_lock, params_path=params_path, license=license, repo_id=repo_id
    )


@task(retries=3, retry_delay_seconds=[10, 60, 300], retry_condition_fn=_is_transient, cache_policy=NO_CACHE)
def upload(out: Path, repo_id: str, private: bool) -> str:
    """Create the dataset repo if missing and upload the folder; returns the repo URL."""
    return push_export(out, repo_id, private=private)


@flow(name="push-dataset", log_prints=True)
def push_dataset(
    repo_id: str,
    shards: str = "data/shards",
    export_dir: str = "data/export/dataset",
    dvc_lock: str | None = "dvc.lock",
    params_path: str = "params.yaml",
    license: str | None = None,
    public: bool = False,
    dry_run: bool = False,
) -> dict[str, Any]:
    """Export the shards, write the card and (unless ``dry_run``) upload them to ``repo_id``.

    ``dvc_lock=None`` publishes shards built without DVC (the card then records no lineage). Returns
    ``{"repo_id", "faces", "files": [[path, bytes]], "url"}`` (``url`` None for a dry run).
    """
    check_repo_id(repo_id)
    out = Path(export_dir)
    dataset = export(Path(shards), out)
    lock = Path(dvc_lock) if dvc_lock else None
    card(out, dataset, Path(shards), lock, Path(params_path), license, repo_id)
    files = [list(entry) for entry in upload_plan(out)]
    for name, size in files:
        get_run_logger().info("%s %s (%d bytes)", "would upload" if dry_run else "uploading", name, size)
    url = None if dry_run else upload(out, repo_id, not public)
    print(f"push-dataset: {dataset.num_rows} faces, {len(files)} file(s) -> {url or repo_id + ' (dry run)'}")
    return {"repo_id": repo_id, "faces": dataset.num_rows, "files": files, "url": url}
