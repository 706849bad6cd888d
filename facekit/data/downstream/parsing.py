"""Face-parsing readers: LaPa (11 classes) and CelebAMask-HQ (19 classes); ``target`` (H, W) uint8, 0 background.

- LaPa: ``<split>/images/<name>.jpg`` with ``<split>/labels/<name>.png`` (class ids 0-10, the photo's size) for the
  ``train`` / ``val`` / ``test`` folders; ``landmarks/`` are the ``lapa_landmarks`` reader's and rejected here.
- CelebAMask-HQ: ``CelebA-HQ-img/<i>.jpg`` (1024 px) with one binary 512 px mask per part,
  ``CelebAMask-HQ-mask-anno/<i // 2000>/<i:05d>_<part>.png``, merged into one class map at the masks' 512 px in
  :data:`CELEBAMASK_HQ_CLASSES` order, a later part over an earlier one (as the release's own merge script
  does). The split is the CelebA partition of each photo's source image (``CelebA-HQ-to-CelebA-mapping.txt``'s
  0-based ``orig_idx``): the one FaRL's 24183 / 2993 / 2824 counts come from.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from PIL import Image

from facekit.data.downstream.attributes import celeba_split
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
)

LAPA_CLASSES = (
    "background", "skin", "left_eyebrow", "right_eyebrow", "left_eye", "right_eye", "nose", "upper_lip",
    "inner_mouth", "lower_lip", "hair",
)  # fmt: skip
CELEBAMASK_HQ_CLASSES = (
    "background", "skin", "nose", "eye_g", "l_eye", "r_eye", "l_brow", "r_brow", "l_ear", "r_ear", "mouth",
    "u_lip", "l_lip", "hair", "hat", "ear_r", "neck_l", "neck", "cloth",
)  # fmt: skip
MASKS_PER_FOLDER = 2000
_MASK_NAME = re.compile(r"(\d{5})_([a-z_]+)\.png")


def scan_lapa(root: Path) -> DatasetScan:
    """LaPa under ``root`` (the folder holding ``train/``, ``val/``, ``test/``, or one of them)."""
    root = require_dir(root)
    labels = sorted(path for path in root.rglob("*.png") if path.parent.name == "labels")
    if not labels:
        raise FileNotFoundError(f"{root}: LaPa needs <split>/labels/*.png")
    items: list[DownstreamItem] = []
    rejected: list[Rejected] = []
    consumed: set[Path] = set()
    for label in progress(labels, "lapa"):
        photo = label.parent.parent / "images" / f"{label.stem}.jpg"
        if not photo.is_file():
            rejected.append(Rejected(label, f"photo images/{photo.name} is missing"))
            continue
        with Image.open(label) as image, Image.open(photo) as picture:
            if image.mode not in ("L", "P") or image.size != picture.size:
                raise ValueError(f"{label}: a {image.mode} {image.size} map for a {picture.size} photo")
            target = np.asarray(image, dtype=np.uint8)
        if target.max() >= len(LAPA_CLASSES):
            raise ValueError(f"{label}: class id {target.max()} is outside 0-{len(LAPA_CLASSES) - 1}")
        split = label.parent.parent.name if label.parent.parent.name in ("train", "val", "test") else "test"
        consumed.update((label, photo))
        items.append(DownstreamItem(photo, "parsing", target, split))

    def reason(path: Path) -> str:
        if path.parent.name == "landmarks":
            return "landmarks: the lapa_landmarks reader reads them"
        if path.parent.name == "images":
            return "photo without a label map"
        return "not part of LaPa's layout (<split>/images, <split>/labels)"

    return finish(root, items, rejected, consumed, reason)


def merge_part_masks(masks: dict[str, Path]) -> np.ndarray:
    """One class map ``(512, 512)`` uint8 from ``part -> mask PNG`` (white = part), later classes on top."""
    merged: np.ndarray | None = None
    for class_id, part in enumerate(CELEBAMASK_HQ_CLASSES):
        if part not in masks:
            continue
        with Image.open(masks[part]) as image:
            mask = np.asarray(image.convert("L")) > 127
        if merged is None:
            merged = np.zeros(mask.shape, dtype=np.uint8)
        if mask.shape != merged.shape:
            raise ValueError(f"{masks[part]}: a {mask.shape} mask among {merged.shape} ones")
        merged[mask] = class_id
    if merged is None:
        raise ValueError("no part masks to merge")
    return merged


def scan_celebamask_hq(root: Path) -> DatasetScan:
    """CelebAMask-HQ under ``root`` (the folder holding ``CelebA-HQ-img/``, ``CelebAMask-HQ-mask-anno/`` and the
    mapping file)."""
    root = require_dir(root)
    photos, masks_root = find_one_dir(root, "CelebA-HQ-img"), find_one_dir(root, "CelebAMask-HQ-mask-anno")
    mapping_file = find_one(root, "CelebA-HQ-to-CelebA-mapping.txt")
    if photos is None or masks_root is None or mapping_file is None:
        raise FileNotFoundError(
            f"{root}: CelebAMask-HQ needs CelebA-HQ-img/, CelebAMask-HQ-mask-anno/, CelebA-HQ-to-CelebA-mapping.txt"
        )
    lines = mapping_file.read_text().splitlines()
    if not lines or lines[0].split() != ["idx", "orig_idx", "orig_file"]:
        raise malformed(mapping_file, 1, "expected the header 'idx orig_idx orig_file'")
    split_of: dict[int, str] = {}
    for number, line in enumerate(lines[1:], start=2):
        fields = line.split()
        if len(fields) != 3 or not fields[0].isdigit() or not fields[1].isdigit():
            raise malformed(mapping_file, number, f"expected 'idx orig_idx orig_file', got {line!r}")
        split_of[int(fields[0])] = celeba_split(int(fields[1]) + 1)  # orig_idx is 0-based
    rejected: list[Rejected] = []
    parts_of: dict[int, dict[str, Path]] = {}
    for mask in sorted(masks_root.rglob("*.png")):
        match = _MASK_NAME.fullmatch(mask.name)
        if not match or match.group(2) not in CELEBAMASK_HQ_CLASSES[1:]:
            rejected.append(Rejected(mask, "not a <id>_<part>.png mask of a known part"))
        elif mask.parent.name != str(int(match.group(1)) // MASKS_PER_FOLDER):
            rejected.append(
                Rejected(mask, f"in folder {mask.parent.name}, not {int(match.group(1)) // MASKS_PER_FOLDER}")
            )
        else:
            parts_of.setdefault(int(match.group(1)), {})[match.group(2)] = mask
    items: list[DownstreamItem] = []
    consumed = {mapping_file}
    for index, parts in progress(sorted(parts_of.items()), "celebamask_hq"):
        photo = photos / f"{index}.jpg"
        if not photo.is_file() or index not in split_of:
            why = "no photo" if not photo.is_file() else "no row in CelebA-HQ-to-CelebA-mapping.txt"
            rejected.extend(Rejected(mask, f"mask of image {index}: {why}") for mask in parts.values())
            continue
        consumed.add(photo)
        consumed.update(parts.values())
        items.append(DownstreamItem(photo, "parsing", merge_part_masks(parts), split_of[index]))

    def reason(path: Path) -> str:
        if photos in path.parents:
            return "photo without part masks"
        return "not part of CelebAMask-HQ's parsing layout (photos, part masks, mapping)"

    return finish(root, items, rejected, consumed, reason)


PARSING_READERS = (
    DatasetReader("lapa", "parsing", LAPA_CLASSES, scan_lapa),
    DatasetReader("celebamask_hq", "parsing", CELEBAMASK_HQ_CLASSES, scan_celebamask_hq),
)
