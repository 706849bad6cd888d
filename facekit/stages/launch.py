"""A training stage on several GPUs: ``facekit pretrain RUN`` / ``facekit finetune RUN`` relaunched under
torchrun, one process per GPU, when its section's ``nproc_per_node`` is above 1 (the command line and the
``pretrain`` Prefect flow both relaunch through :func:`torchrun`)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path


def needs_torchrun(nproc_per_node: int) -> bool:
    """Whether a stage of ``nproc_per_node`` processes must be relaunched: more than one, and this process
    is not already one of torchrun's workers (no ``LOCAL_RANK``)."""
    return nproc_per_node > 1 and "LOCAL_RANK" not in os.environ


def torchrun(
    stage: str,
    run: str,
    params_path: Path,
    nproc_per_node: int,
    *,
    quiet: bool = False,
    settings: Sequence[str] = (),
) -> int:
    """Run ``python -m torch.distributed.run --standalone --nproc_per_node N -m facekit.cli <stage> RUN
    --params PARAMS`` (one node), passing the command's ``--set KEY=VALUE`` ``settings`` on; returns its
    exit status."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc_per_node}"]
    command += ["-m", "facekit.cli", stage, run, "--params", str(params_path)]
    command += [arg for setting in settings for arg in ("--set", setting)]
    command += ["--quiet"] if quiet else []
    return subprocess.run(command, check=False).returncode
