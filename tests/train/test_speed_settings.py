"""The engine's speed settings (``compile``, ``fused_optimizer``, ``channels_last``) leave a training step's
arithmetic as it is: one whole :class:`TrainStep` with and without each gives the same loss and the same
updated weights; bad values are refused before any work."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from torch._dynamo.utils import counters

from facekit.config import TrainConfig
from facekit.methods.base import METHODS, Method, StepValues
from facekit.train.optim import build_optimizer
from facekit.train.step import TrainStep, prepare_model

HP = StepValues(step=0, epoch=0.0, progress=0.0, lr=1e-3, weight_decay=0.05, momentum=0.99)


def _step(method: Method, batch: dict, tmp_path: Path, **settings: object) -> tuple[float, dict[str, torch.Tensor]]:
    """(loss, weights after the step) of one engine step with ``settings``."""
    cfg = TrainConfig(epochs=1, batch_size=4, out_dir=tmp_path, lr=1e-3, clip_grad=1.0, progress=False, **settings)
    device = torch.device("cpu")
    model, ddp = prepare_model(method, cfg, device)
    step = TrainStep(method, model, ddp, build_optimizer(method, cfg, cfg.lr), cfg, device)
    assert step([batch], dataclasses.replace(HP, extra={k: float(v[0]) for k, v in method.schedules(4, 4).items()}))
    loss = step.drain()["loss"]
    return loss, {k: v.detach().clone().contiguous() for k, v in method.state_dict().items()}


def _twins(name: str, **kwargs: object) -> tuple[Method, Method, dict]:
    torch.manual_seed(0)
    a = METHODS.create(name, **kwargs)
    b = METHODS.create(name, **kwargs)
    b.load_state_dict(a.state_dict())
    batch = {"image": torch.randn(4, 3, 112, 112)}
    return a, b, batch


def _same(a: tuple[float, dict], b: tuple[float, dict], tol: float) -> None:
    assert a[0] == pytest.approx(b[0], rel=tol, abs=tol)
    for name, value in a[1].items():
        torch.testing.assert_close(b[1][name], value, rtol=tol, atol=tol, msg=name)


def test_the_fused_optimizer_is_used_when_asked_and_gives_the_same_step(tmp_path: Path) -> None:
    kwargs = {"backbone": "vit_small_patch16_224", "backbone_kwargs": {"img_size": 112, "depth": 1, "embed_dim": 64,
              "num_heads": 2}, "decoder_dim": 32, "decoder_depth": 1, "decoder_heads": 2}  # fmt: skip
    a, b, batch = _twins("mae", **kwargs)
    cfg = TrainConfig(epochs=1, batch_size=4, out_dir=tmp_path, lr=1e-3, fused_optimizer=True)
    assert build_optimizer(a, cfg, 1e-3).defaults["fused"] is True
    assert not build_optimizer(a, dataclasses.replace(cfg, fused_optimizer=None), 1e-3).defaults["fused"]  # CPU
    torch.manual_seed(1)
    eager = _step(a, batch, tmp_path)
    torch.manual_seed(1)
    fused = _step(b, batch, tmp_path, fused_optimizer=True)
    assert eager[0] == fused[0]  # same forward
    _same(eager, fused, 1e-6)


def test_channels_last_gives_the_same_step_for_a_resnet(tmp_path: Path) -> None:
    """FRA's ResNet-18 trunk: weights and inputs in channels-last memory, the same loss and update."""
    kwargs = {"backbone": "resnet18", "dim": 32, "hidden_dim": 64, "num_regions": 4}
    a, b, _ = _twins("fra", **kwargs)
    views = torch.randint(0, 256, (2, 4, 3, 112, 112), dtype=torch.uint8)
    batch = {"view1": views[0], "view2": views[1]}
    torch.manual_seed(1)
    plain = _step(a, batch, tmp_path, optimizer="sgd")  # an update linear in the gradient: rounding stays small
    torch.manual_seed(1)
    fast = _step(b, batch, tmp_path, optimizer="sgd", channels_last=True)
    assert b.backbone.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    _same(plain, fast, 1e-4)


@torch._inductor.config.patch(fallback_random=True)  # compiled random masking draws as eager does
def test_a_compiled_step_matches_the_eager_one(tmp_path: Path) -> None:
    """torch.compile (default mode) of a 1-block MAE: the same loss and update, with eager's random masking."""
    kwargs = {"backbone": "vit_small_patch16_224", "backbone_kwargs": {"img_size": 112, "depth": 1, "embed_dim": 64,
              "num_heads": 2}, "decoder_dim": 32, "decoder_depth": 1, "decoder_heads": 2}  # fmt: skip
    a, b, batch = _twins("mae", **kwargs)
    torch.manual_seed(1)
    eager = _step(a, batch, tmp_path, optimizer="sgd")
    torch._dynamo.reset()
    counters.clear()
    torch.manual_seed(1)
    compiled = _step(b, batch, tmp_path, optimizer="sgd", compile="default")
    assert counters["stats"]["unique_graphs"] == 1 and not counters["graph_break"]  # one graph, no break
    _same(eager, compiled, 1e-4)


def test_a_compiled_step_is_not_traced_again_as_the_schedules_move(tmp_path: Path) -> None:
    """DINO reads its teacher temperature, step and momentum from ``hp`` every step: compiled, the second step
    traces once more (the step counter turns symbolic, as torch.compile does for an int that changed), the
    third reuses its graphs. A scheduled value turned into a tensor inside the forward, or a Python int kept
    on the module, would be a constant of the graph and force a new trace every step."""
    torch._dynamo.reset()
    counters.clear()
    torch.manual_seed(0)
    method = METHODS.create(
        "dino", backbone="vit_small_patch16_224", out_dim=64, head_hidden_dim=64, head_bottleneck_dim=32,
        backbone_kwargs={"img_size": 112, "depth": 1, "embed_dim": 64, "num_heads": 2}, n_local=2,
    )  # fmt: skip
    views = method.views()
    items = [views(torch.randint(0, 256, (112, 112, 3), dtype=torch.uint8).numpy()) for _ in range(4)]
    batch = {k: torch.stack([torch.as_tensor(item[k]) for item in items]) for k in items[0]}
    cfg = TrainConfig(epochs=1, batch_size=4, out_dir=tmp_path, lr=1e-3, progress=False, compile="default")
    model, ddp = prepare_model(method, cfg, torch.device("cpu"))
    step = TrainStep(method, model, ddp, build_optimizer(method, cfg, cfg.lr), cfg, torch.device("cpu"))
    graphs = []
    for i in range(3):
        hp = StepValues(step=i, epoch=i / 3, progress=i / 3, lr=1e-3 * (i + 1), weight_decay=0.04 + i / 100,
                        momentum=0.99 + i / 1000, extra={"teacher_temp": 0.04 + i / 100})  # fmt: skip
        assert step([batch], hp)
        graphs.append(counters["stats"]["unique_graphs"])
    assert graphs[0] >= 1 and graphs[1] <= graphs[0] + 1 and graphs[2] == graphs[1], graphs
    assert not counters["graph_break"], dict(counters["graph_break"])


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"compile": "fast"}, "compile must be one of"),
        ({"fused_optimizer": True, "optimizer": "lars"}, "fused_optimizer needs one of the optimizers"),
        ({"channels_last": "yes"}, "channels_last"),
    ],
)
def test_bad_speed_settings_are_refused(settings: dict, message: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=message):
        TrainConfig(epochs=1, batch_size=4, out_dir=tmp_path, lr=1e-3, **settings)
