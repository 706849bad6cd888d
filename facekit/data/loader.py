"""Whole batches straight from the shards: the fast path for single-view training and evaluation.

:class:`FaceShardDataset` yields one sample at a time and lets the DataLoader collate them; for plain
"decode + flip" batches that per-sample machinery costs as much as the JPEG decode itself. Here a worker
gets a list of indices and decodes every face directly into one uint8 batch buffer (no per-sample
tensors, no collate, no CPU transpose): ``image`` is ``[B, 3, H, W]`` uint8 with channels-last strides,
to be normalised on the accelerator (``facekit.data.augment.normalize_batch``).

Handing a batch to the main process copies nothing either. Fresh shared memory per batch would cost a
quarter of the decode again (the kernel zero-fills every page on first touch, and torch passes every
tensor's file descriptor over a socket), so :func:`face_loader`'s batches are decoded into a ring of
buffers mapped once, before the workers fork: only the slot number and the small arrays travel through
the queue, and a slot is reused once the main process has dropped every tensor viewing it. Without a
free slot (the trainer keeps many batches) or with workers that are not forked, a batch falls back to
fresh shared memory.
"""

from __future__ import annotations

import itertools
import mmap
import multiprocessing
import weakref
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, SequentialSampler, get_worker_info

from facekit.data.dataset import FaceShardDataset
from facekit.data.images import ImageError, crop_size, decode_crop_rgb
from facekit.data.shards import ShardError

_FIELDS = ("image", "identity", "landmarks")
#: This process's rings by id, for batches arriving from workers.
_RINGS: weakref.WeakValueDictionary[int, _BatchRing] = weakref.WeakValueDictionary()
_ring_ids = itertools.count()


class _BatchRing:
    """``slots`` image buffers ``[B, H, W, 3]`` uint8 in anonymous shared memory (inherited by forked
    workers; pages are allocated when first used). A worker claims a free slot; the main process frees
    it when the last tensor viewing it is gone."""

    def __init__(self, slots: int, batch_size: int, height: int, width: int) -> None:
        self.shape = (batch_size, height, width, 3)
        size = int(np.prod(self.shape))
        memory = mmap.mmap(-1, slots + slots * size)  # MAP_SHARED | MAP_ANONYMOUS
        self.taken = np.frombuffer(memory, np.uint8, slots)
        self.images = np.frombuffer(memory, np.uint8, slots * size, offset=slots).reshape(slots, *self.shape)
        self._lock = multiprocessing.Lock()  # several workers (or loaders) may claim at once
        self.id = next(_ring_ids)
        _RINGS[self.id] = self

    def claim(self, n: int, height: int, width: int) -> int | None:
        """A free slot for ``n`` faces of ``height`` x ``width`` (None: none free, or they do not fit)."""
        if n > self.shape[0] or (height, width) != self.shape[1:3]:
            return None
        if not self._lock.acquire(timeout=1.0):  # a worker killed while claiming: do without the ring
            return None
        try:
            free = np.flatnonzero(self.taken == 0)
            if len(free) == 0:
                return None
            self.taken[free[0]] = 1
            return int(free[0])
        finally:
            self._lock.release()

    def receive(self, slot: int, n: int) -> torch.Tensor:
        """In the main process: slot ``slot`` as uint8 ``[n, H, W, 3]``, freed with the last tensor using it."""
        view = self.images[slot, :n]
        weakref.finalize(view, self.taken.__setitem__, slot, 0)  # torch.from_numpy holds ``view`` itself
        return torch.from_numpy(view)


class _InTransit:
    """A batch on its way from a worker to the main process: the image as (ring id, slot) or as a shared
    tensor ``[B, H, W, 3]``, the small arrays by value; unpickles to :class:`FaceBatches`' dict."""

    def __init__(self, image: tuple[int, int] | torch.Tensor, *arrays: np.ndarray) -> None:
        self.args = (image, *arrays)

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return _arrive, self.args


def _arrive(
    image: tuple[int, int] | torch.Tensor, identity: np.ndarray, landmarks: np.ndarray, index: np.ndarray
) -> dict[str, torch.Tensor]:
    if isinstance(image, tuple):
        ring = _RINGS.get(image[0])
        if ring is None:
            raise RuntimeError("a face batch arrived after its FaceBatches was garbage collected")
        image = ring.receive(image[1], len(index))
    return _batch_dict(image, identity, landmarks, index)


def _batch_dict(
    image: torch.Tensor, identity: np.ndarray, landmarks: np.ndarray, index: np.ndarray
) -> dict[str, torch.Tensor]:
    return {
        "image": image.permute(0, 3, 1, 2),
        "identity": torch.from_numpy(identity),
        "landmarks": torch.from_numpy(landmarks),
        "index": torch.from_numpy(index),
    }


