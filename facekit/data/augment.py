"""Low-level image augmentations on uint8 RGB arrays ``[H, W, 3]``, built on OpenCV and numpy.

Each op reproduces the torchvision (v2, tensor) operation of the same name on the same parameters,
within a grey level or two where OpenCV rounds and torchvision truncates, and runs several times faster
(no PIL, no float round trips between ops). Randomness comes only from the global ``np.random`` state,
so a training loop that seeds each sample gets reproducible views.

``normalize_to_tensor`` is bit-exact with ``ToTensor`` + ``Normalize``: it looks each byte up in a
float32 table computed with the same float32 arithmetic, one pass per channel.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Literal

import cv2
import numpy as np
import torch

Box = tuple[int, int, int, int]
Interpolation = Literal["bilinear", "bicubic", "area"]

_INTERPOLATION = {"bilinear": cv2.INTER_LINEAR, "bicubic": cv2.INTER_CUBIC, "area": cv2.INTER_AREA}


def sample_resized_crop(h: int, w: int, scale: tuple[float, float], ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> Box:
    """Draw a RandomResizedCrop box ``(top, left, height, width)`` in an ``h x w`` image.

    torchvision's rule: up to 10 tries of an area fraction uniform in ``scale`` and an aspect ratio
    (width / height) log-uniform in ``ratio``, keeping the first that fits, placed uniformly; otherwise the
    largest centred crop whose aspect is clamped to ``ratio``. Each try takes one ``np.random.random(4)``
    draw (area, aspect, top, left): scalar maths, as the first try almost always fits.
    """
    area = h * w
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        u_area, u_aspect, u_top, u_left = np.random.random(4).tolist()
        target = area * (scale[0] + (scale[1] - scale[0]) * u_area)
        aspect = math.exp(log_lo + (log_hi - log_lo) * u_aspect)
        cw, ch = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < cw <= w and 0 < ch <= h:
            return int(u_top * (h - ch + 1)), int(u_left * (w - cw + 1)), ch, cw
    in_ratio = w / h
    if in_ratio < min(ratio):
        cw, ch = w, round(w / min(ratio))
    elif in_ratio > max(ratio):
        ch, cw = h, round(h * max(ratio))
    else:
        ch, cw = h, w
    return (h - ch) // 2, (w - cw) // 2, ch, cw


def resized_crop(
    img: np.ndarray, box: Box, size: int | tuple[int, int], interpolation: Interpolation = "bilinear"
) -> np.ndarray:
    """Crop ``box = (top, left, height, width)`` from ``img [H, W, 3]`` and resize it to ``[S, S, 3]``.

    ``size`` is ``S`` or ``(height, width)``. The crop is a view, resized by one ``cv2.resize`` (pixel
    centres aligned like torchvision's). A crop shrunk in both directions uses ``INTER_AREA`` whatever
    ``interpolation`` says: OpenCV's bilinear/bicubic do not antialias, torchvision (``antialias=True``)
    does, and area averaging is the closest antialiased OpenCV filter.
    """
    top, left, height, width = box
    out_h, out_w = (size, size) if isinstance(size, int) else size
    crop = img[top : top + height, left : left + width]
    flag = _INTERPOLATION[interpolation]
    if height > out_h and width > out_w:
        flag = cv2.INTER_AREA
    if (height, width) == (out_h, out_w):
        return np.ascontiguousarray(crop)
    return cv2.resize(crop, (out_w, out_h), interpolation=flag)


def hflip(img: np.ndarray) -> np.ndarray:
    """Mirror ``img [H, W, C]`` left-right (a new contiguous array)."""
    return cv2.flip(img, 1)


def adjust_brightness(img: np.ndarray, factor: float) -> np.ndarray:
    """``img * factor``, clipped and truncated to uint8 like torchvision's."""
    return cv2.LUT(img, _blend_table(factor, 0.0))


def adjust_contrast(img: np.ndarray, factor: float) -> np.ndarray:
    """Blend ``img`` with the mean of its grayscale image (torchvision's ``adjust_contrast``)."""
    mean = float(cv2.mean(cv2.cvtColor(img, cv2.COLOR_RGB2GRAY))[0])
    return cv2.LUT(img, _blend_table(factor, mean))


def adjust_saturation(img: np.ndarray, factor: float) -> np.ndarray:
    """Blend ``img`` with its grayscale image (torchvision's ``adjust_saturation``)."""
    gray = cv2.cvtColor(cv2.cvtColor(img, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB)
    return cv2.addWeighted(img, factor, gray, 1.0 - factor, 0.0)


def adjust_hue(img: np.ndarray, factor: float) -> np.ndarray:
    """Rotate the hue by ``factor`` turns, ``factor`` in [-0.5, 0.5] (torchvision's ``adjust_hue``).

    In float32 HSV like torchvision (8-bit HSV would lose up to ~9 grey levels on a round trip), with its
    float -> uint8 rule ``trunc(x * 255.999)``.
    """
    if not -0.5 <= factor <= 0.5:
        raise ValueError(f"hue factor must be in [-0.5, 0.5], got {factor}")
    hsv = cv2.cvtColor(img.astype(np.float32) * np.float32(1 / 255), cv2.COLOR_RGB2HSV)  # hue in [0, 360)
    hue = hsv[..., 0]
    hue += np.float32((factor * 360) % 360)
    hue[hue >= 360] -= 360
    rgb = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    return (rgb * np.float32(255.999)).astype(np.uint8)


def color_jitter(img: np.ndarray, brightness: float, contrast: float, saturation: float, hue: float) -> np.ndarray:
    """torchvision's ``ColorJitter``: the four adjustments in a random order with random factors.

    Brightness, contrast and saturation factors are uniform in ``[max(0, 1 - x), 1 + x]``, the hue shift
    uniform in ``[-hue, hue]``; an op whose strength is 0 is skipped.
    """
    for op in np.random.permutation(4):
        if op == 0 and brightness > 0:
            img = adjust_brightness(img, np.random.uniform(max(0.0, 1 - brightness), 1 + brightness))
        elif op == 1 and contrast > 0:
            img = adjust_contrast(img, np.random.uniform(max(0.0, 1 - contrast), 1 + contrast))
        elif op == 2 and saturation > 0:
            img = adjust_saturation(img, np.random.uniform(max(0.0, 1 - saturation), 1 + saturation))
        elif op == 3 and hue > 0:
            img = adjust_hue(img, np.random.uniform(-hue, hue))
    return img


def to_grayscale(img: np.ndarray) -> np.ndarray:
    """ITU-R 601 luma (0.299 R + 0.587 G + 0.114 B, rounded) repeated on 3 channels: ``[H, W, 3]``."""
    return cv2.cvtColor(cv2.cvtColor(img, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB)


def gaussian_blur(img: np.ndarray, sigma: float, kernel_size: int | None = None) -> np.ndarray:
    """Gaussian blur with reflected borders (torchvision's padding); ``kernel_size`` odd, default ``2⌈3σ⌉+1``."""
    k = kernel_size if kernel_size is not None else 2 * math.ceil(3 * sigma) + 1
    return cv2.GaussianBlur(img, (k, k), sigmaX=sigma, sigmaY=sigma, borderType=cv2.BORDER_REFLECT_101)


def solarize(img: np.ndarray, threshold: int = 128) -> np.ndarray:
    """Invert every value ``>= threshold`` (torchvision's ``solarize``)."""
    return cv2.LUT(img, _solarize_table(threshold))


def normalize_to_tensor(img: np.ndarray, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """``img [H, W, 3]`` uint8 -> float32 tensor ``[3, H, W]`` of ``(img / 255 - mean) / std``.

    One table look-up per channel straight into the tensor's memory; bit-exact with torchvision's
    ``Normalize(mean, std)(ToTensor()(img))``.
    """
    out = torch.empty((3, img.shape[0], img.shape[1]), dtype=torch.float32)
    planes, tables = out.numpy(), _normalize_tables(tuple(mean), tuple(std))
    for c, channel in enumerate(cv2.split(img)):
        cv2.LUT(channel, tables[c], dst=planes[c])
    return out


def to_uint8_tensor(img: np.ndarray) -> torch.Tensor:
    """``img [H, W, 3]`` uint8 -> uint8 tensor ``[3, H, W]``, to be normalised on the accelerator."""
    return torch.from_numpy(np.stack(cv2.split(img)))


def normalize_batch(x: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """Accelerator side of :func:`to_uint8_tensor`: uint8 ``[B, 3, H, W]`` -> float32 ``(x / 255 - mean) / std``.

    Same arithmetic as :func:`normalize_to_tensor`, on ``x``'s device.
    """
    m = torch.tensor(mean, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    return x.float().div_(255).sub_(m).div_(s)


@lru_cache(maxsize=64)
def _normalize_tables(mean: tuple[float, ...], std: tuple[float, ...]) -> tuple[np.ndarray, ...]:
    values = np.arange(256, dtype=np.float32) / np.float32(255)
    return tuple((values - np.float32(m)) / np.float32(s) for m, s in zip(mean, std, strict=True))


def _blend_table(factor: float, other: float) -> np.ndarray:
    """``clip(v * factor + other * (1 - factor))`` truncated to uint8, in float32 like torchvision."""
    values = np.arange(256, dtype=np.float32) * np.float32(factor) + np.float32(other * (1.0 - factor))
    return np.clip(values, 0, 255).astype(np.uint8)


@lru_cache(maxsize=256)
def _solarize_table(threshold: int) -> np.ndarray:
    values = np.arange(256, dtype=np.uint8)
    return np.where(values >= threshold, 255 - values, values).astype(np.uint8)
