"""Partial FC under 2-process DDP (torchrun, gloo): every rank checkpoints its shard of the class centres.

Run as a script under torchrun, this file is the worker: per rank, an uninterrupted 16-step run, a run
stopped after 11 steps (its checkpoint) and the same run resumed to 16, all in one process group.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from train_toy import CLASSES, EMB, ToyPartialFC, ToySamples, toy_config

from facekit import distributed
from facekit.train.checkpoint import full_state_dict
from facekit.train.loop import train

WORLD = 2


def _losses(out_dir: Path) -> list[float]:
    with (out_dir / "train_log.csv").open() as f:
        return [float(r["loss"]) for r in csv.DictReader(f)]


@pytest.fixture(scope="module")
def ddp_runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The worker's output folder: ``full/``, ``run/`` (cut at step 11, resumed) and ``rank<r>.pt`` results."""
    out = tmp_path_factory.mktemp("sharded")
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(WORLD)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([*launch, __file__, str(out)], env=env, check=True, timeout=300)
    return out


def test_each_rank_resumes_its_own_centres_and_continues_as_the_uninterrupted_run(ddp_runs: Path) -> None:
    ranks = [torch.load(ddp_runs / f"rank{r}.pt") for r in range(WORLD)]
    assert [r["cut"].shape for r in ranks] == [(12, EMB), (11, EMB)]
    for r in ranks:
        assert torch.equal(r["resumed_first"], r["cut"])  # the shard saved at step 11, bit for bit
        assert not torch.equal(r["cut"], r["initial"])  # and one that training had changed
        assert r["resumed"].keys() == r["full"].keys()
        for name, tensor in r["full"].items():
            torch.testing.assert_close(r["resumed"][name], tensor, atol=1e-6, rtol=0, msg=name)
    assert _losses(ddp_runs / "run") == pytest.approx(_losses(ddp_runs / "full"), abs=1e-6, rel=0)

    last = ddp_runs / "run" / "checkpoints" / "last"
    assert sorted(p.name for p in last.iterdir()) == ["model.safetensors", "rank0.pt", "rank1.pt", "train_state.pt"]
    assert "head.weight" not in load_file(last / "model.safetensors")  # no rank's shard posing as all centres
    whole = full_state_dict(last)
    assert whole["head.weight"].shape == (CLASSES, EMB)
    assert torch.equal(whole["head.weight"], torch.cat([r["resumed"]["head.weight"] for r in ranks]))
    single = ToyPartialFC()  # one process: all centres in one tensor
    single.load_state_dict(whole)
    assert torch.equal(single.net[0].weight, ranks[0]["resumed"]["net.0.weight"])


def test_resuming_with_another_world_size_is_a_clear_error(ddp_runs: Path) -> None:
    with pytest.raises(ValueError, match=r"written by 2 process\(es\) with per-rank tensors \['head.weight'\]"):
        train(ToyPartialFC(), ToySamples(), toy_config(ddp_runs / "run", batch_size=8))


def _worker(out: Path) -> None:
    """One rank: the three runs (batch 4 per rank: 8 steps per epoch, 16 in all); results to ``rank<r>.pt``."""
    distributed.init_from_env()
    full, cut, resumed = ToyPartialFC(), ToyPartialFC(), ToyPartialFC()
    initial = cut.head.weight.detach().clone()
    train(full, ToySamples(), toy_config(out / "full", batch_size=4))
    train(cut, ToySamples(), toy_config(out / "run", batch_size=4, max_steps=11))
    train(resumed, ToySamples(), toy_config(out / "run", batch_size=4))
    result = {
        "initial": initial,
        "cut": cut.head.weight.detach(),
        "resumed_first": resumed.first_centres,
        "full": full.state_dict(),
        "resumed": resumed.state_dict(),
    }
    torch.save(result, out / f"rank{distributed.rank()}.pt")
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    _worker(Path(sys.argv[1]))
