"""CUDA paths, on a machine with a GPU: ``pytest -m gpu`` (pyproject deselects them elsewhere, so the CPU
suite never reports them as skipped). Without a CUDA device these tests fail rather than skip.

- the batched photometric augmentation gives the CPU's uint8 images on CUDA for the same parameters;
- every sample pre-training run trains on CUDA (the engine's default there: bf16 autocast) with finite
  losses (falling, but for self-distillation) and no skipped step, and its exported backbone gives the same
  embeddings on the CPU as on the GPU.
"""

from __future__ import annotations

import csv
import math
import warnings
from pathlib import Path

import pytest
import torch

from facekit.config import PathsParams, load_params
from facekit.data.augment_gpu import BatchPhotometric, PhotometricParams
from facekit.data.views import ViewRecipe
from facekit.nn import backbones
from facekit.nn.backbones import RANDOM_INIT
from facekit.stages import pretrain

pytestmark = pytest.mark.gpu

PROJECT = Path(__file__).resolve().parents[2]
SAMPLE = load_params(PROJECT / "params.yaml").pretrain
#: every sample run that trains; LAFS takes its landmarks from its own head, trained alongside (the pack-only
#: shards here have no dense landmarks)
RUNS = [name for name, run in SAMPLE.runs.items() if run.method != RANDOM_INIT]
RUN_OVERRIDES = {"lafs": {"landmarks": "learned", "train_landmark_head": True}}
STEPS = 24  # 61 faces // 16 = 3 steps per epoch
#: self-distillation losses need not fall in 24 steps: the teacher's targets sharpen as its temperature warms up
NOT_FALLING = {"dino", "lafs"}


@pytest.fixture(scope="module")
def cuda() -> torch.device:
    if not torch.cuda.is_available():
        pytest.fail("the gpu tests need a CUDA device")
    return torch.device("cuda")


def _on(params: PhotometricParams, device: torch.device) -> PhotometricParams:
    return PhotometricParams(*(getattr(params, f).to(device) for f in PhotometricParams.__dataclass_fields__))


def test_batch_photometric_on_cuda_gives_the_cpu_images(cuda: torch.device) -> None:
    """Every photometric op (jitter, grayscale, blur, solarize), the same per-sample parameters on both."""
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (64, 3, 112, 112), dtype=torch.uint8, generator=gen)
    images = torch.nn.functional.avg_pool2d(images.float(), 5, 1, 2).to(torch.uint8)  # face-like smoothness
    aug = BatchPhotometric.from_recipe(ViewRecipe(112, jitter_p=1.0, gray_p=0.5, blur_p=1.0, solarize_p=0.5))
    params = aug.sample(64, generator=gen)
    assert params.gray.any() and params.solarize.any() and (params.sigma > 0).all() and (params.factors != 1).all()
    on_cpu = aug.apply(images, params)
    on_gpu = aug.apply(images.to(cuda), _on(params, cuda)).cpu()
    assert on_gpu.dtype == torch.uint8 and on_gpu.shape == images.shape
    d = (on_gpu.int() - on_cpu.int()).abs()
    # float rounding may move a value across a .5 between ops; nothing more
    assert d.max() <= 2 and (d > 0).float().mean() < 0.01, (d.max(), (d > 0).float().mean())


@pytest.mark.parametrize("run", RUNS)
def test_each_sample_run_trains_on_cuda_and_its_backbone_runs_on_the_cpu(
    run: str, cuda: torch.device, sample_shards: Path, tmp_path: Path
) -> None:
    overrides = {
        "pretrain.shards": str(sample_shards),
        "pretrain.out": str(tmp_path),
        "pretrain.train.warmup_epochs": 1,
    }
    overrides |= {"pretrain.train.epochs": STEPS // 3, f"pretrain.runs.{run}.train.epochs": STEPS // 3}
    overrides |= {f"pretrain.runs.{run}.{key}": value for key, value in RUN_OVERRIDES.get(run, {}).items()}
    params = load_params(PROJECT / "params.yaml", overrides)
    torch.cuda.reset_peak_memory_stats(cuda)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "MCF perceptual teacher has no checkpoint")
        result = pretrain.run(params, PathsParams(metrics=str(tmp_path)), run, progress=False)
    assert torch.cuda.max_memory_allocated(cuda) > 0  # the steps ran on the GPU
    with (tmp_path / run / "train_log.csv").open() as f:
        losses = [float(row["loss"]) for row in csv.DictReader(f)]
    assert result.steps == len(losses) == STEPS and result.skipped_steps == 0
    assert all(math.isfinite(v) for v in losses)
    if run not in NOT_FALLING:
        assert sum(losses[-3:]) < sum(losses[:3]), losses

    backbone = backbones.load(tmp_path / run).eval()
    x = torch.randn(4, 3, 112, 112, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        on_cpu = backbone(x)
        on_gpu = backbone.to(cuda)(x.to(cuda)).cpu()
    cos = torch.nn.functional.cosine_similarity(on_cpu.flatten(1), on_gpu.flatten(1))
    assert cos.min() > 0.999, cos  # fp32 on both (TF32 matmuls allowed on the GPU)
