"""The data order of the training loop: which samples a rank sees, and how each one is seeded.

:class:`EpochSampler` (which samples a rank sees, resumable mid-epoch) and :class:`SeededSamples` (each
sample's augmentation RNG seeded from (seed, epoch, index)) make a run independent of the number of
DataLoader workers and of where it was resumed.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler


class EpochSampler(Sampler[tuple[int, int]]):
    """A resumable DistributedSampler that yields ``(epoch, index)`` pairs.

    Each epoch is a permutation seeded by (seed, epoch), cut to a multiple of the world size; rank ``r``
    takes positions ``r, r + world, ...`` (so world × B per-rank samples are the first world × B of the
    permutation). ``set_epoch(epoch, start)`` skips the first ``start`` samples of this rank (a resumed
    epoch). The epoch travels with each index so that DataLoader workers can seed per-sample RNGs.
    """

    def __init__(self, size: int, seed: int, rank: int = 0, world: int = 1, *, shuffle: bool = True) -> None:
        self.size, self.seed, self.rank, self.world, self.shuffle = size, seed, rank, world, shuffle
        self.samples_per_rank = size // world
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        if not 0 <= start <= self.samples_per_rank:
            raise ValueError(f"start {start} outside this rank's {self.samples_per_rank} samples")
        self.epoch, self.start = epoch, start

    def indices(self) -> np.ndarray:
        """This rank's sample indices for the current epoch, from ``start`` on."""
        order = np.arange(self.size, dtype=np.int32 if self.size < 2**31 else np.int64)  # 168 MB for 42M faces
        if self.shuffle:
            np.random.default_rng([self.seed, self.epoch]).shuffle(order)
        return order[: self.samples_per_rank * self.world][self.rank :: self.world][self.start :]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return ((self.epoch, int(i)) for i in self.indices())

    def __len__(self) -> int:
        return self.samples_per_rank - self.start


class SeededSamples(Dataset):
    """Wraps a Dataset so that item ``(epoch, index)`` is drawn with RNGs seeded from (seed, epoch, index).

    Python ``random``, ``np.random`` and torch's CPU generator are seeded before ``dataset[index]``, so a
    sample's augmentation depends neither on the DataLoader worker that loads it nor on where a run
    resumed. In the main process (``num_workers=0``) the RNG states are put back after each batch
    (``__getitems__``: saving and restoring numpy's state costs ~0.2 ms, too much per sample).
    """

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset = dataset
        self.seed = seed

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> Any:
        return self.__getitems__([key])[0]

    def __getitems__(self, keys: list[tuple[int, int]]) -> list[Any]:
        in_worker = torch.utils.data.get_worker_info() is not None
        saved = None if in_worker else (random.getstate(), np.random.get_state(), torch.get_rng_state())
        try:
            items = []
            for epoch, index in keys:
                seed = _mix64(_mix64(_mix64(self.seed) ^ epoch) ^ index)
                random.seed(seed)
                np.random.seed(seed & 0xFFFFFFFF)
                torch.default_generator.manual_seed(seed)
                items.append(self.dataset[index])
            return items
        finally:
            if saved is not None:
                random.setstate(saved[0])
                np.random.set_state(saved[1])
                torch.set_rng_state(saved[2])


def _mix64(x: int) -> int:
    """SplitMix64's finaliser: a cheap bijective hash of a 64-bit integer."""
    x = (x + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return x ^ (x >> 31)
