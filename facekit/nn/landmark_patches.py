"""Landmark-centred patches for LAFS (Sun et al., CVPR 2024): cut, jitter, subsample, and where they come from.

Coordinates are ``(x, y)`` in pixels of the image they refer to, pixel centres at integers (OpenCV's and
the mesh stage's convention): pixel ``(r, c)`` covers ``[c − ½, c + ½] × [r − ½, r + ½]``.

- :func:`landmark_patches`: one ``grid_sample`` call cuts a ``p × p`` patch around every landmark →
  tokens ``[B, n, p·p·C]`` in :func:`facekit.nn.vit.patchify`'s layout, so landmarks on the regular grid
  (``8c + 4, 8r + 4``) give exactly the patch tokens of a plain ViT.
- :func:`jitter_landmarks`, :func:`sample_landmarks`: LAFS's two landmark augmentations (Gaussian
  jitter of the coordinates; a random subset drawn with replacement).
- :func:`landmarks_in_view`: mesh landmarks of the source crop → a RandomResizedCrop(+flip) view's pixels.
- :class:`LandmarkCNN`: the small learned alternative (image → ``n`` points, min-max spread over the view).

Released LAFS code, where it differs: its patches are transposed (x runs down a patch's rows) and sampled
half a pixel up-left of the landmark; both only change what a learned landmark means (a fixed permutation
of the 192 features, absorbed by the Linear embedding; a shift the landmark CNN learns away), so facekit
keeps the convention above, which is exact for the mesh's pixel coordinates.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def landmark_patches(images: torch.Tensor, points: torch.Tensor, patch_size: int = 8) -> torch.Tensor:
    """Cut a ``p × p`` patch centred on each landmark, bilinearly, zeros outside the image.

    images: ``[B, C, H, W]``; points: ``[B, n, 2]`` (x, y) pixels. The patch of a point covers the pixel
    offsets ``−p/2 .. p/2 − 1`` from it (p even; odd p: ``−(p−1)/2 .. (p−1)/2``), so at an integer point
    it equals ``images[:, :, y − p/2 : y + p/2, x − p/2 : x + p/2]``. Returns ``[B, n, p·p·C]`` with
    pixels row-major and channels last within a patch. Differentiable in both images and points.
    """
    if images.ndim != 4 or points.ndim != 3 or points.shape[-1] != 2 or points.shape[0] != images.shape[0]:
        raise ValueError(f"expected images [B, C, H, W] and points [B, n, 2], got {images.shape} and {points.shape}")
    batch, channels, height, width = images.shape
    n, p = points.shape[1], patch_size
    offsets = torch.arange(p, device=points.device, dtype=points.dtype) - p // 2
    dy, dx = torch.meshgrid(offsets, offsets, indexing="ij")  # [p, p]: row offset, column offset
    x = points[..., 0, None, None] + dx  # [B, n, p, p]
    y = points[..., 1, None, None] + dy
    grid = torch.stack([(2 * x + 1) / width - 1, (2 * y + 1) / height - 1], dim=-1)  # align_corners=False
    sampled = F.grid_sample(images, grid.reshape(batch, n * p, p, 2).to(images.dtype), align_corners=False)
    return sampled.reshape(batch, channels, n, p, p).permute(0, 2, 3, 4, 1).reshape(batch, n, p * p * channels)


def jitter_landmarks(points: torch.Tensor, sigma: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """LAFS's landmark jitter: ``points + N(0, σ²)`` per coordinate (σ in pixels; 0 returns ``points``)."""
    if sigma <= 0:
        return points
    noise = torch.randn(points.shape, generator=generator, device=points.device, dtype=points.dtype)
    return points + sigma * noise


