"""``dvc repro`` as a Prefect task, with DVC's lock contention retried (light: imports no facekit code, so
that flow runs which only drive DVC start fast)."""

# no ``from __future__ import annotations``: Prefect validates task parameters against the real annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from prefect import Task, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import TaskRun
from prefect.states import State

LOCK_ERROR = "Unable to acquire lock"


def _is_lock_error(_task: Task[..., Any], _run: TaskRun, state: State[Any]) -> bool:
    """Retry condition: only DVC's lock contention is worth retrying, a failing stage fails again."""
    try:
        state.result()
    except Exception as e:
        return LOCK_ERROR in str(e)
    return False


@task(retries=6, retry_delay_seconds=[1, 2, 4, 8, 16, 30], retry_condition_fn=_is_lock_error, cache_policy=NO_CACHE)
def dvc_repro(stage: str, single_item: bool = False, cwd: str = ".") -> bool:
    """``dvc repro <stage>`` in ``cwd`` (default: the working directory; a stage that is up to date is skipped by
    DVC); with ``single_item``, ``--single-item``: the stage alone, its upstream stages are not checked. Returns
    whether DVC ran the stage's command.

    The interpreter's folder goes first on ``PATH`` so that the stage commands (``facekit data ...``)
    are this environment's.
    """
    env = {**os.environ, "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])}
    env.setdefault("DVC_NO_ANALYTICS", "1")
    command = [sys.executable, "-m", "dvc", "repro", *(["--single-item"] if single_item else []), stage]
    proc = subprocess.run(command, cwd=cwd, capture_output=True, text=True, env=env, check=False)
    logger = get_run_logger()
    for line in (proc.stdout + proc.stderr).splitlines():
        logger.info(line)
    if proc.returncode != 0:
        raise RuntimeError(f"dvc repro {stage} exited with {proc.returncode}: {proc.stderr.strip()[-2000:]}")
    return f"Running stage '{stage}'" in proc.stdout
