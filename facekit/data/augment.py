"""Low-level image augmentations on uint8 RGB arrays ``[H, W, 3]``, built on OpenCV and numpy.

Each op reproduces the torchvision operation of the same name on the same parameters within a grey level and
runs several times faster: no PIL, no float images between ops, one OpenCV pass per op. Brightness and contrast are
each one ``cv2.addWeighted``, saturation one ``cv2.transform`` (a 3 x 4 colour matrix); OpenCV rounds, an
offset of ``-0.5 + 2^-10`` turns that into torchvision's and PIL's truncation. Randomness comes only from the global
``np.random`` state, so a training loop that seeds each sample gets reproducible views.

``normalize_to_tensor`` is bit-exact with ``ToTensor`` + ``Normalize``: it looks each byte up in a
float32 table computed with the same float32 arithmetic, one pass per channel.
:mod:`facekit.data.augment_gpu` has the same photometric ops on batches of tensors, for any device.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache
from typing import Literal

import cv2
import numpy as np
import torch

Box = tuple[int, int, int, int]
Interpolation = Literal["bilinear", "bicubic", "area"]
#: ColorJitter's random state: the op order (a permutation of 0 brightness, 1 contrast, 2 saturation,
#: 3 hue) and the factors ``(brightness, contrast, saturation, hue)``; identity factors (1, 1, 1, 0) skip.
JitterParams = tuple[Sequence[int], tuple[float, float, float, float]]

#: Shrink factor (in both directions) from which :func:`resized_crop` antialiases.
ANTIALIAS_FROM = 1.5
_INTERPOLATION = {"bilinear": cv2.INTER_LINEAR, "bicubic": cv2.INTER_CUBIC, "area": cv2.INTER_AREA}
#: ITU-R 601 luma weights (torchvision's, PIL's and OpenCV's grayscale).
GRAY_WEIGHTS = (0.299, 0.587, 0.114)
_TRUNCATE = -0.5 + 2**-10
#: Gaussian blurs this narrow (3 taps, centre weight > 0.9993) change no uint8 pixel.
_IDENTITY_SIGMA = 0.25
IDENTITY_JITTER = (1.0, 1.0, 1.0, 0.0)
#: The hue rotation's 3 x 4 matrix on HSV pixels before its offset (``[0, 3]``, degrees) is set.
_HUE_IDENTITY = np.eye(3, 4, dtype=np.float32)


def sample_resized_crop(
    h: int,
    w: int,
    scale: tuple[float, float],
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    first_try: Sequence[float] | None = None,
) -> Box:
    """Draw a RandomResizedCrop box ``(top, left, height, width)`` in an ``h x w`` image.

    torchvision's rule: up to 10 tries of an area fraction uniform in ``scale`` and an aspect ratio
    (width / height) log-uniform in ``ratio``, keeping the first that fits, placed uniformly; otherwise the
    largest centred crop whose aspect is clamped to ``ratio``. A try takes four uniforms (area, aspect, top,
    left): ``first_try``'s if given (the caller drew them with its other numbers), else one
    ``np.random.random(4)`` per try; scalar maths, as the first try almost always fits.
    """
    area = h * w
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for attempt in range(10):
        u = first_try if attempt == 0 and first_try is not None else np.random.random(4).tolist()
        u_area, u_aspect, u_top, u_left = u
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

    ``size`` is ``S`` or ``(height, width)``. The crop is a view, resized by ``cv2.resize`` (pixel centres
    aligned like torchvision's). OpenCV's bilinear/bicubic do not antialias, torchvision (``antialias=True``)
    and PIL do: a crop shrunk by ``ANTIALIAS_FROM`` or more in both directions is resized with
    ``interpolation`` to the smallest integer multiple ``(ky·S_h, kx·S_w)`` of the output not below it, then
    area-averaged ``ky x kx`` down (OpenCV's fast integer-factor path; closer to PIL's antialiased bicubic
    than plain ``INTER_AREA``, and faster). Milder shrinks (all of DINO's local crops) are resized directly,
    at half the cost: within 2 grey levels on average of PIL's antialiased bicubic (slightly sharper).
    """
    top, left, height, width = box
    out_h, out_w = (size, size) if isinstance(size, int) else size
    crop = img[top : top + height, left : left + width]
    flag = _INTERPOLATION[interpolation]
    if (height, width) == (out_h, out_w):
        return np.ascontiguousarray(crop)
    if height >= ANTIALIAS_FROM * out_h and width >= ANTIALIAS_FROM * out_w:
        mid_h, mid_w = -(-height // out_h) * out_h, -(-width // out_w) * out_w
        if (mid_h, mid_w) != (height, width):
            crop = cv2.resize(crop, (mid_w, mid_h), interpolation=flag)
        flag = cv2.INTER_AREA
    return cv2.resize(crop, (out_w, out_h), interpolation=flag)


def hflip(img: np.ndarray) -> np.ndarray:
    """Mirror ``img [H, W, C]`` left-right (a new contiguous array)."""
    return cv2.flip(img, 1)


def adjust_brightness(img: np.ndarray, factor: float) -> np.ndarray:
    """``img * factor``, clipped and truncated to uint8 like torchvision's."""
    return cv2.addWeighted(img, factor, img, 0.0, _TRUNCATE)


def adjust_contrast(img: np.ndarray, factor: float) -> np.ndarray:
    """Blend ``img`` with the mean of its grayscale image (torchvision's ``adjust_contrast``)."""
    r, g, b, _ = cv2.mean(img)
    mean = GRAY_WEIGHTS[0] * r + GRAY_WEIGHTS[1] * g + GRAY_WEIGHTS[2] * b
    return cv2.addWeighted(img, factor, img, 0.0, (1.0 - factor) * mean + _TRUNCATE)


def adjust_saturation(img: np.ndarray, factor: float) -> np.ndarray:
    """Blend ``img`` with its grayscale image (torchvision's ``adjust_saturation``): one 3 x 4 colour matrix."""
    mix, t = 1.0 - factor, _TRUNCATE
    r, g, b = GRAY_WEIGHTS[0] * mix, GRAY_WEIGHTS[1] * mix, GRAY_WEIGHTS[2] * mix
    matrix = np.array([[factor + r, g, b, t], [r, factor + g, b, t], [r, g, factor + b, t]], np.float32)
    return cv2.transform(img, matrix)


def adjust_hue(img: np.ndarray, factor: float) -> np.ndarray:
    """Rotate the hue by ``factor`` turns, ``factor`` in [-0.5, 0.5] (torchvision's ``adjust_hue``).

    In float32 HSV like torchvision (8-bit HSV would lose up to ~9 grey levels on a round trip): OpenCV's
    float HSV needs no scaling to [0, 1] (hue and saturation do not depend on it), the rotation is one
    ``cv2.transform`` (OpenCV wraps hues up to 720°) and the way back to uint8 is torchvision's
    ``trunc(x * 255.999 / 255)``.
    """
    if not -0.5 <= factor <= 0.5:
        raise ValueError(f"hue factor must be in [-0.5, 0.5], got {factor}")
    hsv = cv2.cvtColor(img.astype(np.float32), cv2.COLOR_RGB2HSV)  # hue in [0, 360)
    shift = _HUE_IDENTITY.copy()
    shift[0, 3] = (factor * 360) % 360
    rgb = cv2.cvtColor(cv2.transform(hsv, shift), cv2.COLOR_HSV2RGB)
    return cv2.convertScaleAbs(rgb, alpha=255.999 / 255, beta=_TRUNCATE)


def color_jitter_params(
    brightness: float, contrast: float, saturation: float, hue: float, u: Sequence[float] | None = None
) -> JitterParams:
    """Draw torchvision's ``ColorJitter`` state: a uniformly random op order and the factors.

    Brightness, contrast and saturation factors are uniform in ``[max(0, 1 - x), 1 + x]``, the hue shift
    uniform in ``[-hue, hue]``; an op whose strength is 0 gets the identity factor. Eight uniforms: ``u``
    if given, else one ``np.random`` draw (four sort keys for the order, four for the factors).
    """
    if u is None:
        u = np.random.random(8).tolist()
    (low_b, span_b), (low_c, span_c), (low_s, span_s) = _jitter_ranges(brightness, contrast, saturation)
    order = sorted(range(4), key=u.__getitem__)
    hue_shift = hue * (2 * u[7] - 1) if hue > 0 else 0.0
    return order, (low_b + span_b * u[4], low_c + span_c * u[5], low_s + span_s * u[6], hue_shift)


@lru_cache(maxsize=64)
def _jitter_ranges(*strengths: float) -> tuple[tuple[float, float], ...]:
    """``(low, span)`` per strength: factors uniform in ``[max(0, 1 - x), 1 + x]``; ``(1, 0)`` (always 1) for 0."""
    ranges = []
    for strength in strengths:
        low = max(0.0, 1 - strength) if strength > 0 else 1.0
        ranges.append((low, 1 + strength - low if strength > 0 else 0.0))
    return tuple(ranges)


#: ColorJitter's adjustments by op index (the order of :data:`JitterParams`).
_ADJUSTMENTS = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)


