"""Patch masks: MAE's per-sample random masking (He et al. 2022) and BEiT's block-wise masking
(Bao et al. 2022) topped up to an exact count as CAMD / SiameseIM do."""

from __future__ import annotations

import math

import numpy as np
import torch


def random_keep(
    batch: int,
    num_patches: int,
    mask_ratio: float,
    device: torch.device | str,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """MAE's random masking: per sample, argsort uniform noise and keep the first K = int(N·(1 − ratio)).

    Returns ``keep`` [B, K] long (visible patch indices, in shuffled order), ``mask`` [B, N] bool
    (True = masked; exactly N − K per row) and ``restore`` [B, N] long, the inverse permutation: gathering
    ``[visible tokens ‖ mask tokens]`` (shuffled order) with ``restore`` puts every token back in place.
    The noise is drawn on the generator's device (CPU when None) and moved to ``device``.
    """
    num_keep = int(num_patches * (1 - mask_ratio))
    noise_device = generator.device if generator is not None else device
    noise = torch.rand(batch, num_patches, device=noise_device, generator=generator).to(device)
    shuffle = noise.argsort(dim=1)  # [B, N]: ascending noise = kept first
    restore = shuffle.argsort(dim=1)  # [B, N]
    keep = shuffle[:, :num_keep]
    mask = torch.ones(batch, num_patches, dtype=torch.bool, device=device)
    mask[:, :num_keep] = False
    mask = torch.gather(mask, 1, restore)
    return keep, mask, restore


def _place_blocks(
    grid: int, num_masked: int, min_block: int, aspect: tuple[float, float], rng: np.random.Generator
) -> np.ndarray:
    """BEiT's block placement: rectangles of area ≥ ``min_block`` and aspect in ``aspect`` (log-uniform),
    each adding at most the remaining budget of new patches; stops after 10 failed tries in a row or when
    the budget left is below ``min_block``. Returns [grid, grid] bool with ≤ ``num_masked`` True.

    Unlike BEiT, a candidate whose rounded h·w falls below ``min_block`` is rejected, so every masked
    component has at least ``min_block`` patches; the remainder is left to the caller's top-up.
    """
    mask = np.zeros((grid, grid), dtype=bool)
    log_aspect = (math.log(aspect[0]), math.log(aspect[1]))
    count = 0
    while num_masked - count >= min_block:
        budget = num_masked - count
        added = 0
        for _ in range(10):
            area = rng.uniform(min_block, budget)
            ratio = math.exp(rng.uniform(*log_aspect))
            h = round(math.sqrt(area * ratio))
            w = round(math.sqrt(area / ratio))
            if h * w < min_block or h >= grid or w >= grid:
                continue
            top = int(rng.integers(0, grid - h + 1))
            left = int(rng.integers(0, grid - w + 1))
            block = mask[top : top + h, left : left + w]
            new = h * w - int(block.sum())
            if 0 < new <= budget:
                block[...] = True
                added = new
                break
        if added == 0:
            break
        count += added
    return mask


def block_mask(
    grid: int = 14,
    num_masked: int = 118,
    min_block: int = 16,
    aspect: tuple[float, float] = (0.3, 1 / 0.3),
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """Block-wise mask with exactly ``num_masked`` True (CAMD's view-1 mask: 118 of 14×14 ≈ 60%).

    Rectangles are placed as in BEiT (see :func:`_place_blocks`); the patches still missing are then
    chosen uniformly among the unmasked ones, as CAMD's generator does. Returns [grid, grid] bool.
    ``rng``: the generator to draw from (pass one per data worker); None = a fresh unseeded one.
    """
    rng = rng if rng is not None else np.random.default_rng()
    if not 0 <= num_masked <= grid * grid:
        raise ValueError(f"num_masked {num_masked} out of range for a {grid}×{grid} grid")
    mask = _place_blocks(grid, num_masked, min_block, aspect, rng)
    missing = num_masked - int(mask.sum())
    if missing:
        free = np.flatnonzero(~mask.reshape(-1))
        mask.reshape(-1)[rng.choice(free, size=missing, replace=False)] = True
    return mask
