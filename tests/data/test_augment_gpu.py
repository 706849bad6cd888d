"""The batched photometric path (facekit.data.augment_gpu) against the per-image OpenCV ops, on the CPU device,
and DINO / LAFS with ``photometric="device"``."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from facekit.data import augment as A
from facekit.data import augment_gpu as G
from facekit.data.images import decode_jpeg_rgb
from facekit.data.views import ViewRecipe
from facekit.methods.base import StepValues
from facekit.methods.dino import DINO, dino_recipes
from facekit.methods.lafs import LAFS


@pytest.fixture(scope="module")
def photos(assets: Path) -> np.ndarray:
    """Six real photos, centre-cropped and resized to 64 x 64 RGB: ``[6, 64, 64, 3]`` uint8."""
    out = []
    for name in ("img1.jpg", "img2.jpg", "img5.jpg", "img10.jpg", "img17.jpg", "img30.jpg"):
        rgb = decode_jpeg_rgb((assets / "faces/deepface" / name).read_bytes())
        side = min(rgb.shape[:2])
        top, left = (rgb.shape[0] - side) // 2, (rgb.shape[1] - side) // 2
        out.append(cv2.resize(rgb[top : top + side, left : left + side], (64, 64), interpolation=cv2.INTER_AREA))
    return np.stack(out)


def batch(images: np.ndarray) -> torch.Tensor:
    """``[B, H, W, 3]`` uint8 -> float32 ``[B, 3, H, W]`` holding 0..255."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float()


def images_of(x: torch.Tensor) -> np.ndarray:
    return x.permute(0, 2, 3, 1).round().to(torch.uint8).numpy()