def apply_color_jitter(img: np.ndarray, params: JitterParams) -> np.ndarray:
    """Apply a :func:`color_jitter_params` state: the four adjustments in its order, identity factors skipped."""
    order, factors = params
    for op in order:
        if factors[op] != IDENTITY_JITTER[op]:
            img = _ADJUSTMENTS[op](img, factors[op])
    return img


def color_jitter(img: np.ndarray, brightness: float, contrast: float, saturation: float, hue: float) -> np.ndarray:
    """torchvision's ``ColorJitter``: the four adjustments in a random order with random factors."""
    return apply_color_jitter(img, color_jitter_params(brightness, contrast, saturation, hue))


def to_grayscale(img: np.ndarray) -> np.ndarray:
    """ITU-R 601 luma (0.299 R + 0.587 G + 0.114 B, rounded) repeated on 3 channels: ``[H, W, 3]``."""
    return cv2.cvtColor(luma(img), cv2.COLOR_GRAY2RGB)


def luma(img: np.ndarray) -> np.ndarray:
    """ITU-R 601 luma of ``img [H, W, 3]``, rounded: ``[H, W]`` uint8 (OpenCV's 15-bit fixed point)."""
    return cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)


def gaussian_kernel_size(sigma: float) -> int:
    """The default (odd) kernel side for ``sigma``: ``2⌈3σ⌉ + 1``."""
    return 2 * math.ceil(3 * sigma) + 1


