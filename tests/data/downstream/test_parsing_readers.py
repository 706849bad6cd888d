"""The parsing readers on fixtures of LaPa's and CelebAMask-HQ's published layouts (real photos, drawn label maps)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from facekit.data.downstream import READERS, DatasetScan

WritePhoto = Callable[[Path, int], Path]
Reconciles = Callable[[Path, DatasetScan, int], None]


def _save(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array.astype(np.uint8)).save(path)
    return path


def _lapa_label(hair_rows: int) -> np.ndarray:
    label = np.zeros((32, 32), dtype=np.uint8)
    label[8:28, 6:26] = 1  # skin
    label[14:16, 10:14] = 4  # left eye
    label[:hair_rows] = 10  # hair
    return label


@pytest.fixture
def lapa(tmp_path: Path, write_photo: WritePhoto) -> Path:
    root = tmp_path / "LaPa"
    write_photo(root / "train" / "images" / "a.jpg", 0)
    _save(root / "train" / "labels" / "a.png", _lapa_label(4))
    (root / "train" / "landmarks").mkdir()
    (root / "train" / "landmarks" / "a.txt").write_text("106\n")
    write_photo(root / "val" / "images" / "b.jpg", 1)
    _save(root / "val" / "labels" / "b.png", _lapa_label(6))
    _save(root / "test" / "labels" / "c.png", _lapa_label(2))
    write_photo(root / "test" / "images" / "d.jpg", 2)
    return root


def test_lapa_label_maps(lapa: Path, reconciles: Reconciles) -> None:
    scan = READERS["lapa"].scan(lapa)
    assert [(item.image.name, item.split) for item in scan.items] == [("a.jpg", "train"), ("b.jpg", "val")]
    first = scan.items[0].target
    assert first.dtype == np.uint8 and first.shape == (32, 32)
    np.testing.assert_array_equal(first, _lapa_label(4))
    assert READERS["lapa"].classes[10] == "hair" and len(READERS["lapa"].classes) == 11
    assert sorted((entry.path.name, entry.reason) for entry in scan.rejected) == [
        ("a.txt", "landmarks: the lapa_landmarks reader reads them"),
        ("c.png", "photo images/c.jpg is missing"),
        ("d.jpg", "photo without a label map"),
    ]
    reconciles(lapa, scan, rows=2)


def test_lapa_label_outside_the_classes_or_size_names_the_file(lapa: Path) -> None:
    label = _lapa_label(4)
    label[0, 0] = 11
    _save(lapa / "val" / "labels" / "b.png", label)
    with pytest.raises(ValueError, match=r"b.png: class id 11 is outside 0-10"):
        READERS["lapa"].read(lapa)
    _save(lapa / "val" / "labels" / "b.png", np.zeros((16, 32)))
    with pytest.raises(ValueError, match=r"b.png: a L \(32, 16\) map for a \(32, 32\) photo"):
        READERS["lapa"].read(lapa)


def _mask(*cells: tuple[slice, slice]) -> np.ndarray:
    mask = np.zeros((8, 8), dtype=np.uint8)
    for rows, cols in cells:
        mask[rows, cols] = 255
    return mask


@pytest.fixture
def celebamask_hq(tmp_path: Path, write_photo: WritePhoto) -> Path:
    root = tmp_path / "CelebAMask-HQ"
    for index, number in enumerate((0, 1, 2005)):
        write_photo(root / "CelebA-HQ-img" / f"{number}.jpg", index)
    write_photo(root / "CelebA-HQ-img" / "7.jpg", 3)
    masks = root / "CelebAMask-HQ-mask-anno"
    _save(masks / "0" / "00000_skin.png", _mask((slice(1, 7), slice(1, 7))))
    _save(masks / "0" / "00000_l_eye.png", _mask((slice(2, 3), slice(2, 3))))
    _save(masks / "0" / "00000_hair.png", _mask((slice(0, 2), slice(None))))
    _save(masks / "0" / "00000_hat.png", _mask((slice(0, 1), slice(None))))
    _save(masks / "0" / "00000_glasses.png", _mask((slice(0, 1), slice(None))))  # not a CelebAMask-HQ part
    _save(masks / "0" / "00001_skin.png", _mask((slice(3, 5), slice(3, 5))))
    _save(masks / "1" / "02005_nose.png", _mask((slice(4, 5), slice(4, 5))))
    _save(masks / "0" / "02005_skin.png", _mask((slice(4, 5), slice(4, 5))))  # in the wrong folder
    _save(masks / "0" / "00003_skin.png", _mask((slice(4, 5), slice(4, 5))))  # no photo 3.jpg
    (root / "CelebA-HQ-to-CelebA-mapping.txt").write_text(
        "idx         orig_idx        orig_file\n0 162769 162770.jpg\n1 162770 162771.jpg\n"
        "3 10 11.jpg\n7 1 2.jpg\n2005 190000 190001.jpg\n"
    )
    (root / "CelebAMask-HQ-pose-anno.txt").write_text("2\nYaw Pitch Raw\n")
    return root


def test_celebamask_hq_merges_part_masks(celebamask_hq: Path, reconciles: Reconciles) -> None:
    scan = READERS["celebamask_hq"].scan(celebamask_hq)
    assert [(item.image.name, item.split) for item in scan.items] == [
        ("0.jpg", "train"),  # orig_idx 162769: CelebA image 162770, the last of train
        ("1.jpg", "val"),  # CelebA image 162771, the first of val
        ("2005.jpg", "test"),  # CelebA image 190001
    ]
    classes = READERS["celebamask_hq"].classes
    skin, l_eye, hair, hat = (classes.index(part) for part in ("skin", "l_eye", "hair", "hat"))
    expected = np.zeros((8, 8), dtype=np.uint8)
    expected[1:7, 1:7] = skin
    expected[2, 2] = l_eye
    expected[:2] = hair  # hair over skin
    expected[0] = hat  # hat over hair
    target = scan.items[0].target
    assert target.dtype == np.uint8 and target.shape == (8, 8)
    np.testing.assert_array_equal(target, expected)
    assert scan.items[2].target[4, 4] == classes.index("nose") and len(classes) == 19
    assert sorted((entry.path.name, entry.reason) for entry in scan.rejected) == [
        ("00000_glasses.png", "not a <id>_<part>.png mask of a known part"),
        ("00003_skin.png", "mask of image 3: no photo"),
        ("02005_skin.png", "in folder 0, not 1"),
        ("7.jpg", "photo without part masks"),
        ("CelebAMask-HQ-pose-anno.txt", "not part of CelebAMask-HQ's parsing layout (photos, part masks, mapping)"),
    ]
    reconciles(celebamask_hq, scan, rows=3)


def test_celebamask_hq_malformed_mapping_names_the_line(celebamask_hq: Path) -> None:
    mapping = celebamask_hq / "CelebA-HQ-to-CelebA-mapping.txt"
    mapping.write_text(mapping.read_text().replace("1 162770 162771.jpg", "1 x 162771.jpg"))
    with pytest.raises(ValueError, match=r"CelebA-HQ-to-CelebA-mapping.txt:3: expected"):
        READERS["celebamask_hq"].read(celebamask_hq)