def diff(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.abs(a.astype(np.int32) - b.astype(np.int32))


OPS = {
    "brightness": (G.adjust_brightness, A.adjust_brightness, [0.6, 0.93, 1.0, 1.17, 1.4, 0.75]),
    "contrast": (G.adjust_contrast, A.adjust_contrast, [0.6, 0.81, 1.0, 1.23, 1.4, 1.05]),
    "saturation": (G.adjust_saturation, A.adjust_saturation, [0.8, 0.9, 1.0, 1.1, 1.2, 0.0]),
    "hue": (G.adjust_hue, A.adjust_hue, [-0.1, -0.03, 0.0, 0.04, 0.1, 0.5]),
}


@pytest.mark.parametrize("name", sorted(OPS))
def test_each_jitter_op_matches_the_per_image_op_with_per_sample_factors(photos: np.ndarray, name: str) -> None:
    gpu_op, cpu_op, factors = OPS[name]
    out = gpu_op(batch(photos), torch.tensor(factors))
    assert out.shape == (6, 3, 64, 64) and out.dtype == torch.float32
    assert torch.equal(out, out.floor()) and out.min() >= 0 and out.max() <= 255  # uint8 values between ops
    ref = np.stack([cpu_op(img, f) for img, f in zip(photos, factors, strict=True)])
    d = diff(images_of(out), ref)  # OpenCV's uint8 colour matrix is fixed point: a few values one level off
    assert d.max() <= 1 and d.mean() < 0.1, (d.max(), d.mean())
    identity = factors.index(0.0 if name == "hue" else 1.0)
    assert np.array_equal(images_of(out)[identity], photos[identity])  # identity factor: bit for bit


def test_grayscale_and_solarize_are_exact(photos: np.ndarray) -> None:
    mask = torch.tensor([True, False, True, True, False, True])
    gray = images_of(G.to_grayscale(batch(photos), mask))
    sol = images_of(G.solarize(batch(photos), mask))
    for i, m in enumerate(mask.tolist()):
        assert np.array_equal(gray[i], A.to_grayscale(photos[i]) if m else photos[i])
        assert np.array_equal(sol[i], A.solarize(photos[i]) if m else photos[i])


def test_per_sample_blur_matches_opencv_and_sigma_zero_is_identity(photos: np.ndarray) -> None:
    sigma = torch.tensor([0.1, 0.6, 1.0, 0.0, 1.5, 2.0])
    out = images_of(G.gaussian_blur(batch(photos), sigma, max_sigma=2.0))
    for i, s in enumerate(sigma.tolist()):
        expected = A.gaussian_blur(photos[i], s) if s > 0 else photos[i]
        assert diff(out[i], expected).max() <= 1, s
    assert np.array_equal(out[3], photos[3])
    kernels = G.gaussian_kernels(sigma, radius=6)
    assert kernels.shape == (6, 13) and torch.allclose(kernels.sum(1), torch.ones(6))
    assert kernels[2, :3].abs().max() == 0 and kernels[2, 3] > 0  # sigma 1: 2⌈3σ⌉ + 1 = 7 taps, centred
    with pytest.raises(ValueError, match="blur radius 6"):
        G.gaussian_blur(torch.zeros(1, 3, 6, 6), torch.ones(1), max_sigma=2.0)


def test_color_jitter_follows_each_samples_own_order(photos: np.ndarray) -> None:
    orders = torch.tensor(list(itertools.permutations(range(4))))  # all 24 orders, one per sample
    images = photos[np.arange(24) % 6]
    factors = torch.tensor([[1.3, 0.7, 1.15, 0.08], [0.65, 1.35, 0.85, -0.06], [1.0, 1.0, 1.0, 0.0]] * 8)
    out = images_of(G.color_jitter(batch(images), orders, factors))
    for i in range(24):
        params = (orders[i].tolist(), tuple(factors[i].tolist()))
        d = diff(out[i], A.apply_color_jitter(images[i], params))  # a level per op, amplified by later factors
        assert d.mean() < 0.2 and (d > 2).mean() < 0.005 and d.max() <= 6, (i, d.max(), d.mean())
        if i % 3 == 2:
            assert np.array_equal(out[i], images[i])  # identity factors: untouched
    # the order matters: brightness 1.4 then contrast 0.6 clips before blending, the reverse does not
    strong = torch.tensor([[1.4, 0.6, 1.0, 0.0]])
    bright_first = G.color_jitter(batch(photos[:1]), torch.tensor([[0, 1, 2, 3]]), strong)
    contrast_first = G.color_jitter(batch(photos[:1]), torch.tensor([[1, 0, 2, 3]]), strong)
    assert not torch.equal(bright_first, contrast_first)


def test_sampled_parameters_follow_the_recipe() -> None:
    step = G.BatchPhotometric(jitter_p=0.8, gray_p=0.2, blur_p=0.5, blur_sigma=(0.1, 2.0), solarize_p=0.3)
    params = step.sample(20000, generator=torch.Generator().manual_seed(1))
    assert torch.equal(params.order.sort(dim=1).values, torch.arange(4).expand(20000, 4))  # permutations
    jittered = (params.factors != torch.tensor(A.IDENTITY_JITTER)).any(dim=1)
    assert abs(jittered.float().mean().item() - 0.8) < 0.015
    f = params.factors[jittered]
    assert f[:, 0].min() >= 0.6 and f[:, 0].max() <= 1.4 and abs(f[:, 0].mean().item() - 1.0) < 0.01
    assert f[:, 2].min() >= 0.8 and f[:, 2].max() <= 1.2 and f[:, 3].abs().max() <= 0.1
    assert abs(params.gray.float().mean().item() - 0.2) < 0.015
    assert abs(params.solarize.float().mean().item() - 0.3) < 0.015
    blurred = params.sigma > 0
    assert abs(blurred.float().mean().item() - 0.5) < 0.015
    assert params.sigma[blurred].min() >= 0.1 and params.sigma[blurred].max() <= 2.0
    first_op = torch.bincount(params.order[:, 0], minlength=4).float() / 20000
    assert (first_op - 0.25).abs().max() < 0.015  # every op leads a quarter of the time
    none = G.BatchPhotometric().sample(5)
    assert torch.equal(none.factors, torch.tensor(A.IDENTITY_JITTER).expand(5, 4)) and not none.gray.any()


def test_batch_photometric_keeps_uint8_shapes_and_rejects_other_input(photos: np.ndarray) -> None:
    x = torch.from_numpy(photos).permute(0, 3, 1, 2).contiguous()
    step = G.BatchPhotometric.from_recipe(ViewRecipe(64, jitter_p=1.0, gray_p=0.5, blur_p=1.0, solarize_p=0.5))
    out = step(x, torch.Generator().manual_seed(0))
    assert out.dtype == torch.uint8 and out.shape == x.shape and not torch.equal(out, x)
    again = step(x, torch.Generator().manual_seed(0))
    assert torch.equal(out, again)  # the generator decides everything
    assert torch.equal(G.BatchPhotometric()(x), x)
    with pytest.raises(ValueError, match="uint8 images"):
        step(x.float())


def test_batch_photometric_equals_the_per_image_recipe_for_the_same_draws(photos: np.ndarray) -> None:
    """One global-0 DINO recipe, parameters drawn once and applied by both paths (blur then solarize)."""
    (global_0, _), _ = dino_recipes(64, 32, (0.4, 1.0), (0.05, 0.4), (0.5,) * 3, (0.5,) * 3)
    step = G.BatchPhotometric.from_recipe(global_0)
    params = step.sample(6, generator=torch.Generator().manual_seed(3))
    out = step.apply(torch.from_numpy(photos).permute(0, 3, 1, 2).contiguous(), params).permute(0, 2, 3, 1).numpy()
    for i in range(6):
        img = A.apply_color_jitter(photos[i], (params.order[i].tolist(), tuple(params.factors[i].tolist())))
        img = A.to_grayscale(img) if params.gray[i] else img
        img = A.gaussian_blur(img, params.sigma[i].item())  # global 0 is always blurred
        d = diff(out[i], img)
        assert d.mean() < 0.2 and (d > 2).mean() < 0.005 and d.max() <= 6, (i, d.max(), d.mean())


# ---------------------------------------------------------------- DINO / LAFS with photometric="device"

TINY = dict(img_size=32, embed_dim=32, depth=1, num_heads=2)
HEAD = dict(out_dim=64, head_hidden_dim=64, head_bottleneck_dim=16)


def _hp() -> StepValues:
    return StepValues(step=0, epoch=0.0, progress=0.0, lr=1e-3, weight_decay=0.0, momentum=0.99)


def _collate(items: list[dict]) -> dict[str, torch.Tensor]:
    return {k: torch.stack([item[k] for item in items]) for k in items[0]}


def test_dino_device_photometric_views_are_plain_crops_and_the_step_augments_them() -> None:
    method = DINO(backbone_kwargs=TINY, local_size=16, n_local=2, photometric="device", **HEAD)
    rgb = np.random.default_rng(0).integers(0, 256, (112, 112, 3), dtype=np.uint8)
    np.random.seed(4)
    out = method.views()(rgb)
    assert out["global_0"].dtype == torch.uint8 and out["local_1"].shape == (3, 16, 16)
    top, left, h, w = (round(float(v) * 112) for v in out["global_1_box"][:4])
    crop = A.resized_crop(rgb, (top, left, h, w), 32, "bicubic")
    crop = A.hflip(crop) if out["global_1_box"][4] else crop
    assert torch.equal(out["global_1"], torch.from_numpy(crop).permute(2, 0, 1))  # crop + flip, nothing else

    global_recipes, _ = method.recipes()
    views = torch.stack([out["global_0"]] * 8)
    torch.manual_seed(0)
    augmented = method.network_input(views, global_recipes[0])
    plain = A.normalize_batch(views, method.mean, method.std)
    assert augmented.dtype == torch.float32 and augmented.shape == (8, 3, 32, 32)
    assert all(not torch.equal(a, plain[0]) for a in augmented)  # global 0: always blurred, on the device
    assert len({a.sum().item() for a in augmented}) == 8  # per-sample parameters
    normalised = DINO(backbone_kwargs=TINY, local_size=16, n_local=2, **HEAD)
    assert normalised.views()(rgb)["global_0"].dtype == torch.float32  # default: normalised in the workers
    assert torch.equal(normalised.network_input(plain, global_recipes[0]), plain)
    uint8 = DINO(backbone_kwargs=TINY, local_size=16, n_local=2, normalize=False, **HEAD)
    assert uint8.views()(rgb)["local_0"].dtype == torch.uint8  # normalised on the device, nothing else
    assert torch.equal(uint8.network_input(views, global_recipes[0]), plain)

    torch.manual_seed(0)
    batch = _collate([method.views()(rgb) for _ in range(3)])
    loss = method(batch, _hp())["loss"]
    assert math.isfinite(loss.item())
    with pytest.raises(ValueError, match="photometric"):
        DINO(backbone_kwargs=TINY, photometric="gpu", **HEAD)


def test_lafs_learned_landmarks_with_device_photometric_run_on_the_clean_views() -> None:
    tiny = dict(embed_dim=32, depth=1, num_heads=2)
    learned = dict(landmarks="learned", train_landmark_head=True)
    method = LAFS(backbone_kwargs=tiny, n_local=1, photometric="device", **learned, **HEAD)
    views = method.views()
    np.random.seed(0)
    items = [views(np.random.randint(0, 256, (112, 112, 3), dtype=np.uint8)) for _ in range(2)]
    assert not any(k.endswith("_clean") for k in items[0])  # the views are the clean crops
    assert items[0]["local_0"].dtype == torch.uint8 and items[0]["local_0"].shape == (3, 112, 112)
    torch.manual_seed(0)
    loss = method(_collate(items), _hp())["loss"]
    loss.backward()
    assert math.isfinite(loss.item())
    assert method.landmark_head is not None and method.landmark_head.output_layer[1].weight.grad.abs().sum() > 0