def gaussian_blur(img: np.ndarray, sigma: float | tuple[float, float], kernel_size: int | None = None) -> np.ndarray:
    """Gaussian blur with reflected borders (torchvision's padding) of ``img [H, W(, C)]``.

    sigma: one value or ``(sigma_x, sigma_y)``; ``kernel_size`` odd, default ``2⌈3σ⌉+1`` per axis. One
    separable float filter (``cv2.sepFilter2D``), rounded to uint8: for the wide kernels DINO draws it is
    2-3x faster than ``cv2.GaussianBlur``'s bit-exact fixed-point path. With the default kernel and both
    sigmas at most 0.25 the image comes back as is: the off-centre weights sum to under 0.5 / 255, so every
    pixel would round back to itself.
    """
    sigma_x, sigma_y = (sigma, sigma) if isinstance(sigma, (int, float)) else sigma
    if kernel_size is not None:
        kx = ky = kernel_size
    elif sigma_x <= _IDENTITY_SIGMA and sigma_y <= _IDENTITY_SIGMA:
        return img
    else:
        kx, ky = gaussian_kernel_size(sigma_x), gaussian_kernel_size(sigma_y)
    kernel_x = cv2.getGaussianKernel(kx, sigma_x, cv2.CV_32F)
    kernel_y = kernel_x if (ky, sigma_y) == (kx, sigma_x) else cv2.getGaussianKernel(ky, sigma_y, cv2.CV_32F)
    return cv2.sepFilter2D(img, -1, kernel_x, kernel_y, borderType=cv2.BORDER_REFLECT_101)


