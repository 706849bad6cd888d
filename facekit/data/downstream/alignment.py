"""Landmark readers: 300W and 300-VW (68 points), WFLW (98), AFLW-19 (19), COFW (29), LaPa (106); (x, y) pixels.

Each reads its published layout; where a root holds none of it but a COCO-style keypoint json (the converted form
mmpose distributes: ``images`` with ``file_name`` next to the json, ``annotations`` with ``keypoints`` x, y, v and
``bbox`` x, y, w, h), that json is read instead. A json whose name says ``train`` / ``val`` is that split, else test.

- 300W: ``<name>.pts`` beside ``<name>.png|.jpg`` (``version: 1``, ``n_points: 68``, ``{``, 68 ``x y`` lines,
  ``}``); a path through ``trainset`` or ``afw`` is train (the 300W training set: LFPW and HELEN train, AFW),
  every other (LFPW and HELEN test, iBUG, the 300W private ``01_Indoor`` / ``02_Outdoor``) test.
- 300-VW: ``<video>/annot/NNNNNN.pts`` with the frame extracted to ``<video>/imgs/NNNNNN.jpg`` (the release ships
  ``vid.avi``); the 64 videos of the three test categories are test, the other 50 train.
- WFLW: ``list_98pt_rect_attr_{train,test}.txt`` lines of 196 coordinates, the box x0 y0 x1 y1, 6 attribute flags
  and the path under ``WFLW_images/``; the ``list_98pt_test*.txt`` subset lists are rejected (the flags tag them).
- AFLW-19: ``AFLWinfo_release.mat``: ``data`` (N, 38) as 19 x then 19 y, ``bbox`` (N, 4) as x0, x1, y0, y1,
  ``mask_new`` (N, 19) visibility, ``nameList`` paths under ``flickr/``, ``ra`` a 1-based order whose first 20000
  are train and the rest the AFLW-Full test.
- COFW: the converted form only (the release's ``.mat`` embeds its photos); ``v`` 2 is visible, 1 occluded.
- LaPa: ``<split>/landmarks/<name>.txt`` (a count line ``106``, then 106 ``x y`` lines) with
  ``<split>/images/<name>.jpg``; the label PNGs are the parsing reader's and rejected here.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np

from facekit.data.downstream.items import (
    DatasetReader,
    DatasetScan,
    DownstreamItem,
    Rejected,
    find_one,
    find_one_dir,
    finish,
    load_mat,
    malformed,
    progress,
    require_dir,
)

PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png")
#: The 300-VW videos of test categories 1, 2 and 3.
VW300_TEST_VIDEOS = frozenset({
    "114", "124", "125", "126", "150", "158", "401", "402", "505", "506", "507", "508", "509", "510", "511", "514",
    "515", "518", "519", "520", "521", "522", "524", "525", "537", "538", "540", "541", "546", "547", "548",
    "203", "208", "211", "212", "213", "214", "218", "224", "403", "404", "405", "406", "407", "408", "409", "412",
    "550", "551", "553",
    "410", "411", "516", "517", "526", "528", "529", "530", "531", "533", "557", "558", "559", "562",
})  # fmt: skip
AFLW_TRAIN = 20000
Published = Callable[[Path, list[DownstreamItem], list[Rejected], set[Path]], bool]


def _points(values: list[str] | np.ndarray, count: int) -> np.ndarray:
    return np.asarray(values, dtype=np.float32).reshape(count, 2)


def read_pts(path: Path, count: int) -> np.ndarray:
    """The ``(count, 2)`` points of a ``.pts`` file: ``version: 1`` (``1.0`` too), ``n_points: N``, ``{``, N ``x y``
    lines, ``}``; CRLF line ends allowed."""
    lines = [line.strip() for line in path.read_text().splitlines()]
    header = {
        1: (r"version:\s*1(\.0*)?", "version: 1"),
        2: (rf"n_points:\s*{count}", f"n_points: {count}"),
        3: (r"\{", "{"),
        count + 4: (r"\}", "}"),
    }
    for number, (pattern, expected) in header.items():
        got = lines[number - 1] if number <= len(lines) else "the end of the file"
        if not re.fullmatch(pattern, got):
            raise malformed(path, number, f"expected {expected!r}, got {got!r}")
    rows = [line.split() for line in lines[3 : count + 3]]
    for number, row in enumerate(rows, start=4):
        if len(row) != 2 or not all(re.fullmatch(r"-?\d+(\.\d*)?(e-?\d+)?", value) for value in row):
            raise malformed(path, number, f"expected 'x y', got {' '.join(row)!r}")
    return _points(rows, count)


def _photo_beside(path: Path) -> Path | None:
    return next((p for p in (path.with_suffix(s) for s in PHOTO_SUFFIXES) if p.is_file()), None)


def _alignment(photo: Path, points: np.ndarray, split: str, **extra: np.ndarray | None) -> DownstreamItem:
    return DownstreamItem(photo, "alignment", points, split, **extra)


def _published_300w(root: Path, items: list[DownstreamItem], rejected: list[Rejected], consumed: set[Path]) -> bool:
    annotations = sorted(root.rglob("*.pts"))
    for path in progress(annotations, "300w"):
        photo = _photo_beside(path)
        if photo is None:
            rejected.append(Rejected(path, "no photo beside it"))
            continue
        parts = {part.lower() for part in path.relative_to(root).parts}
        split = "train" if parts & {"trainset", "afw"} else "test"
        consumed.update((path, photo))
        items.append(_alignment(photo, read_pts(path, 68), split))
    return bool(annotations)


def _published_300vw(root: Path, items: list[DownstreamItem], rejected: list[Rejected], consumed: set[Path]) -> bool:
    annotations = sorted(path for path in root.rglob("*.pts") if path.parent.name == "annot")
    for path in progress(annotations, "300vw"):
        video = path.parent.parent
        photo = video / "imgs" / f"{path.stem}.jpg"
        if not photo.is_file():
            rejected.append(Rejected(path, f"frame imgs/{photo.name} is missing (extract it from vid.avi)"))
            continue
        consumed.update((path, photo))
        split = "test" if video.name in VW300_TEST_VIDEOS else "train"
        items.append(_alignment(photo, read_pts(path, 68), split))
    return bool(annotations)


def _published_wflw(root: Path, items: list[DownstreamItem], rejected: list[Rejected], consumed: set[Path]) -> bool:
    lists = [find_one(root, f"list_98pt_rect_attr_{split}.txt") for split in ("train", "test")]
    photos = find_one_dir(root, "WFLW_images")
    if not any(lists):
        return False
    if photos is None:
        raise FileNotFoundError(f"{root}: WFLW needs the WFLW_images folder")
    for split, path in zip(("train", "test"), lists, strict=True):
        if path is None:
            continue
        consumed.add(path)
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 196 + 4 + 6 + 1:
                raise malformed(
                    path, number, f"expected 207 fields (196 coordinates, box, 6 flags, path), got {len(fields)}"
                )
            try:
                points, box = _points(fields[:196], 98), np.asarray(fields[196:200], dtype=np.float32)
            except ValueError:
                raise malformed(path, number, "coordinates and box must be numbers") from None
            photo = photos / fields[-1]
            if not photo.is_file():
                rejected.append(Rejected(path, f"photo {fields[-1]} is missing", number))
                continue
            consumed.add(photo)
            items.append(_alignment(photo, points, split, box=box))
    return True


def _published_aflw19(root: Path, items: list[DownstreamItem], rejected: list[Rejected], consumed: set[Path]) -> bool:
    path = find_one(root, "AFLWinfo_release.mat")
    if path is None:
        return False
    photos = find_one_dir(root, "flickr")
    if photos is None:
        raise FileNotFoundError(f"{root}: AFLW-19 needs the flickr/ photo folder")
    mat = load_mat(path)
    if missing := [key for key in ("data", "bbox", "mask_new", "nameList", "ra") if key not in mat]:
        raise malformed(path, 1, f"no {', '.join(missing)} variable")
    data, bbox, mask = np.asarray(mat["data"]), np.asarray(mat["bbox"]), np.asarray(mat["mask_new"])
    names = [str(np.asarray(name).ravel()[0]) for name in mat["nameList"].ravel()]
    order = np.asarray(mat["ra"]).ravel().astype(int) - 1
    count = len(names)
    if data.shape != (count, 38) or bbox.shape != (count, 4) or mask.shape != (count, 19):
        raise malformed(path, 1, f"data {data.shape}, bbox {bbox.shape}, mask_new {mask.shape} for {count} names")
    if sorted(order.tolist()) != list(range(count)):
        raise malformed(path, 1, f"ra is not an order of 1..{count}")
    consumed.add(path)
    split_of = {int(row): "train" if rank < AFLW_TRAIN else "test" for rank, row in enumerate(order)}
    for row, name in enumerate(names):
        photo = photos / name.replace("\\", "/")
        if not photo.is_file():
            rejected.append(Rejected(path, f"photo {name} is missing", row + 1))
            continue
        consumed.add(photo)
        points = np.stack([data[row, :19], data[row, 19:]], axis=1).astype(np.float32)
        box = bbox[row, [0, 2, 1, 3]].astype(np.float32)  # x0, x1, y0, y1 -> x0, y0, x1, y1
        items.append(_alignment(photo, points, split_of[row], box=box, visible=mask[row].astype(bool)))
    return True


def _published_lapa(root: Path, items: list[DownstreamItem], rejected: list[Rejected], consumed: set[Path]) -> bool:
    annotations = sorted(path for path in root.rglob("*.txt") if path.parent.name == "landmarks")
    for path in progress(annotations, "lapa_landmarks"):
        lines = path.read_text().split("\n")
        if lines[0].strip() != "106":
            raise malformed(path, 1, f"expected the point count 106, got {lines[0].strip()!r}")
        rows = [line.split() for line in lines[1:107]]
        for number, row in enumerate(rows, start=2):
            if len(row) != 2:
                raise malformed(path, number, f"expected 'x y', got {' '.join(row)!r}")
        if len(rows) != 106 or any(line.strip() for line in lines[107:]):
            raise malformed(path, min(len(lines), 108), "expected exactly 106 point lines")
        photo = path.parent.parent / "images" / f"{path.stem}.jpg"
        if not photo.is_file():
            rejected.append(Rejected(path, f"photo images/{photo.name} is missing"))
            continue
        consumed.update((path, photo))
        split = path.parent.parent.name if path.parent.parent.name in ("train", "val", "test") else "test"
        items.append(_alignment(photo, _points(rows, 106), split))
    return bool(annotations)


def scan_coco_landmarks(root: Path, count: int, flags_occlusion: bool = False) -> DatasetScan:
    """The converted form: every COCO-style keypoint json at the top of ``root`` and the photos it names."""
    root = require_dir(root)
    items: list[DownstreamItem] = []
    rejected: list[Rejected] = []
    consumed: set[Path] = set()
    tables = sorted(root.glob("*.json"))
    if not tables:
        raise FileNotFoundError(f"{root}: neither the published layout nor a converted json")
    for path in tables:
        data = json.loads(path.read_text())
        if not isinstance(data, dict) or not {"images", "annotations"} <= data.keys():
            raise ValueError(f"{path}: not a COCO-style json (needs images and annotations)")
        consumed.add(path)
        split = next((s for s in ("train", "val") if s in path.stem.lower()), "test")
        files = {image["id"]: image["file_name"] for image in data["images"]}
        for position, annotation in enumerate(data["annotations"], start=1):
            keypoints = np.asarray(annotation.get("keypoints", []), dtype=np.float32)
            if keypoints.size != count * 3 or annotation.get("image_id") not in files:
                raise ValueError(f"{path}: annotation {annotation.get('id')}: needs {count} x, y, v and an image")
            photo = path.parent / files[annotation["image_id"]]
            if not photo.is_file():
                why = f"annotation {annotation.get('id')}: photo {photo.name} is missing"
                rejected.append(Rejected(path, why, position))
                continue
            consumed.add(photo)
            keypoints = keypoints.reshape(count, 3)
            box = None
            if "bbox" in annotation:
                x, y, width, height = annotation["bbox"]
                box = np.array([x, y, x + width, y + height], dtype=np.float32)
            visible = keypoints[:, 2] == 2 if flags_occlusion else None
            items.append(_alignment(photo, keypoints[:, :2].copy(), split, box=box, visible=visible))
    return finish(root, items, rejected, consumed, lambda path: "not named by the converted json")


def _reader(name: str, count: int, published: Published | None, reason: str, occlusion: bool = False) -> DatasetReader:
    """A landmark reader: the published layout through ``published`` when the root holds it, else the json."""

    def scan(root: Path) -> DatasetScan:
        root = require_dir(root)
        items: list[DownstreamItem] = []
        rejected: list[Rejected] = []
        consumed: set[Path] = set()
        if published is None or not published(root, items, rejected, consumed):
            return scan_coco_landmarks(root, count, occlusion)

        def why(path: Path) -> str:
            if path.suffix == ".json" and path.parent == root:
                return "converted annotations: the published files are read"
            return reason

        return finish(root, items, rejected, consumed, why)

    return DatasetReader(name, "alignment", (), scan, landmarks=count)


ALIGNMENT_READERS = (
    _reader("300w", 68, _published_300w, "not part of 300W's layout (photos with .pts)"),
    _reader("300vw", 68, _published_300vw, "not part of 300-VW's layout (annot/*.pts with imgs/*.jpg)"),
    _reader("wflw", 98, _published_wflw, "not part of WFLW's layout (list_98pt_rect_attr_*.txt, WFLW_images/)"),
    _reader("aflw19", 19, _published_aflw19, "not part of AFLW-19's layout (AFLWinfo_release.mat, flickr/)"),
    _reader("cofw", 29, None, "", occlusion=True),
    _reader("lapa_landmarks", 106, _published_lapa, "not part of LaPa's landmark layout (landmarks/, images/)"),
)
