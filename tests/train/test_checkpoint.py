import os
import random

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from facekit.train.checkpoint import (
    capture_rng_state,
    find_checkpoint,
    full_state_dict,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)


class Tied(nn.Module):
    """An embedding tied to its output projection (shared tensor), plus a buffer."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(5, 3)
        self.out = nn.Linear(3, 5, bias=False)
        self.out.weight = self.embed.weight
        self.register_buffer("center", torch.zeros(3))


def _draws() -> tuple[float, float, float]:
    return random.random(), float(np.random.rand()), float(torch.rand(()))


def test_rng_state_round_trip() -> None:
    state = capture_rng_state()
    first = _draws()
    _draws()
    restore_rng_state(state)
    assert _draws() == first


def test_save_and_load_restore_weights_optimizer_and_state(tmp_path) -> None:
    torch.manual_seed(0)
    model = Tied()
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    model.out(model.embed(torch.tensor([1, 2]))).sum().backward()
    opt.step()
    model.center.fill_(7.0)
    save_checkpoint(tmp_path, model, opt, step=3, epoch=0, extra_state={"position": 24})
    save_checkpoint(tmp_path, model, opt, step=6, epoch=1, extra_state={"position": 0}, keep_step=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last", "step-0000006"]  # no temporary folders left
    assert os.path.samefile(tmp_path / "last" / "model.safetensors", tmp_path / "step-0000006" / "model.safetensors")

    torch.manual_seed(1)
    fresh = Tied()
    fresh_opt = torch.optim.AdamW(fresh.parameters(), lr=0.1)
    state = load_checkpoint(tmp_path, fresh, fresh_opt)
    assert (state.step, state.epoch, state.extra, len(state.rng)) == (6, 1, {"position": 0}, 1)
    assert fresh.out.weight is fresh.embed.weight
    assert torch.equal(fresh.embed.weight, model.embed.weight) and torch.equal(fresh.center, torch.full((3,), 7.0))
    assert torch.equal(fresh_opt.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])


def test_sharded_tensors_go_to_the_rank_file_with_their_optimizer_state(tmp_path) -> None:
    torch.manual_seed(0)
    model = nn.ModuleDict({"body": Tied(), "centres": nn.Linear(3, 4, bias=False)})  # "centres": per rank
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    model["centres"](model["body"].embed(torch.tensor([1, 2]))).sum().backward()
    opt.step()
    save_checkpoint(tmp_path, model, opt, step=1, epoch=0, sharded=["centres.weight"])
    last = tmp_path / "last"
    assert sorted(p.name for p in last.iterdir()) == ["model.safetensors", "rank0.pt", "train_state.pt"]
    assert "centres.weight" not in load_file(last / "model.safetensors")
    shard = torch.load(last / "rank0.pt")
    assert torch.equal(shard["tensors"]["centres.weight"], model["centres"].weight)
    assert list(shard["optimizer"]) == [1] and list(torch.load(last / "train_state.pt")["optimizer"]["state"]) == [0]

    torch.manual_seed(1)
    fresh = nn.ModuleDict({"body": Tied(), "centres": nn.Linear(3, 4, bias=False)})
    fresh_opt = torch.optim.AdamW(fresh.parameters(), lr=0.1)
    load_checkpoint(tmp_path, fresh, fresh_opt, sharded=["centres.weight"])
    for a, b in zip(fresh.state_dict().values(), model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    for i in (0, 1):
        assert torch.equal(fresh_opt.state_dict()["state"][i]["exp_avg"], opt.state_dict()["state"][i]["exp_avg"])
    assert torch.equal(full_state_dict(tmp_path)["centres.weight"], model["centres"].weight)
    with pytest.raises(ValueError, match=r"per-rank tensors \['centres.weight'\]; this run has 1 process\(es\) with "):
        load_checkpoint(tmp_path, fresh)
    with pytest.raises(ValueError, match=r"sharded names \['head'\] are not in ModuleDict's state"):
        save_checkpoint(tmp_path, model, opt, step=2, epoch=0, sharded=["head"])


def test_find_checkpoint_survives_a_kill_between_the_two_renames(tmp_path) -> None:
    model = nn.Linear(2, 2)
    save_checkpoint(tmp_path, model, torch.optim.SGD(model.parameters(), lr=0.1), step=4, epoch=0)
    os.replace(tmp_path / "last", tmp_path / ".last.previous")  # the state a kill between the renames leaves
    assert find_checkpoint(tmp_path) == tmp_path / ".last.previous"
    assert load_checkpoint(tmp_path, nn.Linear(2, 2)).step == 4
    assert find_checkpoint(tmp_path / "nowhere") is None
