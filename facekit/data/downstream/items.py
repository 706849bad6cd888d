"""The records every downstream reader returns: items, rejections, a scan and a reader."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import numpy as np
import scipy.io
from tqdm import tqdm

TASKS = ("expression", "attributes", "alignment", "parsing", "pose")
SPLITS = ("train", "val", "test")
T = TypeVar("T")


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
    """A file under a root that yields no item, or one row of an annotation file (``line``, 1-based: a text line, a
    table row, the position in a json list or a .mat array), and why."""

    path: Path
    reason: str
    line: int | None = None


@dataclass(frozen=True)
class DatasetScan:
    """What a reader made of a root: the items, every rejected file or row, and the files read besides the photos
    (annotation files, label maps): ``annotations``, the photos and the rejected files are every file of the root."""

    items: list[DownstreamItem]
    rejected: list[Rejected] = field(default_factory=list)
    annotations: list[Path] = field(default_factory=list)

    def summary(self) -> str:
        """One line: the items per split and the rejected files and rows."""
        splits = Counter(item.split for item in self.items)
        files = sum(entry.line is None for entry in self.rejected)
        per_split = ", ".join(f"{split} {splits[split]}" for split in SPLITS if splits[split])
        return (
            f"{len(self.items)} items ({per_split or 'none'}); "
            f"rejected: files {files}, rows {len(self.rejected) - files}"
        )


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


def progress(items: Iterable[T], what: str) -> Iterable[T]:
    """``items`` with a progress bar on a terminal (none in logs and tests)."""
    return tqdm(items, desc=what, unit="file", leave=False, disable=None)


def require_dir(root: Path) -> Path:
    """``root`` as a Path, or FileNotFoundError when it is not a folder."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such dataset folder")
    return root


def require_file(path: Path) -> Path:
    """``path``, or FileNotFoundError naming it when it is not there."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing (the dataset's layout needs it)")
    return path


def find_one(root: Path, name: str) -> Path | None:
    """The one file called ``name`` under ``root`` (None when there is none; ValueError when several)."""
    found = sorted(path for path in root.rglob(name) if path.is_file())
    if len(found) > 1:
        raise ValueError(f"{root}: several {name} files ({', '.join(str(p) for p in found)})")
    return found[0] if found else None


def find_one_dir(root: Path, name: str) -> Path | None:
    """The one folder called ``name`` under ``root`` (None when there is none; ValueError when several)."""
    found = sorted(path for path in root.rglob(name) if path.is_dir())
    if len(found) > 1:
        raise ValueError(f"{root}: several {name} folders ({', '.join(str(p) for p in found)})")
    return found[0] if found else None


def load_mat(path: Path) -> dict[str, np.ndarray]:
    """The variables of a MATLAB v5/v7 ``.mat`` file (scipy); a v7.3 (HDF5) file is one ValueError naming it."""
    try:
        return scipy.io.loadmat(path)
    except NotImplementedError:
        raise ValueError(f"{path}: a MATLAB v7.3 (HDF5) file; save it as v7 (MATLAB's save -v7) to read it") from None


def malformed(path: Path, line: int, problem: str) -> ValueError:
    """The one error of a malformed annotation file: ``<file>:<line>: <problem>``."""
    return ValueError(f"{path}:{line}: {problem}")


def finish(
    root: Path,
    items: list[DownstreamItem],
    rejected: list[Rejected],
    consumed: set[Path],
    reason: Callable[[Path], str],
) -> DatasetScan:
    """The scan of ``root``: every file neither ``consumed`` (read) nor already rejected is rejected with
    ``reason(path)``, so files and rows reconcile."""
    named = {entry.path for entry in rejected if entry.line is None}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        if path not in consumed and path not in named:
            rejected.append(Rejected(path, reason(path)))
    photos = {item.image for item in items}
    return DatasetScan(items, rejected, sorted(consumed - photos))
