"""The expression readers on fixtures in RAF-DB's, FERPlus's and AffectNet's published layouts (real photos)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from facekit.data.downstream import READERS, DatasetScan

Reconciles = Callable[[Path, DatasetScan, int], None]

WritePhoto = Callable[[Path, int], Path]


@pytest.fixture
def rafdb(tmp_path: Path, write_photo: WritePhoto) -> Path:
    root = tmp_path / "basic"
    (root / "EmoLabel").mkdir(parents=True)
    (root / "EmoLabel" / "list_patition_label.txt").write_text(
        "train_00001.jpg 1\ntrain_00002.jpg 7\ntest_0001.jpg 4\ntest_0002.jpg 5\n"
    )
    for index, stem in enumerate(("train_00001", "train_00002", "test_0001", "test_0003")):
        write_photo(root / "Image" / "aligned" / f"{stem}_aligned.jpg", index)
    write_photo(root / "Image" / "original" / "train_00001.jpg", 0)
    (root / "Annotation" / "boundingbox").mkdir(parents=True)
    (root / "Annotation" / "boundingbox" / "train_00001_boundingbox.txt").write_text("1 2 30 31\n")
    return root


def test_rafdb_labels_are_zero_based_and_the_prefix_is_the_split(rafdb: Path, reconciles: Reconciles) -> None:
    scan = READERS["rafdb"].scan(rafdb)
    got = [(item.image.name, int(item.target), item.split) for item in scan.items]
    assert got == [
        ("train_00001_aligned.jpg", 0, "train"),  # 1 surprise
        ("train_00002_aligned.jpg", 6, "train"),  # 7 neutral
        ("test_0001_aligned.jpg", 3, "test"),  # 4 happiness
    ]
    assert READERS["rafdb"].classes[0] == "surprise" and READERS["rafdb"].classes[6] == "neutral"
    assert all(item.target.dtype == np.int64 and item.target.shape == () for item in scan.items)
    reasons = {(entry.path.name, entry.line): entry.reason for entry in scan.rejected}
    assert reasons[("list_patition_label.txt", 4)] == "aligned photo test_0002_aligned.jpg is missing"
    assert reasons[("test_0003_aligned.jpg", None)].startswith("aligned photo without a line")
    assert reasons[("train_00001.jpg", None)].startswith("original photo")
    assert reasons[("train_00001_boundingbox.txt", None)].startswith("RAF-DB annotation")
    reconciles(rafdb, scan, rows=4)


def test_rafdb_label_outside_1_to_7_names_the_file_and_line(rafdb: Path) -> None:
    labels = rafdb / "EmoLabel" / "list_patition_label.txt"
    labels.write_text("train_00001.jpg 1\ntrain_00002.jpg 0\n")
    with pytest.raises(ValueError, match=r"list_patition_label.txt:2: expected"):
        READERS["rafdb"].read(rafdb)


VOTE_HEADER = "Usage,Image name,neutral,happiness,surprise,sadness,anger,disgust,fear,contempt,unknown,NF"


@pytest.fixture
def ferplus(tmp_path: Path, real_photos: list[Path]) -> Path:
    """Six FER2013 rows of real photos (48 px grey) and FERPlus vote rows of each kind."""
    pixels = []
    for photo in real_photos[:6]:
        with Image.open(photo) as image:
            pixels.append(" ".join(map(str, np.asarray(image.convert("L").resize((48, 48))).ravel())))
    usages = ("Training", "PublicTest", "PrivateTest", "Training", "Training", "PublicTest")
    (tmp_path / "fer2013.csv").write_text(
        "emotion,pixels,Usage\n" + "".join(f"3,{p},{u}\n" for p, u in zip(pixels, usages, strict=True))
    )
    (tmp_path / "fer2013new.csv").write_text(
        f"{VOTE_HEADER}\n"
        "Training,fer0000000.png,0,8,1,0,0,1,0,0,0,0\n"  # happiness
        "PublicTest,fer0000001.png,0,0,5,5,0,0,0,0,0,0\n"  # a tie: no majority
        "PrivateTest,fer0000002.png,0,0,0,0,0,0,0,0,0,10\n"  # not a face
        "Training,,4,0,0,0,0,0,0,0,0,0\n"  # FERPlus dropped the photo
        "Training,fer0000004.png,1,1,1,1,3,0,0,0,0,0\n"  # anger once the single votes are dropped
        "PublicTest,fer0000005.png,0,0,6,0,0,0,2,0,0,0\n"  # surprise
    )
    return tmp_path


def test_ferplus_majority_vote_and_the_photos_it_writes(ferplus: Path, reconciles: Reconciles) -> None:
    scan = READERS["ferplus"].scan(ferplus)
    got = [(item.image.relative_to(ferplus).as_posix(), int(item.target), item.split) for item in scan.items]
    assert got == [
        ("FER2013Train/fer0000000.png", 1, "train"),
        ("FER2013Train/fer0000004.png", 4, "train"),
        ("FER2013Valid/fer0000005.png", 2, "val"),
    ]
    pixels = (ferplus / "fer2013.csv").read_text().splitlines()[1].split(",")[1]
    written = np.asarray(Image.open(scan.items[0].image))
    np.testing.assert_array_equal(written, np.array(pixels.split(), dtype=np.uint8).reshape(48, 48))
    assert [(entry.line, entry.reason) for entry in scan.rejected] == [
        (3, "no majority among the votes"),
        (4, "majority vote is NF"),
        (5, "no image name: FERPlus dropped this photo"),
    ]
    reconciles(ferplus, scan, rows=6)
    assert len(READERS["ferplus"].scan(ferplus).items) == 3  # a second scan reads the photos already written


def test_ferplus_rows_out_of_step_name_the_file(ferplus: Path) -> None:
    votes = ferplus / "fer2013new.csv"
    votes.write_text(votes.read_text().replace("PublicTest,fer0000001", "Training,fer0000001"))
    with pytest.raises(ValueError, match=r"fer2013new.csv:3: Usage 'Training'"):
        READERS["ferplus"].read(ferplus)


AFFECTNET_HEADER = (
    "subDirectory_filePath,face_x,face_y,face_width,face_height,facial_landmarks,expression,valence,arousal"
)


@pytest.fixture
def affectnet(tmp_path: Path, write_photo: WritePhoto) -> Path:
    lists = tmp_path / "Manually_Annotated_file_lists"
    lists.mkdir()
    (lists / "training.csv").write_text(
        f"{AFFECTNET_HEADER}\n"
        "1/a.jpg,4,5,20,22,1.0;2.0,1,0.7,0.2\n"
        "1/b.jpg,0,0,32,32,,7,-0.1,0.3\n"
        "2/c.jpg,0,0,32,32,,9,-2,-2\n"
        "2/missing.jpg,0,0,32,32,,0,0.0,0.0\n"
    )
    (lists / "validation.csv").write_text(f"{AFFECTNET_HEADER}\n3/d.jpg,1,2,10,12,,6,-0.5,0.6\n")
    for index, name in enumerate(("1/a.jpg", "1/b.jpg", "2/c.jpg", "3/d.jpg")):
        write_photo(tmp_path / "Manually_Annotated" / "Manually_Annotated_Images" / name, index)
    return tmp_path


def test_affectnet_eight_and_seven_classes(affectnet: Path, reconciles: Reconciles) -> None:
    scan = READERS["affectnet"].scan(affectnet)
    got = [(item.image.name, int(item.target), item.split) for item in scan.items]
    assert got == [("a.jpg", 1, "train"), ("b.jpg", 7, "train"), ("d.jpg", 6, "test")]
    np.testing.assert_array_equal(scan.items[0].box, [4, 5, 24, 27])
    assert [(entry.line, entry.reason) for entry in scan.rejected if entry.line] == [
        (4, "expression 9 (uncertain)"),
        (5, "photo 2/missing.jpg is missing"),
    ]
    reconciles(affectnet, scan, rows=5)
    assert scan.summary() == "3 items (train 2, test 1); rejected: files 1, rows 2"
    seven = READERS["affectnet7"].scan(affectnet)
    assert [item.image.name for item in seven.items] == ["a.jpg", "d.jpg"]
    assert READERS["affectnet7"].classes == READERS["affectnet"].classes[:7]
    assert (3, "expression 7 is outside the 7 classes") in [(e.line, e.reason) for e in seven.rejected]
    reconciles(affectnet, seven, rows=5)


def test_affectnet_expression_outside_0_to_10_names_the_line(affectnet: Path) -> None:
    table = affectnet / "Manually_Annotated_file_lists" / "validation.csv"
    table.write_text(table.read_text().replace(",6,-0.5,", ",11,-0.5,"))
    with pytest.raises(ValueError, match=r"validation.csv:2: expression 11 is not one of 0-10"):
        READERS["affectnet"].read(affectnet)