class FaceBatches(Dataset):
    """Index lists → batches ``{"image": uint8 [B,3,H,W], "identity": long [B], "landmarks": [B,5,2],
    "index": long [B]}``; each face is flipped horizontally with probability ``flip_p``
    (landmark x mirrored with it). All faces of a batch must have the size of its first one.

    ``shared_buffers`` > 0 keeps that many image buffers of ``batch_size`` faces (sized like the first
    face) in memory shared with forked DataLoader workers (see the module docstring); inside such a
    worker an item is the batch in transit, which arrives in the main process as the dict above.
    """

    def __init__(
        self,
        faces: FaceShardDataset,
        *,
        flip_p: float = 0.5,
        shared_buffers: int = 0,
        batch_size: int | None = None,
    ) -> None:
        self.faces = faces
        self.flip_p = flip_p
        self._ring: _BatchRing | None = None
        if shared_buffers > 0 and len(faces) > 0:
            if batch_size is None or batch_size < 1:
                raise ValueError(f"shared_buffers needs a positive batch_size, got {batch_size}")
            shard, local = faces.locate(0)
            (image,) = faces.readers[shard].read_fields(local, "image")
            faces.readers[shard].close()  # workers open their own handles
            height, width = crop_size(image)
            self._ring = _BatchRing(shared_buffers, batch_size, height, width)

    def __len__(self) -> int:
        return len(self.faces)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_ring": None}  # the ring is shared by forking only

    def __getitem__(self, indices: list[int]) -> dict[str, Any]:
        n = len(indices)
        images, identities, landmarks = [], np.empty(n, np.int64), np.empty((n, 5, 2), np.float32)
        for b, i in enumerate(indices):
            shard, local = self.faces.locate(i)
            image, identities[b], landmarks[b] = self.faces.readers[shard].read_fields(local, *_FIELDS)
            images.append(image)
        h, w = crop_size(images[0])
        in_worker = get_worker_info() is not None
        ring = self._ring if in_worker else None
        slot = ring.claim(n, h, w) if ring is not None else None
        image: tuple[int, int] | torch.Tensor
        if ring is not None and slot is not None:
            image, out = (ring.id, slot), ring.images[slot, :n]
        else:
            image = torch.empty((n, h, w, 3), dtype=torch.uint8)
            if in_worker:
                image.share_memory_()  # decoded straight into shared memory: no copy on the way to the trainer
            out = image.numpy()
        flips = np.random.random(n) < self.flip_p
        self._decode(indices, images, flips, out)
        landmarks[flips, :, 0] = w - 1 - landmarks[flips, :, 0]
        index = np.asarray(indices, dtype=np.int64)
        if in_worker:
            return _InTransit(image, identities, landmarks, index)  # type: ignore[return-value]  # arrives as the dict
        assert isinstance(image, torch.Tensor)
        return _batch_dict(image, identities, landmarks, index)

    def _where(self, i: int) -> str:
        shard, local = self.faces.locate(i)
        return f"{self.faces.readers[shard].path}: record {local}"

    def _decode(self, indices: list[int], images: list[bytes], flips: np.ndarray, out: np.ndarray) -> None:
        """Decode ``images`` into ``out`` ``[n, H, W, 3]``, mirroring those with ``flips``."""
        scratch = np.empty(out.shape[1:], np.uint8)
        for b, image in enumerate(images):
            try:
                rgb = decode_crop_rgb(image, buffer=scratch if flips[b] else out[b])
            except (ImageError, ValueError) as e:  # ValueError: a crop larger than the batch's buffer
                raise ShardError(f"{self._where(indices[b])}: bad image: {e}") from None
            if rgb.shape != scratch.shape:
                raise ShardError(
                    f"{self._where(indices[b])}: a {rgb.shape[1]}x{rgb.shape[0]} face in a batch of "
                    f"{scratch.shape[1]}x{scratch.shape[0]} faces (the first one's size)"
                )
            if flips[b]:
                cv2.flip(scratch, 1, dst=out[b])


def face_loader(
    shards: Path | list[Path],
    *,
    batch_size: int,
    num_workers: int = 2,
    shuffle: bool = True,
    drop_last: bool = True,
    flip_p: float = 0.5,
    readahead: bool = False,
    seed: int = 0,
    prefetch_batches: int = 4,
) -> DataLoader:
    """A DataLoader of whole decoded batches (see :class:`FaceBatches`) over ``shards``.

    ``prefetch_batches`` per worker keeps both cores decoding while the trainer consumes a batch
    (measured on 2 cores: 4 gives ~15% more images/s than the DataLoader default of 2). The shared
    buffers cover those plus the few batches the trainer holds.
    """
    faces = FaceShardDataset(shards, readahead=readahead)
    generator = torch.Generator().manual_seed(seed)
    order = RandomSampler(faces, generator=generator) if shuffle else SequentialSampler(faces)
    buffers = num_workers * prefetch_batches + 4 if num_workers > 0 else 0
    return DataLoader(
        FaceBatches(faces, flip_p=flip_p, shared_buffers=buffers, batch_size=batch_size),
        sampler=BatchSampler(order, batch_size, drop_last),
        batch_size=None,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        prefetch_factor=prefetch_batches if num_workers > 0 else None,
        generator=generator,
    )
