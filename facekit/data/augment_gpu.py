"""Batched photometric augmentation on tensors, on any device: DINO's colour jitter, grayscale, Gaussian blur
and solarize with per-sample random parameters, on ``[B, 3, H, W]`` batches.

The GPU path of multi-crop: the DataLoader workers only crop and flip (cheap, uint8), the training step
runs :class:`BatchPhotometric` on the device and normalises. Every op is the per-image op of
:mod:`facekit.data.augment` (OpenCV, uint8) on a batch, with the same parameters and the same uint8
rounding after each op, so the two paths agree to a grey level for the same parameters (grayscale and
solarize exactly). Ops take float32 images holding 0..255 values (integers between ops) and per-sample
parameters ``[B]``; an identity parameter (factor 1, hue 0, sigma 0, mask False) leaves a sample
unchanged bit for bit, which is how one batched call serves samples that skip an op.

Per-sample ColorJitter order (:func:`color_jitter`): every sample's linear ops before its hue rotation in three
batched steps, one hue rotation for the whole batch, three steps for the linear ops after it; no host
synchronisation anywhere, so the whole augmentation queues on the device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from facekit.data.augment import GRAY_WEIGHTS, IDENTITY_JITTER
from facekit.data.views import ViewRecipe

#: OpenCV's fixed-point RGB -> gray weights (``cv2.COLOR_RGB2GRAY`` on uint8: 15-bit, rounded).
_GRAY_FIXED = (9798, 19235, 3735)
#: Per HSV sector i (0..5), which of (v, q, p, t) each of R, G, B takes.
_SECTOR_CHOICE = ((0, 1, 2, 2, 3, 0), (3, 0, 0, 1, 2, 2), (2, 2, 3, 0, 0, 1))


def _per_sample(values: torch.Tensor) -> torch.Tensor:
    return values.view(-1, 1, 1, 1)


def _luma(x: torch.Tensor) -> torch.Tensor:
    """``[B, 1, H, W]``: 0.299 R + 0.587 G + 0.114 B, unrounded."""
    return GRAY_WEIGHTS[0] * x[:, 0:1] + GRAY_WEIGHTS[1] * x[:, 1:2] + GRAY_WEIGHTS[2] * x[:, 2:3]


def adjust_brightness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """``trunc(clip(x * factor))``; x float ``[B, 3, H, W]`` (0..255), factor ``[B]``."""
    return (x * _per_sample(factor)).clamp_(0, 255).floor_()


def adjust_contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Blend each image with the mean of its (unrounded) grayscale; factor ``[B]``."""
    f = _per_sample(factor)
    mean = _luma(x).mean(dim=(2, 3), keepdim=True)
    return (x * f + (1 - f) * mean).clamp_(0, 255).floor_()


