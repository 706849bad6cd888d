"""Expression readers: RAF-DB, FERPlus, AffectNet.

- RAF-DB (basic): ``EmoLabel/list_patition_label.txt`` lines ``train_00001.jpg 5`` with 1-based labels (1 surprise
  ... 7 neutral) read as 0-based; the photo is ``Image/aligned/<stem>_aligned.jpg``; the ``train_`` / ``test_``
  prefix is the split. The original photos and ``Annotation/`` are rejected (the aligned photo is the benchmark's).
- FERPlus: ``fer2013.csv`` (``emotion,pixels,Usage``: 48x48 grey pixels) and ``fer2013new.csv`` (``Usage,Image
  name`` and ten vote counts: 8 emotions, unknown, NF) row for row. The label is FERPlus's majority vote: votes of
  one are dropped, the top emotion must hold more than half of the rest, else the row is rejected (no majority), as
  are rows whose majority is unknown or not-a-face and rows FERPlus left without an image name. The photos are
  written where FERPlus's own script puts them (``FER2013Train/``, ``FER2013Valid/``, ``FER2013Test/`` next to
  ``fer2013new.csv``, named by ``Image name``) unless already there; Training / PublicTest / PrivateTest are
  train / val / test.
- AffectNet: ``Manually_Annotated_file_lists/{training,validation}.csv`` (``subDirectory_filePath, face_x, face_y,
  face_width, face_height, facial_landmarks, expression, valence, arousal``) over ``Manually_Annotated_Images/``.
  ``expression`` 0-7 (neutral ... contempt) are the 8 classes; the 7-class setting also rejects contempt; 8-10
  (none, uncertain, no face) are rejected. The test set is unreleased, so ``validation.csv`` is the ``test`` split
  every paper reports on.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image

from facekit.data.downstream.items import (
    DatasetReader,
    DatasetScan,
    DownstreamItem,
    Rejected,
    find_one,
    find_one_dir,
    finish,
    malformed,
    progress,
    require_dir,
    require_file,
)

RAFDB_CLASSES = ("surprise", "fear", "disgust", "happiness", "sadness", "anger", "neutral")
FERPLUS_CLASSES = ("neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt")
FERPLUS_VOTES = (*FERPLUS_CLASSES, "unknown", "NF")
AFFECTNET_CLASSES = ("neutral", "happy", "sad", "surprise", "fear", "disgust", "anger", "contempt")
AFFECTNET_REJECTED = {8: "expression 8 (none)", 9: "expression 9 (uncertain)", 10: "expression 10 (no face)"}

#: FER2013's Usage -> (split, the photo folder FERPlus's own script writes).
_FERPLUS_SPLITS = {
    "Training": ("train", "FER2013Train"),
    "PublicTest": ("val", "FER2013Valid"),
    "PrivateTest": ("test", "FER2013Test"),
}
_FER_SIDE = 48


def _label(value: int) -> np.ndarray:
    return np.array(value, dtype=np.int64)


def scan_rafdb(root: Path) -> DatasetScan:
    """RAF-DB's basic set under ``root`` (the folder holding ``EmoLabel/`` and ``Image/``)."""
    root = require_dir(root)
    labels = require_file(root / "EmoLabel" / "list_patition_label.txt")
    items: list[DownstreamItem] = []
    rejected: list[Rejected] = []
    consumed = {labels}
    seen: set[str] = set()
    for number, line in enumerate(labels.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split()
        if len(fields) != 2 or not fields[1].isdigit() or not 1 <= int(fields[1]) <= len(RAFDB_CLASSES):
            raise malformed(labels, number, f"expected '<name>.jpg <label 1-7>', got {line!r}")
        name, label = fields[0], int(fields[1])
        split = name.split("_", 1)[0]
        if split not in ("train", "test") or name in seen:
            raise malformed(labels, number, f"{name!r} is repeated or has no train_/test_ prefix")
        seen.add(name)
        photo = root / "Image" / "aligned" / f"{Path(name).stem}_aligned.jpg"
        if not photo.is_file():
            rejected.append(Rejected(labels, f"aligned photo {photo.name} is missing", number))
            continue
        consumed.add(photo)
        items.append(DownstreamItem(photo, "expression", _label(label - 1), split))

    def reason(path: Path) -> str:
        relative = path.relative_to(root).parts
        if relative[:2] == ("Image", "original"):
            return "original photo: the aligned photo is read"
        if relative[:2] == ("Image", "aligned"):
            return "aligned photo without a line in list_patition_label.txt"
        if relative[0] == "Annotation":
            return "RAF-DB annotation (boxes, landmarks) not used by the expression task"
        return "not part of RAF-DB's basic layout"

    return finish(root, items, rejected, consumed, reason)


def ferplus_majority(votes: list[int]) -> tuple[int | None, str]:
    """FERPlus's majority label of 10 vote counts: (index into :data:`FERPLUS_VOTES`, "") or (None, why not)."""
    kept = [count if count > 1 else 0 for count in votes]  # a single vote is an outlier
    total = sum(kept)
    top = max(range(len(kept)), key=kept.__getitem__)
    if total == 0 or 2 * kept[top] <= total:
        return None, "no majority among the votes"
    if top >= len(FERPLUS_CLASSES):
        return None, f"majority vote is {FERPLUS_VOTES[top]}"
    return top, ""


def _csv_rows(path: Path, header: list[str]) -> list[tuple[int, list[str]]]:
    """(line number, fields) of every row after ``header``; a short row or wrong header is malformed."""
    with path.open(newline="") as handle:
        reader = csv.reader(handle)
        first = next(reader, None)
        if first is None or [field.strip() for field in first] != header:
            raise malformed(path, 1, f"expected the header {','.join(header)}")
        rows = []
        for fields in reader:
            if len(fields) != len(header):
                raise malformed(path, reader.line_num, f"expected {len(header)} fields, got {len(fields)}")
            rows.append((reader.line_num, fields))
    return rows


def scan_ferplus(root: Path) -> DatasetScan:
    """FERPlus under ``root``: ``fer2013.csv`` and ``fer2013new.csv`` (anywhere under it), majority labels."""
    root = require_dir(root)
    pixels_csv, votes_csv = find_one(root, "fer2013.csv"), find_one(root, "fer2013new.csv")
    if pixels_csv is None or votes_csv is None:
        raise FileNotFoundError(f"{root}: FERPlus needs both fer2013.csv and fer2013new.csv")
    pixel_rows = _csv_rows(pixels_csv, ["emotion", "pixels", "Usage"])
    vote_rows = _csv_rows(votes_csv, ["Usage", "Image name", *FERPLUS_VOTES])
    if len(pixel_rows) != len(vote_rows):
        raise malformed(votes_csv, 1, f"{len(vote_rows)} rows but fer2013.csv has {len(pixel_rows)}")
    items: list[DownstreamItem] = []
    rejected: list[Rejected] = []
    consumed = {pixels_csv, votes_csv}
    rows = progress(zip(pixel_rows, vote_rows, strict=True), "ferplus")
    for (pixel_line, (_emotion, pixels, usage)), (line, fields) in rows:
        if fields[0] != usage or usage not in _FERPLUS_SPLITS:
            raise malformed(votes_csv, line, f"Usage {fields[0]!r} (fer2013.csv line {pixel_line}: {usage!r})")
        try:
            votes = [int(float(count)) for count in fields[2:]]
        except ValueError:
            raise malformed(votes_csv, line, f"vote counts are not numbers: {fields[2:]}") from None
        name = fields[1].strip()
        if not name:
            rejected.append(Rejected(votes_csv, "no image name: FERPlus dropped this photo", line))
            continue
        label, why = ferplus_majority(votes)
        if label is None:
            rejected.append(Rejected(votes_csv, why, line))
            continue
        split, folder = _FERPLUS_SPLITS[usage]
        photo = votes_csv.parent / folder / name
        if not photo.is_file():
            values = pixels.split()
            if len(values) != _FER_SIDE * _FER_SIDE:
                raise malformed(pixels_csv, pixel_line, f"{len(values)} pixels, expected {_FER_SIDE**2}")
            photo.parent.mkdir(exist_ok=True)
            grey = np.array(values, dtype=np.uint8).reshape(_FER_SIDE, _FER_SIDE)
            Image.fromarray(grey).save(photo)
        consumed.add(photo)
        items.append(DownstreamItem(photo, "expression", _label(label), split))

    def reason(path: Path) -> str:
        if path.parent.name in {folder for _, folder in _FERPLUS_SPLITS.values()} and path.suffix == ".png":
            return "photo of a rejected fer2013new.csv row"
        return "not part of FERPlus's layout (fer2013.csv, fer2013new.csv)"

    return finish(root, items, rejected, consumed, reason)


_AFFECTNET_HEADER = [
    "subDirectory_filePath", "face_x", "face_y", "face_width", "face_height", "facial_landmarks", "expression",
    "valence", "arousal",
]  # fmt: skip
_AFFECTNET_SPLITS = {"training.csv": "train", "validation.csv": "test"}


def _scan_affectnet(root: Path, num_classes: int) -> DatasetScan:
    root = require_dir(root)
    lists = [find_one(root, name) for name in _AFFECTNET_SPLITS]
    if not any(lists):
        raise FileNotFoundError(f"{root}: AffectNet needs training.csv or validation.csv")
    photos = find_one_dir(root, "Manually_Annotated_Images")
    if photos is None:
        raise FileNotFoundError(f"{root}: AffectNet needs the Manually_Annotated_Images folder")
    items: list[DownstreamItem] = []
    rejected: list[Rejected] = []
    tables = [path for path in lists if path]
    consumed = set(tables)
    for table in tables:
        split = _AFFECTNET_SPLITS[table.name]
        for line, fields in _csv_rows(table, _AFFECTNET_HEADER):
            try:
                x, y, width, height = (float(value) for value in fields[1:5])
                expression = int(fields[6])
            except ValueError:
                raise malformed(table, line, f"face box or expression is not a number: {fields[1:7]}") from None
            if not 0 <= expression <= max(AFFECTNET_REJECTED):
                raise malformed(table, line, f"expression {expression} is not one of 0-10")
            if expression >= num_classes:
                why = AFFECTNET_REJECTED.get(
                    expression, f"expression {expression} is outside the {num_classes} classes"
                )
                rejected.append(Rejected(table, why, line))
                continue
            photo = photos / fields[0]
            if not photo.is_file():
                rejected.append(Rejected(table, f"photo {fields[0]} is missing", line))
                continue
            consumed.add(photo)
            box = np.array([x, y, x + width, y + height], dtype=np.float32)
            items.append(DownstreamItem(photo, "expression", _label(expression), split, box=box))

    def reason(path: Path) -> str:
        if photos in path.parents:
            return "photo without a kept row in training.csv / validation.csv"
        return "not part of AffectNet's manually annotated layout"

    return finish(root, items, rejected, consumed, reason)


def affectnet_reader(num_classes: int) -> DatasetReader:
    """AffectNet with 8 classes (``affectnet``) or 7, contempt rejected (``affectnet7``)."""
    if num_classes not in (7, 8):
        raise ValueError(f"AffectNet has 7 or 8 classes, not {num_classes}")
    name = "affectnet" if num_classes == 8 else "affectnet7"
    return DatasetReader(
        name, "expression", AFFECTNET_CLASSES[:num_classes], lambda root: _scan_affectnet(root, num_classes)
    )


EXPRESSION_READERS = (
    DatasetReader("rafdb", "expression", RAFDB_CLASSES, scan_rafdb),
    DatasetReader("ferplus", "expression", FERPLUS_CLASSES, scan_ferplus),
    affectnet_reader(8),
    affectnet_reader(7),
)