def solarize(img: np.ndarray, threshold: int = 128) -> np.ndarray:
    """Invert every value ``>= threshold`` (torchvision's ``solarize``)."""
    return cv2.LUT(img, _solarize_table(threshold))


def normalize_to_tensor(
    img: np.ndarray, mean: tuple[float, ...], std: tuple[float, ...], out: torch.Tensor | None = None
) -> torch.Tensor:
    """``img [H, W, 3]`` uint8 -> float32 tensor ``[3, H, W]`` of ``(img / 255 - mean) / std``; a luma plane
    ``img [H, W]`` counts as its 3 equal channels.

    One table look-up per channel straight into the tensor's memory (``out``, a contiguous float32
    ``[3, H, W]``, if given); bit-exact with torchvision's ``Normalize(mean, std)(ToTensor()(img))``.
    """
    if out is None:
        out = torch.empty((3, img.shape[0], img.shape[1]), dtype=torch.float32)
    planes, tables = out.numpy(), _normalize_tables(tuple(mean), tuple(std))
    for c, channel in enumerate(cv2.split(img) if img.ndim == 3 else (img,) * 3):
        cv2.LUT(channel, tables[c], dst=planes[c])
    return out


def to_uint8_tensor(img: np.ndarray) -> torch.Tensor:
    """``img [H, W, 3]`` uint8 -> uint8 tensor ``[3, H, W]``, to be normalised on the accelerator."""
    return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))


class ViewStack:
    """``n`` uint8 ``[H, W, 3]`` views written one by one into one ``[n, 3, H, W]`` tensor, as they are made.

    uint8 (``normalize=False``): each image is split straight into its three planes (``cv2.split``, no
    transposing copy; a grayscale view may come as its luma plane ``[H, W]``, copied to all three);
    float32: looked up into its slot by :func:`normalize_to_tensor`. Writing each view
    as soon as it exists keeps the working set small (faster than stacking a list at the end).
    """

    def __init__(
        self, n: int, height: int, width: int, normalize: bool, mean: tuple[float, ...], std: tuple[float, ...]
    ) -> None:
        self.normalize, self.mean, self.std = normalize, mean, std
        self._planes = np.empty((n, 3, height, width), dtype=np.float32 if normalize else np.uint8)
        self.tensor = torch.from_numpy(self._planes)

    def put(self, i: int, img: np.ndarray) -> None:
        """Write view ``i``: uint8 ``[H, W, 3]``, or a luma plane ``[H, W]`` repeated on the 3 channels."""
        if self.normalize:
            normalize_to_tensor(img, self.mean, self.std, out=self.tensor[i])
        elif img.ndim == 2:
            self._planes[i] = img  # broadcast to the 3 planes
        else:
            cv2.split(img, self._planes[i])  # a [3, H, W] array: OpenCV writes one plane per channel into it


def stack_to_tensor(
    images: Sequence[np.ndarray], normalize: bool, mean: tuple[float, ...], std: tuple[float, ...]
) -> torch.Tensor:
    """N uint8 ``[S, S, 3]`` images -> one ``[N, 3, S, S]`` tensor (:class:`ViewStack`): float32 normalised or uint8."""
    h, w = images[0].shape[:2]
    stack = ViewStack(len(images), h, w, normalize, mean, std)
    for i, img in enumerate(images):
        stack.put(i, img)
    return stack.tensor


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


@lru_cache(maxsize=256)
def _solarize_table(threshold: int) -> np.ndarray:
    values = np.arange(256, dtype=np.uint8)
    return np.where(values >= threshold, 255 - values, values).astype(np.uint8)
