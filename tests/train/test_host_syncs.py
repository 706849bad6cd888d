"""No host syncs inside a training step but the engine's one guard.

On an accelerator, an op whose result the host must read (``item()``, ``bool(t)``, a data-dependent shape:
``nonzero``, ``unique``, boolean-mask indexing, ``tolist()``, ``numpy()``) stalls the host until the device
has caught up, so the next kernels are queued late. Each sample run's method (every registered method) and
fine-tuning go through one whole :class:`~facekit.train.step.TrainStep` (forward, backward, gradient norm,
non-finite guard, clipping, hooks, optimizer, EMA) on the CPU under a dispatch mode that records every such
op, with the facekit line that asked for it; the guard's one read is the only one allowed.
"""

from __future__ import annotations

import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from facekit.config import TrainConfig, load_params
from facekit.methods.base import METHODS, Method, StepValues
from facekit.nn.backbones import RANDOM_INIT
from facekit.stages.pretrain import build_method
from facekit.train.optim import build_optimizer
from facekit.train.step import TrainStep, prepare_model
from tests.methods.test_registry_sweep import _batch, faces  # noqa: F401  (the fixture)

PROJECT = Path(__file__).resolve().parents[2]
PARAMS = load_params(PROJECT / "params.yaml")
TRAINED_RUNS = [name for name, run in PARAMS.pretrain.runs.items() if run.method != RANDOM_INIT]
aten = torch.ops.aten
#: ops that make the host wait for the device
SYNC_OPS = {
    aten._local_scalar_dense,  # item(), bool(), int(), float() of a tensor
    aten.nonzero,
    aten.masked_select,
    aten._unique2,
    aten.unique_dim,
    aten.unique_consecutive,
    aten.is_nonzero,
    aten.equal,
}
GUARD = "facekit/train/step.py"  # the engine's non-finite guard: the one read per step


class HostSyncs(TorchDispatchMode):
    """Records ``(op, facekit file:line)`` for every op in :data:`SYNC_OPS` and every boolean-mask index."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[str, str]] = []

    def record(self, what: str) -> None:
        stack = traceback.extract_stack()
        if any(f.name == "_get_value" and "/torch/optim/" in f.filename for f in stack):
            return  # the optimizer's step counter: a host tensor unless the optimizer is fused or capturable
        frames = [f for f in stack if "/facekit/" in f.filename and "/tests/" not in f.filename]
        where = f"{frames[-1].filename.split('/facekit/', 1)[1]}:{frames[-1].lineno}" if frames else "?"
        self.seen.append((what, f"facekit/{where}"))

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        packet = func.overloadpacket
        if packet in SYNC_OPS:
            self.record(str(packet))
        elif packet in (aten.index, aten.index_put, aten.index_put_) and any(
            isinstance(t, torch.Tensor) and t.dtype == torch.bool for t in tree_leaves(args[1])
        ):
            self.record(f"{packet} with a boolean mask")
        return func(*args, **(kwargs or {}))


@contextmanager
def host_syncs(monkeypatch: pytest.MonkeyPatch) -> Iterator[HostSyncs]:
    """:class:`HostSyncs`, also seeing ``tolist()`` / ``numpy()`` / ``cpu()`` (which skip the dispatcher)."""
    mode = HostSyncs()
    for name in ("tolist", "numpy", "cpu"):
        original = getattr(torch.Tensor, name)

        def spy(self: torch.Tensor, *a: Any, _name: str = name, _original: Any = original, **k: Any) -> Any:
            mode.record(f"Tensor.{_name}()")
            return _original(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, spy)
    with mode:
        yield mode
    monkeypatch.undo()


def _one_step(method: Method, batch: dict[str, Any], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> HostSyncs:
    cfg = TrainConfig(epochs=1, batch_size=2, out_dir=tmp_path, lr=1e-3, clip_grad=1.0, progress=False)
    device = torch.device("cpu")
    optimizer = build_optimizer(method, cfg, 1e-3)
    model, ddp = prepare_model(method, cfg, device)
    step = TrainStep(method, model, ddp, optimizer, cfg, device)
    extra = {k: float(v[0]) for k, v in method.schedules(10, 5).items()}
    hp = StepValues(step=0, epoch=0.0, progress=0.0, lr=1e-3, weight_decay=0.05, momentum=0.99, extra=extra)
    with host_syncs(monkeypatch) as syncs:
        assert step([batch], hp)
    return syncs


def _outside_guard(syncs: HostSyncs) -> list[tuple[str, str]]:
    guard = [s for s in syncs.seen if s == ("aten._local_scalar_dense", s[1]) and s[1].startswith(GUARD)]
    assert len(guard) == 1, f"the guard should read one value, saw {syncs.seen}"
    return [s for s in syncs.seen if s not in guard]


@pytest.mark.parametrize("run", TRAINED_RUNS)
def test_a_pretraining_step_reads_nothing_but_the_guard(run: str, faces: list, monkeypatch, tmp_path) -> None:  # noqa: F811
    torch.manual_seed(0)
    method, _ = build_method(PARAMS.pretrain.runs[run])
    batch = _batch(method.views(), faces)
    assert _outside_guard(_one_step(method, batch, monkeypatch, tmp_path)) == []


@pytest.mark.parametrize("sample_rate", [1.0, 0.5])
def test_a_finetuning_step_reads_only_what_partial_fc_sampling_needs(
    sample_rate: float,
    faces: list,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """Partial FC's sampling (sample_rate < 1) draws the batch's classes with ``unique``, a data-dependent
    size, as insightface's does; with every centre (1.0) the step reads nothing but the guard."""
    torch.manual_seed(0)
    kwargs = {**PARAMS.finetune.method, "sample_rate": sample_rate}
    method = METHODS.create(
        "finetune", num_classes=8, backbone="vit_small_patch16_224",
        backbone_kwargs={"img_size": 112, "depth": 2, "embed_dim": 64, "num_heads": 2, "head_dim": 32},
        **{k: v for k, v in kwargs.items() if k != "backbone_kwargs"},
    )  # fmt: skip
    batch = _batch(method.views(), faces)
    batch["identity"] = torch.tensor([1, 6])
    extra = _outside_guard(_one_step(method, batch, monkeypatch, tmp_path))
    expected = [] if sample_rate == 1.0 else ["aten.index with a boolean mask", "aten._unique2"]
    assert [op for op, _ in extra] == expected, extra
    assert all(where.startswith("facekit/nn/partial_fc.py") for _, where in extra), extra


def test_the_detector_sees_each_kind_of_read(monkeypatch: pytest.MonkeyPatch) -> None:
    """The detector itself: each planted read is recorded; plain arithmetic is not."""
    x = torch.arange(6.0)
    with host_syncs(monkeypatch) as syncs:
        y = (x * 2 + 1).sum()
        assert syncs.seen == []
        bool(y > 0)
        x[x > 2]
        torch.unique(x)
        x.tolist()
    assert [op for op, _ in syncs.seen] == [
        "aten._local_scalar_dense",
        "aten.index with a boolean mask",
        "aten._unique2",
        "Tensor.tolist()",
    ]


def test_every_method_is_checked() -> None:
    assert {PARAMS.pretrain.runs[r].method for r in TRAINED_RUNS} | {"finetune"} == set(METHODS.names())
