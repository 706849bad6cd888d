"""Subprocess tests: resume after SIGKILL, and 2-process DDP (torchrun, gloo) against one process."""

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from train_toy import ToyMethod, ToySamples, toy_config

from facekit.train.loop import train

TOY = Path(__file__).with_name("train_toy.py")
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _losses(out_dir: Path) -> list[float]:
    with (out_dir / "train_log.csv").open() as f:
        return [float(r["loss"]) for r in csv.DictReader(f)]


def _toy(out_dir: Path, *args: str) -> list[str]:
    return [sys.executable, str(TOY), "--out", str(out_dir), "--dropout", "0.3", *args]


def test_resume_after_kill_9_matches_the_uninterrupted_run(tmp_path) -> None:
    reference = tmp_path / "reference"
    train(ToyMethod(dropout=0.3), ToySamples(), toy_config(reference))  # 16 steps
    run = tmp_path / "run"
    proc = subprocess.Popen(_toy(run, "--checkpoint-every", "5", "--step-delay", "0.2"), env=ENV)
    try:
        deadline = time.monotonic() + 120
        while not (run / "checkpoints" / "last").is_dir():  # the first checkpoint: after step 5 of 16
            assert proc.poll() is None and time.monotonic() < deadline, "the run ended before its first checkpoint"
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL and not (run / "metrics.json").exists()
    subprocess.run(_toy(run, "--checkpoint-every", "5"), env=ENV, check=True)
    assert _losses(run) == pytest.approx(_losses(reference), abs=1e-6, rel=0)
    resumed, uninterrupted = (load_file(d / "checkpoints" / "last" / "model.safetensors") for d in (run, reference))
    assert resumed.keys() == uninterrupted.keys()
    for name, tensor in uninterrupted.items():
        torch.testing.assert_close(resumed[name], tensor, atol=1e-6, rtol=0)


@pytest.mark.parametrize("accum_steps", [1, 2])
def test_two_process_ddp_gives_the_gradients_of_one_process_on_the_doubled_batch(tmp_path, accum_steps) -> None:
    single = ToyMethod(cross_batch=True)  # its loss has a term over the gathered (micro-)batch
    cfg = toy_config(tmp_path / "single", batch_size=8 // accum_steps, accum_steps=accum_steps, max_steps=2)
    train(single, ToySamples(), cfg)
    dump = tmp_path / "ddp_grads.pt"
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    args = ["--out", str(tmp_path / "ddp"), "--batch-size", str(4 // accum_steps), "--accum-steps", str(accum_steps)]
    args += ["--cross-batch", "--max-steps", "2"]
    subprocess.run([*launch, str(TOY), *args, "--grad-dump", str(dump)], env=ENV, check=True, timeout=300)
    ddp_grads = torch.load(dump)
    assert ddp_grads.keys() == single.first_grads.keys() and len(ddp_grads) == 4
    for name, grad in single.first_grads.items():
        torch.testing.assert_close(ddp_grads[name], grad, atol=1e-6, rtol=0)
    assert _losses(tmp_path / "ddp") == pytest.approx(_losses(tmp_path / "single"), abs=1e-6, rel=0)
