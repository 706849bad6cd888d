"""The engine's step on CUDA (``pytest -m gpu``): it syncs with the host only at the non-finite guard, and the
speed settings (fused optimizer, channels-last, torch.compile) leave the step's arithmetic as it is under
bf16 autocast."""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from facekit.config import TrainConfig, load_params
from facekit.data.images import encode_jpeg
from facekit.data.ops.align import ARCFACE_TEMPLATE
from facekit.data.record import FaceRecord
from facekit.methods.base import METHODS, Method, StepValues
from facekit.nn.backbones import RANDOM_INIT
from facekit.stages.pretrain import build_method
from facekit.train.optim import build_optimizer
from facekit.train.step import TrainStep, prepare_model, to_device
from tests.methods.test_registry_sweep import _batch

pytestmark = pytest.mark.gpu

PROJECT = Path(__file__).resolve().parents[2]
PARAMS = load_params(PROJECT / "params.yaml")
TRAINED_RUNS = [name for name, run in PARAMS.pretrain.runs.items() if run.method != RANDOM_INIT]
SMALL_MAE = {"backbone": "vit_small_patch16_224", "backbone_kwargs": {"img_size": 112}}


@pytest.fixture(scope="module")
def faces() -> list[tuple[np.ndarray, FaceRecord]]:
    """Two random 112 px faces with a masked twin and 468 dense landmarks (every view's inputs)."""
    rng = np.random.default_rng(0)
    out = []
    for i in range(2):
        rgb = rng.integers(0, 256, (112, 112, 3), dtype=np.uint8)
        record = FaceRecord(
            key=f"t/{i}", image=encode_jpeg(rgb[..., ::-1].copy()), identity=0,
            landmarks=ARCFACE_TEMPLATE.astype(np.float32), bbox=np.array([0, 0, 112, 112], np.float32),
            det_score=1.0, num_faces=1, source="t", source_sha256="0" * 64, mask="surgical",
            masked_image=encode_jpeg(rgb.copy()),
            extra={"dense_landmarks": rng.uniform(8, 104, (468, 2)).astype(np.float16)},
        )  # fmt: skip
        out.append((rgb, record))
    return out


@pytest.fixture(scope="module")
def cuda() -> torch.device:
    if not torch.cuda.is_available():
        pytest.fail("the gpu tests need a CUDA device")
    return torch.device("cuda")


def _engine(method: Method, cuda: torch.device, tmp_path: Path, **settings: Any) -> TrainStep:
    cfg = TrainConfig(epochs=1, batch_size=2, out_dir=tmp_path, lr=1e-3, clip_grad=1.0, progress=False, **settings)
    model, ddp = prepare_model(method, cfg, cuda)
    return TrainStep(method, model, ddp, build_optimizer(method, cfg, cfg.lr), cfg, cuda)


def _hp(method: Method) -> StepValues:
    extra = {k: float(v[0]) for k, v in method.schedules(10, 5).items()}
    return StepValues(step=0, epoch=0.0, progress=0.0, lr=1e-3, weight_decay=0.05, momentum=0.99, extra=extra)


@pytest.mark.parametrize("run", TRAINED_RUNS)
def test_a_cuda_step_waits_for_the_gpu_only_at_the_guard(run: str, faces: list, cuda, tmp_path) -> None:
    """CUDA's own sync detector (``set_sync_debug_mode``) over a whole step, fused AdamW as on CUDA by default."""
    torch.manual_seed(0)
    method, _ = build_method(PARAMS.pretrain.runs[run])
    batch = to_device(_batch(method.views(), faces), cuda)
    step = _engine(method.to(cuda), cuda, tmp_path)
    step([batch], _hp(method))  # first step: lazy state (optimizer moments, EMA copies) is made outside the check
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            assert step([batch], dataclasses.replace(_hp(method), step=1))
        finally:
            torch.cuda.set_sync_debug_mode("default")
    syncs = [f"{Path(w.filename).name}:{w.lineno}" for w in seen if "synchroniz" in str(w.message)]
    assert len(syncs) == 1 and syncs[0].startswith("step.py:"), syncs


@pytest.mark.parametrize(
    ("name", "kwargs", "settings"),
    [
        ("mae", SMALL_MAE, {"fused_optimizer": True}),
        ("mae", SMALL_MAE, {"compile": "default"}),
        ("fra", {"backbone": "resnet50"}, {"channels_last": True}),
    ],
    ids=["fused", "compile", "channels_last"],
)
@torch._inductor.config.patch(fallback_random=True)  # compiled random masking draws as eager does
def test_speed_settings_leave_the_cuda_step_as_it_is(
    name: str, kwargs: dict, settings: dict, cuda: torch.device, tmp_path: Path
) -> None:
    """One bf16 step with and without the setting from the same weights and batch: the same loss (within bf16
    rounding) and weights that moved alike (SGD: an update linear in the gradient)."""
    torch.manual_seed(0)
    a = METHODS.create(name, **kwargs).to(cuda)
    b = METHODS.create(name, **kwargs).to(cuda)
    b.load_state_dict(a.state_dict())
    before = {k: v.detach().clone() for k, v in a.state_dict().items()}
    size = 112 if name == "mae" else 224
    views = torch.randint(0, 256, (2, 32, 3, size, size), dtype=torch.uint8, device=cuda)
    batch = {"image": views[0].float() / 255} if name == "mae" else {"view1": views[0], "view2": views[1]}
    results = []
    optimizer = "adamw" if "fused_optimizer" in settings else "sgd"  # SGD: an update linear in the gradient
    for method, extra in ((a, {}), (b, settings)):
        torch.manual_seed(1)
        step = _engine(method, cuda, tmp_path, optimizer=optimizer, **extra)
        assert step([batch], _hp(method))
        results.append((step.drain()["loss"], {k: v.detach().float() for k, v in method.state_dict().items()}))
    (loss_a, after_a), (loss_b, after_b) = results
    assert loss_b == pytest.approx(loss_a, rel=2e-2)
    for key, value in after_a.items():
        if value.is_floating_point():
            moved_a, moved_b = value - before[key].float(), after_b[key] - before[key].float()
            scale = moved_a.abs().max().item() + 1e-12
            assert (moved_b - moved_a).abs().max().item() <= 0.1 * scale + 1e-6, key
