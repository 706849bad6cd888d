"""Identity-folder datasets: ``<root>/<identity>/<file>.<ext>`` (VGGFace2, CASIA-WebFace, WebFace4M/42M).

What is listed:
- identities: every non-hidden sub-folder of ``root``, sorted by name; a record's label is the index of
  its folder in that list (a folder with no images keeps its label, so labels match the folder list).
- records: every entry of an identity folder whose name ends in an image extension (jpg, jpeg, png, bmp,
  webp, any case), whatever it is on disk: a directory or broken link named ``x.jpg`` is listed and
  raises ``SourceError("unreadable")`` on read, so it is reported rather than silently missing.
  Other files (``.txt``, ``.DS_Store``...), nested sub-folders and files directly under ``root`` are
  ignored.

Keys are ``"<name>/<identity>/<file stem>"``. When two files in one folder share a stem
(``0001.jpg`` and ``0001.png``) both keep their extension in the key (``.../0001.jpg``,
``.../0001.png``), so neither is dropped and the keys depend only on the folder content.

VGGFace2's loose crops (``loose_bb_{train,test}.csv``: ``NAME_ID,X,Y,W,H``) and loose landmarks
(``loose_landmark_{train,test}.csv``: ``NAME_ID,P1X,P1Y,...,P5X,P5Y``; ``NAME_ID`` = ``n000002/0001_01``)
are attached to ``RawRecord.meta`` as ``loose_bbox`` (``[x1, y1, x2, y2]`` floats) and
``loose_landmarks`` (``[[x, y]] * 5`` floats). CSV rows for images that are not on disk are ignored
(one CSV covers the whole split).
"""

from __future__ import annotations

import csv
import os
from collections import Counter
from pathlib import Path
from typing import Any, Literal

from facekit.data.record import RawRecord
from facekit.data.sources.base import Source, SourceError, SourceFormatError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp"})
LAYOUTS = ("vggface2", "webface")


class IdentityFolderSource(Source):
    """Photos under ``root/<identity>/``; the folder list is scanned once, at construction."""

    def __init__(
        self,
        root: Path,
        name: str,
        layout: Literal["vggface2", "webface"] = "vggface2",
        bbox_csv: Path | None = None,
        landmarks_csv: Path | None = None,
    ) -> None:
        root = Path(root)
        if layout not in LAYOUTS:
            raise SourceFormatError("bad_layout", f"layout {layout!r} is not one of {LAYOUTS}")
        if layout != "vggface2" and (bbox_csv or landmarks_csv):
            raise SourceFormatError("bad_layout", "loose bbox/landmark CSVs exist only for the vggface2 layout")
        if not root.is_dir():
            raise SourceFormatError("not_a_directory", f"{root} is not a directory")
        self.root = root
        self.name = name
        self.layout = layout
        self._identities = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
        #: key -> (label, path relative to root)
        self._files: dict[str, tuple[int, str]] = {}
        for label, identity in enumerate(self._identities):
            self._add_identity_folder(label, identity)
        self._keys = sorted(self._files)
        self._loose_bbox = _read_loose_bboxes(Path(bbox_csv)) if bbox_csv else {}
        self._loose_landmarks = _read_loose_landmarks(Path(landmarks_csv)) if landmarks_csv else {}

    def _add_identity_folder(self, label: int, identity: str) -> None:
        folder = self.root / identity
        try:
            names = sorted(e.name for e in os.scandir(folder) if _is_image_name(e.name))
        except OSError as e:
            raise SourceFormatError("unreadable_folder", f"{folder}: {e.strerror or e}") from e
        stem_counts = Counter(os.path.splitext(n)[0] for n in names)
        for file_name in names:
            stem = os.path.splitext(file_name)[0]
            key = f"{self.name}/{identity}/{stem if stem_counts[stem] == 1 else file_name}"
            if key in self._files:  # e.g. "a.jpg.png" next to "a.jpg" and "a.png"
                raise SourceFormatError(
                    "key_collision", f"{folder}: {file_name} and {self._files[key][1]} map to {key}"
                )
            self._files[key] = (label, f"{identity}/{file_name}")

    def keys(self) -> list[str]:
        return list(self._keys)

    def identities(self) -> list[str]:
        return list(self._identities)

    def path_of(self, key: str) -> Path:
        """The file behind ``key``; raises ``KeyError`` for an unknown key."""
        return self.root / self._files[key][1]

    def read(self, key: str) -> RawRecord:
        """The file's bytes, its identity label and any loose bbox/landmarks from the CSVs."""
        label, rel_path = self._files[key]
        try:
            data = (self.root / rel_path).read_bytes()
        except OSError as e:
            raise SourceError("unreadable", f"{self.root / rel_path}: {e.strerror or e}") from e
        if not data:
            raise SourceError("empty_file", f"{self.root / rel_path} has 0 bytes")
        name_id = os.path.splitext(rel_path)[0]
        meta: dict[str, Any] = {}
        if name_id in self._loose_bbox:
            meta["loose_bbox"] = list(self._loose_bbox[name_id])
        if name_id in self._loose_landmarks:
            meta["loose_landmarks"] = [list(p) for p in self._loose_landmarks[name_id]]
        return RawRecord(key=key, data=data, identity=label, source=self.name, meta=meta)


def _is_image_name(file_name: str) -> bool:
    return os.path.splitext(file_name)[1].lower() in IMAGE_EXTENSIONS


def _read_loose_csv(path: Path, num_values: int) -> dict[str, tuple[float, ...]]:
    """``NAME_ID`` -> its ``num_values`` numbers, from a VGGFace2 loose CSV with a header row."""
    if not path.is_file():
        raise SourceFormatError("missing_csv", f"{path} does not exist")
    rows: dict[str, tuple[float, ...]] = {}
    with path.open(newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if not header or header[0].strip().upper() != "NAME_ID" or len(header) != num_values + 1:
            raise SourceFormatError(
                "bad_csv", f"{path}: expected a header NAME_ID + {num_values} columns, got {header}"
            )
        for line_no, row in enumerate(reader, start=2):
            if not row:
                continue
            try:
                if len(row) != num_values + 1:
                    raise ValueError(f"{len(row)} columns")
                rows[row[0].strip()] = tuple(float(v) for v in row[1:])
            except ValueError as e:
                raise SourceFormatError("bad_csv", f"{path} line {line_no}: {e}: {row}") from e
    return rows


def _read_loose_bboxes(path: Path) -> dict[str, tuple[float, float, float, float]]:
    """``NAME_ID`` -> ``(x1, y1, x2, y2)`` from ``NAME_ID,X,Y,W,H``."""
    return {k: (x, y, x + w, y + h) for k, (x, y, w, h) in _read_loose_csv(path, 4).items()}


def _read_loose_landmarks(path: Path) -> dict[str, tuple[tuple[float, float], ...]]:
    """``NAME_ID`` -> five ``(x, y)`` points from ``NAME_ID,P1X,P1Y,...,P5X,P5Y``."""
    return {k: tuple(zip(v[0::2], v[1::2], strict=True)) for k, v in _read_loose_csv(path, 10).items()}