def adjust_saturation(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Blend each image with its (unrounded) grayscale; factor ``[B]``."""
    f = _per_sample(factor)
    return (x * f + (1 - f) * _luma(x)).clamp_(0, 255).floor_()


def adjust_hue(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Rotate each image's hue by ``factor`` turns (``[B]``, in [-0.5, 0.5]) in float HSV, like torchvision.

    Back to 0..255 with torchvision's ``trunc(v * 255.999)``; a factor of 0 returns ``x`` exactly.
    """
    rgb = x / 255
    value, argmax = rgb.max(dim=1)  # [B, H, W]; ties pick R, then G, then B
    chroma = value - rgb.min(dim=1).values
    saturation = chroma / torch.where(value > 0, value, 1.0)
    safe = torch.where(chroma > 0, chroma, 1.0)
    r, g, b = rgb.unbind(dim=1)
    hue6 = torch.where(argmax == 1, (b - r) / safe + 2, (r - g) / safe + 4)
    hue6 = torch.where(argmax == 0, ((g - b) / safe) % 6, hue6)
    hue6 = torch.where(chroma > 0, hue6, 0.0)
    hue6 = (hue6 + 6 * factor.view(-1, 1, 1)) % 6
    hue6 = torch.where(hue6 >= 6, hue6 - 6, hue6)  # float rounding can land a tiny negative hue on 6
    sector = hue6.floor()
    frac = hue6 - sector
    p = value * (1 - saturation)
    q = value * (1 - saturation * frac)
    t = value * (1 - saturation * (1 - frac))
    candidates = torch.stack([value, q, p, t], dim=1)  # [B, 4, H, W]
    table = torch.tensor(_SECTOR_CHOICE, device=x.device)  # [3, 6]
    index = table[:, sector.long()].transpose(0, 1)  # [B, 3, H, W]
    out = torch.gather(candidates, 1, index)
    out = (out * 255.999).clamp_(0, 255).floor_()
    return torch.where(_per_sample(factor) == 0, x, out)


def color_jitter(x: torch.Tensor, order: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """Per-sample ColorJitter: ``order [B, 4]`` (a permutation of 0 brightness, 1 contrast, 2 saturation, 3 hue
    per sample), ``factors [B, 4]`` (identity (1, 1, 1, 0) for a sample that skips an op).

    Brightness, contrast and saturation are one family, ``f·x + w_luma·luma(x) + w_mean·mean(luma)``, so
    each step applies every sample's own linear op (or the identity) at once: three steps for the ops each
    sample runs before its hue rotation, the hue rotation once for all, three steps for the ops after it.
    """
    hue_position = order.argsort(dim=1)[:, 3]  # [B]: where each sample's hue rotation sits
    for position in range(3):
        x = _linear_step(x, torch.where(hue_position > position, order[:, position], 3), factors)
    x = adjust_hue(x, factors[:, 3])
    for position in range(1, 4):
        x = _linear_step(x, torch.where(hue_position < position, order[:, position], 3), factors)
    return x


def _linear_step(x: torch.Tensor, op: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """Each sample's brightness (op 0), contrast (1) or saturation (2) with its factor; op 3: unchanged."""
    linear = op < 3
    f = torch.where(linear, factors.gather(1, op.clamp(max=2)[:, None])[:, 0], 1.0)
    w_luma = _per_sample(torch.where(op == 2, 1 - f, 0.0))
    w_mean = _per_sample(torch.where(op == 1, 1 - f, 0.0))
    luma = _luma(x)
    mixed = x * _per_sample(f) + w_luma * luma + w_mean * luma.mean(dim=(2, 3), keepdim=True)
    return mixed.clamp_(0, 255).floor_()


def to_grayscale(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """OpenCV's uint8 luma (15-bit fixed point, rounded) on 3 channels where ``mask [B]`` is true; exact."""
    wr, wg, wb = _GRAY_FIXED
    gray = ((wr * x[:, 0:1] + wg * x[:, 1:2] + wb * x[:, 2:3] + 2**14) / 2**15).floor_()  # < 2^24: exact in float32
    return torch.where(_per_sample(mask), gray.expand_as(x), x)


def gaussian_kernels(sigma: torch.Tensor, radius: int) -> torch.Tensor:
    """``[B, 2·radius + 1]`` normalised 1-D Gaussians; sample b keeps its own ``⌈3σ_b⌉`` taps each side
    (OpenCV's and torchvision's default kernel size ``2⌈3σ⌉ + 1``); sigma 0 gives the identity kernel."""
    offsets = torch.arange(-radius, radius + 1, device=sigma.device, dtype=torch.float64)
    s = sigma.double().view(-1, 1)
    safe = torch.where(s > 0, s, 1.0)
    weights = torch.exp(-(offsets**2) / (2 * safe**2)) * (offsets.abs() <= torch.ceil(3 * s))
    weights = torch.where(s > 0, weights, (offsets == 0).double())
    return (weights / weights.sum(dim=1, keepdim=True)).float()


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, max_sigma: float) -> torch.Tensor:
    """Per-sample separable Gaussian blur with reflected borders (OpenCV's ``BORDER_REFLECT_101``), rounded.

    sigma ``[B]`` (0: unchanged), each at most ``max_sigma`` (which fixes the padding, so no host sync).
    """
    batch, channels, height, width = x.shape
    radius = math.ceil(3 * max_sigma)
    if radius >= min(height, width):
        raise ValueError(f"blur radius {radius} px needs images larger than {height}x{width}")
    kernel = gaussian_kernels(sigma, radius).repeat_interleave(channels, dim=0)  # [B·C, K]
    flat = F.pad(x.reshape(1, batch * channels, height, width), (radius,) * 4, mode="reflect")
    flat = F.conv2d(flat, kernel[:, None, None, :], groups=batch * channels)
    flat = F.conv2d(flat, kernel[:, None, :, None], groups=batch * channels)
    return flat.view(batch, channels, height, width).round_().clamp_(0, 255)


def solarize(x: torch.Tensor, mask: torch.Tensor, threshold: int = 128) -> torch.Tensor:
    """Invert values ``>= threshold`` where ``mask [B]`` is true; exact."""
    return torch.where(_per_sample(mask) & (x >= threshold), 255 - x, x)


@dataclass(frozen=True)
class PhotometricParams:
    """Per-sample parameters of a batch of B images (on the batch's device).

    order ``[B, 4]`` long and factors ``[B, 4]`` float: :func:`color_jitter`'s (identity factors where the
    jitter was not drawn); gray, solarize ``[B]`` bool; sigma ``[B]`` float (0 = no blur).
    """

    order: torch.Tensor
    factors: torch.Tensor
    gray: torch.Tensor
    sigma: torch.Tensor
    solarize: torch.Tensor


@dataclass(frozen=True)
class BatchPhotometric:
    """The photometric half of a :class:`~facekit.data.views.ViewRecipe` on a batch: jitter (with probability
    ``jitter_p``) -> grayscale -> blur -> solarize, parameters drawn per sample with torch's RNG on the
    batch's device, the same distributions as the recipe's."""

    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.2, 0.1)
    jitter_p: float = 0.0
    gray_p: float = 0.0
    blur_p: float = 0.0
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    solarize_p: float = 0.0

    @classmethod
    def from_recipe(cls, recipe: ViewRecipe) -> BatchPhotometric:
        return cls(recipe.jitter, recipe.jitter_p, recipe.gray_p, recipe.blur_p, recipe.blur_sigma, recipe.solarize_p)

    def sample(
        self, batch: int, device: torch.device | str = "cpu", generator: torch.Generator | None = None
    ) -> PhotometricParams:
        """Draw the parameters of ``batch`` images (ColorJitter's factor ranges, a uniform op order)."""
        u = torch.rand(batch, 13, device=device, generator=generator, dtype=torch.float64)
        b, c, s, h = self.jitter
        low = torch.tensor([max(0.0, 1 - b), max(0.0, 1 - c), max(0.0, 1 - s), -h], device=device, dtype=u.dtype)
        high = torch.tensor([1 + b, 1 + c, 1 + s, h], device=device, dtype=u.dtype)
        identity = torch.tensor(IDENTITY_JITTER, device=device, dtype=u.dtype)
        active = (u[:, :1] < self.jitter_p) & (high > low)  # [B, 4]: an op of strength 0 is skipped
        lo_sigma, hi_sigma = self.blur_sigma
        return PhotometricParams(
            order=u[:, 1:5].argsort(dim=1),
            factors=torch.where(active, low + (high - low) * u[:, 5:9], identity).float(),
            gray=u[:, 9] < self.gray_p,
            sigma=torch.where(u[:, 10] < self.blur_p, lo_sigma + (hi_sigma - lo_sigma) * u[:, 11], 0.0).float(),
            solarize=u[:, 12] < self.solarize_p,
        )

    def apply(self, images: torch.Tensor, params: PhotometricParams) -> torch.Tensor:
        """``images`` uint8 ``[B, 3, H, W]`` -> uint8 ``[B, 3, H, W]`` with ``params``."""
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected uint8 images [B, 3, H, W], got {images.dtype} {list(images.shape)}")
        x = images.float()
        if self.jitter_p > 0:
            x = color_jitter(x, params.order, params.factors)
        if self.gray_p > 0:
            x = to_grayscale(x, params.gray)
        if self.blur_p > 0:
            x = gaussian_blur(x, params.sigma, self.blur_sigma[1])
        if self.solarize_p > 0:
            x = solarize(x, params.solarize)
        return x.to(torch.uint8)

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """uint8 ``[B, 3, H, W]`` -> uint8 ``[B, 3, H, W]``, parameters drawn on the images' device."""
        return self.apply(images, self.sample(images.shape[0], images.device, generator))
