"""The records every downstream reader returns: items, rejections, a scan and a reader."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

TASKS = ("expression", "attributes", "alignment", "parsing", "pose")
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class DownstreamItem:
    """One annotated photo.

    ``target`` by task: expression ``()`` int64 0-based class; attributes ``(40,)`` int8 in {0, 1}; alignment
    ``(K, 2)`` float32 pixels (x, y); pose ``(3,)`` float32 degrees (yaw, pitch, roll); parsing ``(H, W)`` uint8
    class ids, 0 = background. ``split`` is the dataset's own partition ("test" when it has none); ``box`` ``(4,)``
    float32 x0, y0, x1, y1 pixels where the layout gives one; ``visible`` ``(K,)`` bool for alignment where the
    layout flags occlusion (COFW), else None.
    """

    image: Path
    task: str
    target: np.ndarray
    split: str
    box: np.ndarray | None = None
    visible: np.ndarray | None = None


@dataclass(frozen=True)
class Rejected:
    """A file (or one line of it, ``line`` 1-based) under a root that yields no item, and why."""

    path: Path
    reason: str
    line: int | None = None


@dataclass(frozen=True)
class DatasetScan:
    """What a reader made of a root: the items and every rejected file or row."""

    items: list[DownstreamItem]
    rejected: list[Rejected] = field(default_factory=list)


@dataclass(frozen=True)
class DatasetReader:
    """A dataset's reader: its task, ``classes`` (class / attribute / angle names; empty for alignment), ``landmarks``
    (K of the layout, alignment only) and ``scan(root)``."""

    name: str
    task: str
    classes: tuple[str, ...]
    scan: Callable[[Path], DatasetScan]
    landmarks: int | None = None

    def read(self, root: str | Path) -> list[DownstreamItem]:
        """The items of ``root`` (rejections dropped; :meth:`scan` keeps them)."""
        return self.scan(Path(root)).items
