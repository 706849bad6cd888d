"""EMA target updates follow t ← m·t + (1 − m)·o."""

from __future__ import annotations

import torch
from torch import nn

from facekit.nn.ema import copy_as_target, ema_update


def small_net() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))


def test_ema_update_equals_its_formula_and_leaves_buffers() -> None:
    torch.manual_seed(0)
    online, target = small_net(), small_net()
    online(torch.randn(8, 4))  # moves the online BN running stats
    before = {k: v.clone() for k, v in target.state_dict().items()}
    ema_update(target, online, momentum=0.9)
    for name, param in target.named_parameters():
        torch.testing.assert_close(param, 0.9 * before[name] + 0.1 * dict(online.named_parameters())[name])
    torch.testing.assert_close(target[1].running_mean, before["1.running_mean"])


def test_ema_update_can_copy_buffers() -> None:
    online, target = small_net(), small_net()
    online(torch.randn(8, 4))
    ema_update(target, online, momentum=0.5, copy_buffers=True)
    torch.testing.assert_close(target[1].running_mean, online[1].running_mean)
    assert target[1].num_batches_tracked == 1


def test_copy_as_target_is_a_frozen_copy() -> None:
    online = small_net()
    target = copy_as_target(online)
    assert all(not p.requires_grad for p in target.parameters())
    assert all(p.requires_grad for p in online.parameters())
    torch.testing.assert_close(target[0].weight, online[0].weight)
    assert target[0].weight.data_ptr() != online[0].weight.data_ptr()
