"""A PyTorch Dataset over facekit's LMDB shards (see :mod:`facekit.data.shards`)."""

from __future__ import annotations

import bisect
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from facekit.data.images import ImageError, decode_crop_rgb
from facekit.data.shards import INDEX_NAME, ShardError, ShardReader, read_index


class FaceShardDataset(Dataset):
    """A map-style Dataset over one or more shards.

    ``shards`` is a folder with ``index.json``, a single shard, or a list of shard paths. Items are dicts:
    ``image`` (``transform(rgb uint8 [H, W, 3])``, or without a transform a uint8 tensor [3, H, W]; a
    transform that returns a dict of views adds those entries instead; a transform with a true
    ``takes_record`` attribute is called as ``transform(rgb, record)`` with the :class:`FaceRecord`),
    ``identity`` (int), ``landmarks`` (float32 tensor [5, 2]) and ``key`` (str).
    """

    def __init__(
        self,
        shards: Path | list[Path],
        *,
        transform: Callable[[np.ndarray], Any] | None = None,
        readahead: bool = False,
    ) -> None:
        index: dict | None = None
        if isinstance(shards, list | tuple):
            paths = [Path(p) for p in shards]
        elif (Path(shards) / INDEX_NAME).is_file() or not (Path(shards) / "data.mdb").is_file():
            index = read_index(Path(shards))
            paths = [Path(shards) / entry["name"] for entry in index["shards"]]
        else:
            paths = [Path(shards)]
        if not paths:
            raise ValueError("FaceShardDataset needs at least one shard")
        self.transform = transform
        self.readers = [ShardReader(p, readahead=readahead) for p in paths]
        counts = []
        for reader in self.readers:
            counts.append(len(reader))
            reader.close()  # workers reopen their own handles
        if index is not None:
            self._check_against_index(index)
        self._ends = np.cumsum(counts).tolist()
        self._identities = self._find_identities(index)

    def _check_against_index(self, index: dict) -> None:
        for reader, entry in zip(self.readers, index["shards"], strict=True):
            if (reader.meta["count"], reader.meta["content_hash"]) != (entry["count"], entry["content_hash"]):
                raise ShardError(f"{reader.path}: shard does not match its entry in {INDEX_NAME} (stale index?)")

    def _find_identities(self, index: dict | None) -> list[str]:
        if index is not None:
            return list(index.get("identities", []))
        tables = {tuple(r.meta.get("identities", [])) for r in self.readers}
        if len(tables) > 1:
            raise ShardError(f"{self.readers[0].path.parent}: shards disagree on their identity tables")
        return list(tables.pop())

    @property
    def identities(self) -> list[str]:
        """Identity names; an item's ``identity`` label indexes this list."""
        return self._identities

    def __len__(self) -> int:
        return self._ends[-1]

    def locate(self, i: int) -> tuple[int, int]:
        """Map global index ``i`` to (shard number, index inside that shard)."""
        if not 0 <= i < len(self):
            raise IndexError(f"index {i} out of range (dataset of {len(self)})")
        shard = bisect.bisect_right(self._ends, i)
        return shard, i - (self._ends[shard - 1] if shard else 0)

    def __getitem__(self, i: int) -> dict[str, Any]:
        shard, local = self.locate(i)
        reader = self.readers[shard]
        record = reader[local]
        try:
            rgb = decode_crop_rgb(record.image)
        except ImageError as e:
            raise ShardError(f"{reader.path}: record {local} ({record.key}): bad image: {e}") from None
        if getattr(self.transform, "takes_record", False):  # e.g. a view that may swap in the masked twin
            image = self.transform(rgb, record)
        elif self.transform is not None:
            image = self.transform(rgb)
        else:  # numpy's transpose copy: torch's .contiguous() here is ~10x slower on a busy 2-core box
            image = torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))
        item = {
            "identity": int(record.identity),
            "landmarks": torch.from_numpy(np.asarray(record.landmarks, dtype=np.float32)),
            "key": record.key,
        }
        if isinstance(image, dict):  # a multi-view transform: its views become top-level batch entries
            item.update(image)
        else:
            item["image"] = image
        return item
