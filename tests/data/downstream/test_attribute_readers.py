"""The attribute readers: CelebA on the real rows of the assets and on a fixture of its full layout; LFWA on a
fixture of its published .mat files (real photos)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import scipy.io

from facekit.data.downstream import READERS, DatasetScan
from facekit.data.downstream.attributes import CELEBA_ATTRIBUTES, celeba_split

WritePhoto = Callable[[Path, int], Path]
Reconciles = Callable[[Path, DatasetScan, int], None]


def _ones(target: np.ndarray) -> list[str]:
    return [CELEBA_ATTRIBUTES[index] for index in np.flatnonzero(target)]


def test_celeba_real_rows(downstream: Path, reconciles: Reconciles) -> None:
    root = downstream / "celeba"
    scan = READERS["celeba"].scan(root)
    assert [item.image.name for item in scan.items] == [
        "000093.jpg", "000114.jpg", "000131.jpg", "000149.jpg", "000176.jpg", "000180.jpg", "000207.jpg",
    ]  # fmt: skip
    first = scan.items[0]
    assert first.target.dtype == np.int8 and first.target.shape == (40,)
    # 000093.jpg: -1 -1 -1 -1 -1 1 1 -1 ... (+1 at columns 6, 7, 16, 25, 33, 38, 40)
    assert _ones(first.target) == [
        "Bangs", "Big_Lips", "Eyeglasses", "No_Beard", "Straight_Hair", "Wearing_Necklace", "Young",
    ]  # fmt: skip
    assert {item.split for item in scan.items} == {"train"}  # no partition file: images 1-162770 are train
    assert [(entry.path.name, entry.reason) for entry in scan.rejected] == [
        ("identity_CelebA.txt", "CelebA annotation not used by the attribute task")
    ]
    reconciles(root, scan, rows=7)


def test_celeba_published_partition_ranges() -> None:
    assert [celeba_split(n) for n in (1, 162770, 162771, 182637, 182638, 202599)] == [
        "train", "train", "val", "val", "test", "test",
    ]  # fmt: skip


@pytest.fixture
def celeba(tmp_path: Path, downstream: Path, write_photo: WritePhoto) -> Path:
    """The full layout: three real attribute rows, the partition file, aligned and wild photos, boxes."""
    _count, header, *rows = (downstream / "celeba" / "Anno" / "list_attr_celeba.txt").read_text().splitlines()
    (tmp_path / "Anno").mkdir()
    text = "\r\n".join(["3", header, *rows[:3]]) + "\r\n"  # CelebA's release ends its lines with CRLF
    (tmp_path / "Anno" / "list_attr_celeba.txt").write_bytes(text.encode())
    (tmp_path / "Anno" / "list_bbox_celeba.txt").write_text(
        "3\nimage_id x_1 y_1 width height\n000093.jpg 95 71 226 313\n000114.jpg 1 2 3 4\n000131.jpg 5 6 7 8\n"
    )
    (tmp_path / "Eval").mkdir()
    (tmp_path / "Eval" / "list_eval_partition.txt").write_text("000093.jpg 0\n000114.jpg 1\n000131.jpg 2\n")
    for index, name in enumerate(("000093.jpg", "000114.jpg")):
        write_photo(tmp_path / "Img" / "img_align_celeba" / name, index)
        write_photo(tmp_path / "Img" / "img_celeba" / name, index)
    return tmp_path


def test_celeba_partition_file_and_aligned_photos(celeba: Path, reconciles: Reconciles) -> None:
    scan = READERS["celeba"].scan(celeba)
    assert [(item.image.parent.name, item.image.name, item.split) for item in scan.items] == [
        ("img_align_celeba", "000093.jpg", "train"),
        ("img_align_celeba", "000114.jpg", "val"),
    ]
    assert all(item.box is None for item in scan.items)  # the boxes are the wild photos'
    reasons = {(entry.path.name, entry.line): entry.reason for entry in scan.rejected}
    assert reasons[("list_attr_celeba.txt", 5)] == "photo 000131.jpg is missing"
    assert reasons[("000093.jpg", None)] == "wild photo: the aligned photos are read"
    reconciles(celeba, scan, rows=3)


def test_celeba_wild_photos_take_the_box_file(celeba: Path) -> None:
    for photo in (celeba / "Img" / "img_align_celeba").iterdir():
        photo.unlink()
    (celeba / "Img" / "img_align_celeba").rmdir()
    first = READERS["celeba"].read(celeba)[0]
    assert first.image.parent.name == "img_celeba"
    np.testing.assert_array_equal(first.box, [95, 71, 321, 384])  # x_1 y_1 width height -> x0 y0 x1 y1


@pytest.mark.parametrize(
    ("edit", "where"),
    [
        (lambda text: text.replace("3\n", "4\n", 1), "list_attr_celeba.txt:1: the count line"),
        (lambda text: text.replace("000114.jpg -1", "000114.jpg  0", 1), "list_attr_celeba.txt:4: attribute values"),
        (lambda text: text.replace("5_o_Clock_Shadow", "Shadow", 1), "list_attr_celeba.txt:2: expected CelebA"),
    ],
)
def test_celeba_malformed_attribute_file_names_the_line(celeba: Path, edit: Callable[[str], str], where: str) -> None:
    path = celeba / "Anno" / "list_attr_celeba.txt"
    path.write_text(edit(path.read_text()))
    with pytest.raises(ValueError, match=where):
        READERS["celeba"].read(celeba)


@pytest.fixture
def lfwa(tmp_path: Path, write_photo: WritePhoto) -> Path:
    names = ["Aaron_Eckhart\\Aaron_Eckhart_0001.jpg", "Zico/Zico_0001.jpg", "Zico/Zico_0002.jpg", "Ann/Ann_0001.jpg"]
    labels = np.zeros((4, 40), dtype=np.float64)
    labels[0, [5, 20]] = 1  # Bangs, Male
    labels[2, 39] = 1  # Young
    scipy.io.savemat(
        tmp_path / "lfw_att_40.mat",
        {"name": np.array(names, dtype=object)[:, None], "label": labels, "AttrName": np.array(CELEBA_ATTRIBUTES)},
    )
    scipy.io.savemat(
        tmp_path / "indices_train_test.mat",
        {"indices_img_train": np.array([[1, 4]]), "indices_img_test": np.array([[3]])},
    )
    for index, name in enumerate(names[:3]):
        write_photo(tmp_path / "lfw" / name.replace("\\", "/"), index)
    return tmp_path


def test_lfwa_rows_indices_and_photos(lfwa: Path, reconciles: Reconciles) -> None:
    scan = READERS["lfwa"].scan(lfwa)
    got = [(item.image.name, _ones(item.target), item.split) for item in scan.items]
    assert got == [("Aaron_Eckhart_0001.jpg", ["Bangs", "Male"], "train"), ("Zico_0002.jpg", ["Young"], "test")]
    assert scan.items[0].target.dtype == np.int8
    assert [(entry.line, entry.reason) for entry in scan.rejected] == [
        (2, "Zico/Zico_0001.jpg is in neither index list"),
        (4, "photo Ann/Ann_0001.jpg is missing"),
        (None, "photo without a row in lfw_att_40.mat"),
    ]
    reconciles(lfwa, scan, rows=4)


def test_lfwa_hdf5_mat_is_one_clear_error(lfwa: Path) -> None:
    header = b"MATLAB 7.3 MAT-file, Platform: GLNXA64".ljust(116) + bytes(8) + b"\x00\x02IM"  # v7.3's header
    (lfwa / "lfw_att_40.mat").write_bytes(header + bytes(512))
    with pytest.raises(ValueError, match=r"lfw_att_40.mat: a MATLAB v7.3 \(HDF5\) file"):
        READERS["lfwa"].read(lfwa)
