"""Attribute readers: CelebA and LFWA, 40 binary attributes (CelebA's names and order) as int8 {0, 1}.

- CelebA: ``list_attr_celeba.txt`` (a count line, the 40-name header line, then ``<name> ±1 x40`` rows; -1 is 0),
  ``list_eval_partition.txt`` (``<name> 0|1|2``: train / val / test) and the photos in ``img_align_celeba/``
  (read when there) or ``img_celeba/`` (the wild photos, with ``list_bbox_celeba.txt``'s ``x_1 y_1 width height``
  as the box when present). Without the partition file the split follows CelebA's published contiguous
  partition: 000001-162770 train, 162771-182637 val, the rest test. Identity and landmark files are rejected.
- LFWA: the release of the CelebA authors: ``lfw_att_40.mat`` (``name``: N image paths relative to the LFW folder,
  Windows separators allowed; ``label``: (N, 40) {0, 1} in CelebA's attribute order; ``AttrName``) and
  ``indices_train_test.mat`` (``indices_img_train`` / ``indices_img_test``: 1-based rows of ``label``), photos under
  a ``lfw/`` folder. Both are read with scipy, so as MATLAB v5/v7 files (a v7.3 copy is one clear error: re-save
  it as v7); a row in neither index list is rejected.
"""

from __future__ import annotations

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
    require_dir,
)

CELEBA_ATTRIBUTES = (
    "5_o_Clock_Shadow", "Arched_Eyebrows", "Attractive", "Bags_Under_Eyes", "Bald", "Bangs", "Big_Lips", "Big_Nose",
    "Black_Hair", "Blond_Hair", "Blurry", "Brown_Hair", "Bushy_Eyebrows", "Chubby", "Double_Chin", "Eyeglasses",
    "Goatee", "Gray_Hair", "Heavy_Makeup", "High_Cheekbones", "Male", "Mouth_Slightly_Open", "Mustache",
    "Narrow_Eyes", "No_Beard", "Oval_Face", "Pale_Skin", "Pointy_Nose", "Receding_Hairline", "Rosy_Cheeks",
    "Sideburns", "Smiling", "Straight_Hair", "Wavy_Hair", "Wearing_Earrings", "Wearing_Hat", "Wearing_Lipstick",
    "Wearing_Necklace", "Wearing_Necktie", "Young",
)  # fmt: skip


CELEBA_PARTITION = {"0": "train", "1": "val", "2": "test"}
CELEBA_PARTITION_ENDS = ((162770, "train"), (182637, "val"))  # the last image number of each, then test


def celeba_split(number: int) -> str:
    """The split of CelebA image ``number`` (1-based) by CelebA's published contiguous partition."""
    return next((split for end, split in CELEBA_PARTITION_ENDS if number <= end), "test")


