"""MAE random masking and BEiT/CAMD block masking: exact counts and consistency."""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

from facekit.nn.masking import _place_blocks, block_mask, random_keep


def test_random_keep_counts_and_restore() -> None:
    generator = torch.Generator().manual_seed(0)
    keep, mask, restore = random_keep(4, 196, 0.75, "cpu", generator=generator)
    assert keep.shape == (4, 49) and keep.dtype == torch.long
    assert mask.shape == (4, 196) and mask.dtype == torch.bool
    assert torch.all(mask.sum(1) == 147)
    assert not mask.gather(1, keep).any()
    # visible tokens, then mask tokens (-1), unshuffled with restore, give back the masked identity
    tokens = torch.arange(196).expand(4, -1)
    shuffled = torch.cat([tokens.gather(1, keep), torch.full((4, 147), -1)], dim=1)
    torch.testing.assert_close(shuffled.gather(1, restore), torch.where(mask, -1, tokens))


def test_random_keep_is_reproducible_with_a_generator() -> None:
    first = random_keep(2, 16, 0.5, "cpu", generator=torch.Generator().manual_seed(3))
    second = random_keep(2, 16, 0.5, "cpu", generator=torch.Generator().manual_seed(3))
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a, b)


def test_block_mask_has_exactly_118_for_50_seeds() -> None:
    for seed in range(50):
        mask = block_mask(rng=np.random.default_rng(seed))
        assert mask.shape == (14, 14) and mask.dtype == bool
        assert mask.sum() == 118


def test_blocks_are_connected_regions_of_at_least_16() -> None:
    placed_counts = []
    for seed in range(50):
        placed = _place_blocks(14, 118, 16, (0.3, 1 / 0.3), np.random.default_rng(seed))
        labels, num = ndimage.label(placed)  # 4-connectivity
        sizes = np.bincount(labels.ravel())[1:]
        assert num >= 1 and sizes.min() >= 16
        placed_counts.append(placed.sum())
        final = block_mask(14, 118, 16, (0.3, 1 / 0.3), np.random.default_rng(seed))
        assert np.all(final[placed])  # the top-up only adds patches
    assert min(placed_counts) > 118 - 16  # blocks fill the mask; random top-up only covers the remainder