def sample_landmarks(
    points: torch.Tensor,
    k: int,
    weights: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """LAFS's landmark subset: ``k`` of each sample's ``n`` points drawn with replacement.

    points: ``[B, n, 2]``; weights: ``[B, n]`` non-negative draw weights (None = uniform, as released; a row
    of zeros is drawn uniformly). Returns ``[B, k, 2]``.
    """
    batch, n, _ = points.shape
    w = torch.ones(batch, n, device=points.device) if weights is None else weights.float()
    w = torch.where(w.sum(dim=1, keepdim=True) <= 0, 1.0, w)
    index = torch.multinomial(w, k, replacement=True, generator=generator)  # [B, k]
    return torch.gather(points, 1, index[..., None].expand(-1, -1, 2))


def inside_view(points: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``[B, n]`` bool: the point's pixel lies in an ``height × width`` view (pixel centres 0 .. size − 1)."""
    x, y = points[..., 0], points[..., 1]
    return (x > -0.5) & (x < width - 0.5) & (y > -0.5) & (y < height - 0.5)


def landmarks_in_view(
    points: np.ndarray, box: Sequence[float] | np.ndarray, source_hw: tuple[int, int], size: int
) -> np.ndarray:
    """Map points of a source image into a RandomResizedCrop(+flip) view of it (or into N views at once).

    points: ``[n, 2]`` (x, y) source pixels; box: a :class:`facekit.data.views.ViewRecipe` box
    ``(top, left, height, width, flipped)`` (fractions of the source, flipped 0/1), or ``[N, 5]`` boxes;
    source_hw: the source's ``(H, W)``; size: the view's side ``S``. The crop is resized with pixel centres
    aligned (OpenCV, torchvision): ``x' = (x − left + ½)·S / width − ½``; a flip then maps ``x'`` to
    ``S − 1 − x'``. Returns float32 ``[n, 2]`` (``[N, n, 2]`` for N boxes) view pixels (points outside the
    crop land outside ``[0, S)``).
    """
    boxes = np.asarray(box, dtype=np.float64)
    top, left, height, width, flipped = (v[..., None] for v in np.moveaxis(boxes, -1, 0))
    src_h, src_w = source_hw
    xy = np.asarray(points, dtype=np.float32)
    x = (xy[:, 0] - left * src_w + 0.5) * (size / (width * src_w)) - 0.5
    y = (xy[:, 1] - top * src_h + 0.5) * (size / (height * src_h)) - 0.5
    x = np.where(flipped >= 0.5, size - 1 - x, x)
    return np.stack([x, y], axis=-1).astype(np.float32)


class LandmarkCNN(nn.Module):
    """A small landmark network: image ``[B, 3, S, S]`` → ``num_landmarks`` points ``[B, n, 2]`` in its pixels.

    Four stride-2 3×3 conv + BN + ReLU stages (3 → ``widths``), global average pool, Dropout(0.5), then
    Linear(→ 2n) as LAFS's head on MobileNetV3 (160 features → Dropout(0.5) → Linear(160 → 392)). As in the
    released code the 2n outputs of a sample are min-max normalised together to ``[0, S − 1]`` and read
    as interleaved ``(x, y)`` pairs, so the points always span the view. The network is a stand-in for
    LAFS's MobileNetV3-large (pre-trained with a Part fViT recognition model, not released).
    """

    def __init__(self, num_landmarks: int = 196, widths: Sequence[int] = (32, 64, 128, 160), eps: float = 1e-6) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        in_ch = 3
        for out_ch in widths:
            layers += [nn.Conv2d(in_ch, out_ch, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(out_ch), nn.ReLU()]
            in_ch = out_ch
        self.features = nn.Sequential(*layers)
        self.output_layer = nn.Sequential(nn.Dropout(0.5), nn.Linear(in_ch, 2 * num_landmarks))
        self.num_landmarks = num_landmarks
        self.eps = eps

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        raw = self.output_layer(self.features(images).mean(dim=(-2, -1)))  # [B, 2n]
        low, high = raw.min(dim=1, keepdim=True).values, raw.max(dim=1, keepdim=True).values
        scaled = (raw - low) / (high - low + self.eps) * (images.shape[-1] - 1)
        return scaled.view(-1, self.num_landmarks, 2)