def _name_table(path: Path | None, width: int, skip: int) -> dict[str, tuple[int, list[str]]]:
    """``name -> (line, fields)`` of a whitespace table after ``skip`` header lines, each row ``width`` fields."""
    if path is None:
        return {}
    table = {}
    for number, line in enumerate(path.read_text().splitlines()[skip:], start=skip + 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != width:
            raise malformed(path, number, f"expected {width} fields, got {len(fields)}")
        table[fields[0]] = (number, fields[1:])
    return table


def read_celeba_attributes(path: Path) -> dict[str, tuple[int, np.ndarray]]:
    """``name -> (line, (40,) int8 {0, 1})`` of ``list_attr_celeba.txt`` (count line, header line, ±1 rows)."""
    lines = path.read_text().splitlines()
    if len(lines) < 2 or not lines[0].strip().isdigit():
        raise malformed(path, 1, "expected the image count on the first line")
    if tuple(lines[1].split()) != CELEBA_ATTRIBUTES:
        raise malformed(path, 2, "expected CelebA's 40 attribute names on the second line")
    rows = _name_table(path, 1 + len(CELEBA_ATTRIBUTES), skip=2)
    if len(rows) != int(lines[0]):
        raise malformed(path, 1, f"the count line says {lines[0].strip()} images, the file has {len(rows)} rows")
    attributes = {}
    for name, (number, fields) in rows.items():
        if any(value not in ("1", "-1") for value in fields):
            raise malformed(path, number, "attribute values must be 1 or -1")
        attributes[name] = (number, (np.array(fields, dtype=np.int8) > 0).astype(np.int8))
    return attributes


def scan_celeba(root: Path) -> DatasetScan:
    """CelebA under ``root`` (the folder holding ``Anno/``, ``Eval/`` and ``Img/``)."""
    root = require_dir(root)
    attribute_file = find_one(root, "list_attr_celeba.txt")
    if attribute_file is None:
        raise FileNotFoundError(f"{root}: CelebA needs Anno/list_attr_celeba.txt")
    partition_file = find_one(root, "list_eval_partition.txt")
    partition = _name_table(partition_file, 2, skip=0)
    for name, (number, (value,)) in partition.items():
        if value not in CELEBA_PARTITION:
            raise malformed(partition_file, number, f"partition {value!r} of {name} is not 0, 1 or 2")
    folders = [
        folder for folder in (find_one_dir(root, "img_align_celeba"), find_one_dir(root, "img_celeba")) if folder
    ]
    if not folders:
        raise FileNotFoundError(f"{root}: CelebA needs Img/img_align_celeba/ or Img/img_celeba/")
    photos = folders[0]
    box_file = find_one(root, "list_bbox_celeba.txt") if photos.name == "img_celeba" else None
    boxes = _name_table(box_file, 5, skip=2)
    items: list[DownstreamItem] = []
    rejected: list[Rejected] = []
    consumed = {path for path in (attribute_file, partition_file, box_file) if path}
    for name, (number, target) in read_celeba_attributes(attribute_file).items():
        photo = photos / name
        if not photo.is_file():
            rejected.append(Rejected(attribute_file, f"photo {name} is missing", number))
            continue
        if partition_file is not None and name not in partition:
            rejected.append(Rejected(attribute_file, f"{name} is not in list_eval_partition.txt", number))
            continue
        split = CELEBA_PARTITION[partition[name][1][0]] if partition_file else celeba_split(int(Path(name).stem))
        box = None
        if name in boxes:
            x, y, width, height = (float(value) for value in boxes[name][1])
            box = np.array([x, y, x + width, y + height], dtype=np.float32)
        consumed.add(photo)
        items.append(DownstreamItem(photo, "attributes", target, split, box=box))

    def reason(path: Path) -> str:
        if photos in path.parents:
            return "photo without a row in list_attr_celeba.txt"
        if len(folders) == 2 and folders[1] in path.parents:
            return "wild photo: the aligned photos are read"
        if path.name.startswith(("identity_", "list_landmarks_", "list_bbox_")):
            return "CelebA annotation not used by the attribute task"
        return "not part of CelebA's layout"

    return finish(root, items, rejected, consumed, reason)


def _mat_strings(values: np.ndarray) -> list[str]:
    """The strings of a MATLAB cell array as scipy reads it."""
    return [str(np.asarray(value).ravel()[0]) if np.asarray(value).size else "" for value in values.ravel()]


def scan_lfwa(root: Path) -> DatasetScan:
    """LFWA under ``root``: ``lfw_att_40.mat``, ``indices_train_test.mat`` and the ``lfw/`` photos."""
    root = require_dir(root)
    attribute_file, index_file = find_one(root, "lfw_att_40.mat"), find_one(root, "indices_train_test.mat")
    photos = find_one_dir(root, "lfw")
    if attribute_file is None or index_file is None or photos is None:
        raise FileNotFoundError(f"{root}: LFWA needs lfw_att_40.mat, indices_train_test.mat and the lfw/ folder")
    attributes, indices = load_mat(attribute_file), load_mat(index_file)
    for path, mat, keys in (
        (attribute_file, attributes, ("name", "label")),
        (index_file, indices, ("indices_img_train", "indices_img_test")),
    ):
        if missing := [key for key in keys if key not in mat]:
            raise malformed(path, 1, f"no {', '.join(missing)} variable")
    names, labels = _mat_strings(attributes["name"]), np.asarray(attributes["label"])
    if labels.shape != (len(names), len(CELEBA_ATTRIBUTES)) or not np.isin(labels, (0, 1)).all():
        raise malformed(attribute_file, 1, f"label must be ({len(names)}, 40) of 0/1, got {labels.shape}")
    split_of: dict[int, str] = {}
    for split in ("train", "test"):
        for index in np.asarray(indices[f"indices_img_{split}"]).ravel().astype(int):
            if not 1 <= index <= len(names) or index - 1 in split_of:
                raise malformed(index_file, 1, f"indices_img_{split} holds {index}: out of 1..{len(names)} or repeated")
            split_of[index - 1] = split
    items: list[DownstreamItem] = []
    rejected: list[Rejected] = []
    consumed = {attribute_file, index_file}
    for row, name in enumerate(names):
        photo = photos / name.replace("\\", "/")
        if row not in split_of:
            rejected.append(Rejected(attribute_file, f"{name} is in neither index list", row + 1))
        elif not photo.is_file():
            rejected.append(Rejected(attribute_file, f"photo {name} is missing", row + 1))
        else:
            consumed.add(photo)
            target = labels[row].astype(np.int8)
            items.append(DownstreamItem(photo, "attributes", target, split_of[row]))

    def reason(path: Path) -> str:
        return "photo without a row in lfw_att_40.mat" if photos in path.parents else "not part of LFWA's layout"

    return finish(root, items, rejected, consumed, reason)


ATTRIBUTE_READERS = (
    DatasetReader("celeba", "attributes", CELEBA_ATTRIBUTES, scan_celeba),
    DatasetReader("lfwa", "attributes", CELEBA_ATTRIBUTES, scan_lfwa),
)
