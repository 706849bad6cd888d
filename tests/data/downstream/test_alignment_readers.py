"""The landmark readers: 300-VW's real .pts, the real converted jsons, and fixtures of the published 300W, WFLW,
AFLW-19 and LaPa layouts built from the real annotations and photos."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import scipy.io

from facekit.data.downstream import READERS, DatasetScan
from facekit.data.downstream.alignment import read_pts

WritePhoto = Callable[[Path, int], Path]
Reconciles = Callable[[Path, DatasetScan, int], None]


@pytest.fixture(scope="module")
def converted(downstream: Path) -> Path:
    return downstream / "mmpose_tests_data"


def _keypoints(converted: Path, folder: str, index: int = 0) -> np.ndarray:
    """(K, 2) points of annotation ``index`` of a converted json."""
    table = json.loads(next((converted / folder).glob("*.json")).read_text())
    return np.asarray(table["annotations"][index]["keypoints"], dtype=np.float64).reshape(-1, 3)[:, :2]


def test_300vw_real_pts(converted: Path, reconciles: Reconciles) -> None:
    root = converted / "300vw"
    scan = READERS["300vw"].scan(root)
    names = [(item.image.relative_to(root).as_posix(), item.split) for item in scan.items]
    assert names == [
        ("001/imgs/000006.jpg", "train"),
        ("001/imgs/000009.jpg", "train"),
        ("401/imgs/000731.jpg", "test"),  # video 401: test category 1
        ("401/imgs/000732.jpg", "test"),
    ]
    first = scan.items[0].target
    assert first.dtype == np.float32 and first.shape == (68, 2)
    np.testing.assert_allclose(first[0], [743.224, 197.764])  # line 4 of 001/annot/000006.pts
    np.testing.assert_allclose(first[67], [790.094, 256.132])  # line 71
    np.testing.assert_allclose(scan.items[2].target[0], [354.326810, 277.170196])  # 'version: 1.0', CRLF
    assert {entry.path.name: entry.reason for entry in scan.rejected} == {
        "anno_300vw.json": "converted annotations: the published files are read",
        "broken_frames.npy": "not part of 300-VW's layout (annot/*.pts with imgs/*.jpg)",
    }
    reconciles(root, scan, rows=4)


@pytest.mark.parametrize(
    ("edit", "where"),
    [
        (lambda lines: lines.__setitem__(1, "n_points: 67"), ":2: expected 'n_points: 68'"),
        (lambda lines: lines.__setitem__(9, "12.5"), ":10: expected 'x y'"),
        (lambda lines: lines.__setitem__(71, ""), ":72: expected '}'"),
    ],
)
def test_pts_malformed_names_the_line(
    converted: Path, tmp_path: Path, edit: Callable[[list[str]], None], where: str
) -> None:
    lines = (converted / "300vw" / "001" / "annot" / "000006.pts").read_text().splitlines()
    edit(lines)
    path = tmp_path / "bad.pts"
    path.write_text("\n".join(lines))
    with pytest.raises(ValueError, match=f"bad.pts{where}"):
        read_pts(path, 68)


@pytest.mark.parametrize(
    ("name", "folder", "count", "first", "box"),
    [
        ("300w", "300w", 2, [268.0, 398.882], [223.7298, 217.3791, 223.7298 + 531.2424, 217.3791 + 571.4508]),
        (
            "wflw",
            "wflw",
            4,
            [440.696106, 132.732559],
            [432.3053162, 113.7500775, 432.3053162 + 100.6894776, 113.7500775 + 101.074938],
        ),
        ("aflw19", "aflw", 2, [337.28341384863, 205.78904991948002], None),
        ("cofw", "cofw", 2, [46.562534549474826, 120.07575548185008], [38, 102, 143, 282]),
        ("lapa_landmarks", "lapa", 2, [406.0, 644.0], [388, 541, 1040, 1195]),
    ],
)
def test_converted_json_real_items(
    converted: Path, reconciles: Reconciles, name: str, folder: str, count: int, first: list, box: list | None
) -> None:
    scan = READERS[name].scan(converted / folder)
    assert len(scan.items) == count and {item.split for item in scan.items} == {"test"}
    assert scan.items[0].target.shape == (READERS[name].landmarks, 2)
    np.testing.assert_allclose(scan.items[0].target[0], first, rtol=1e-6)
    if box is not None:
        np.testing.assert_allclose(scan.items[0].box, box, rtol=1e-6)
    assert (scan.items[0].visible is not None) == (name == "cofw")
    reconciles(converted / folder, scan, rows=count)


def test_converted_json_annotation_without_its_photo(converted: Path, tmp_path: Path, reconciles: Reconciles) -> None:
    shutil.copy(converted / "cofw" / "test_cofw.json", tmp_path)
    shutil.copy(converted / "cofw" / "001805.jpg", tmp_path)
    (tmp_path / "notes.txt").write_text("kept aside\n")
    scan = READERS["cofw"].scan(tmp_path)
    assert [item.image.name for item in scan.items] == ["001805.jpg"]
    assert [(entry.path.name, entry.line, entry.reason) for entry in scan.rejected] == [
        ("test_cofw.json", 1, "annotation 1766: photo 001766.jpg is missing"),
        ("notes.txt", None, "not named by the converted json"),
    ]
    reconciles(tmp_path, scan, rows=2)


def test_cofw_occlusion_flags(converted: Path) -> None:
    first, second = READERS["cofw"].read(converted / "cofw")
    assert np.flatnonzero(~first.visible).tolist() == [22, 23, 24, 25, 26, 27]  # 001766: the mouth, under the tongue
    assert np.flatnonzero(~second.visible).tolist() == [0, 2, 4, 5, 8, 12, 13, 16, 22]


def _pts(points: np.ndarray) -> str:
    return "version: 1\nn_points: 68\n{\n" + "".join(f"{x} {y}\n" for x, y in points) + "}\n"


def test_300w_published_layout_and_split(
    tmp_path: Path, converted: Path, write_photo: WritePhoto, reconciles: Reconciles
) -> None:
    points = _keypoints(converted, "300w")
    for index, stem in enumerate(("lfpw/trainset/image_0001", "afw/134212_1", "ibug/image_003_1", "lfpw/testset/x")):
        (tmp_path / f"{stem}.pts").parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / f"{stem}.pts").write_text(_pts(points + index))
        if stem != "lfpw/testset/x":
            write_photo(tmp_path / f"{stem}{'.png' if index else '.jpg'}", index)
    shutil.copy(next((converted / "300w").glob("*.json")), tmp_path / "test_300w.json")
    scan = READERS["300w"].scan(tmp_path)
    got = [(item.image.relative_to(tmp_path).as_posix(), item.split) for item in scan.items]
    assert got == [
        ("afw/134212_1.png", "train"),
        ("ibug/image_003_1.png", "test"),
        ("lfpw/trainset/image_0001.jpg", "train"),
    ]
    np.testing.assert_allclose(scan.items[0].target, points + 1)
    assert {entry.path.name: entry.reason for entry in scan.rejected} == {
        "x.pts": "no photo beside it",
        "test_300w.json": "converted annotations: the published files are read",
    }
    reconciles(tmp_path, scan, rows=3)


def test_wflw_published_lines(tmp_path: Path, converted: Path, write_photo: WritePhoto, reconciles: Reconciles) -> None:
    points = _keypoints(converted, "wflw")
    coordinates = " ".join(f"{value:.6f}" for value in points.ravel())
    lists = tmp_path / "WFLW_annotations" / "list_98pt_rect_attr_train_test"
    lists.mkdir(parents=True)
    (lists / "list_98pt_rect_attr_train.txt").write_text(
        f"{coordinates} 432 113 533 215 0 0 0 0 0 1 36--Football/36_Football_ball_36_415.jpg\n"
        f"{coordinates} 10 20 30 40 1 0 0 0 0 0 7--Cheering/missing.jpg\n"
    )
    (lists / "list_98pt_rect_attr_test.txt").write_text(f"{coordinates} 1 2 3 4 0 1 0 0 0 0 7--Cheering/a.jpg\n")
    (tmp_path / "WFLW_annotations" / "list_98pt_test").mkdir()
    (tmp_path / "WFLW_annotations" / "list_98pt_test" / "list_98pt_test_blur.txt").write_text("0 0\n")
    write_photo(tmp_path / "WFLW_images" / "36--Football" / "36_Football_ball_36_415.jpg", 0)
    write_photo(tmp_path / "WFLW_images" / "7--Cheering" / "a.jpg", 1)
    scan = READERS["wflw"].scan(tmp_path)
    assert [(item.image.name, item.split) for item in scan.items] == [
        ("36_Football_ball_36_415.jpg", "train"),
        ("a.jpg", "test"),
    ]
    np.testing.assert_allclose(scan.items[0].target, points, atol=1e-5)
    np.testing.assert_array_equal(scan.items[0].box, [432, 113, 533, 215])
    assert [(entry.line, entry.reason) for entry in scan.rejected if entry.line] == [
        (2, "photo 7--Cheering/missing.jpg is missing")
    ]
    reconciles(tmp_path, scan, rows=3)
    (lists / "list_98pt_rect_attr_test.txt").write_text(f"{coordinates} 1 2 3 4 0 1 0 0 0 7--Cheering/a.jpg\n")
    with pytest.raises(ValueError, match=r"list_98pt_rect_attr_test.txt:1: expected 207 fields"):
        READERS["wflw"].read(tmp_path)


def test_aflw19_published_mat(tmp_path: Path, converted: Path, write_photo: WritePhoto, reconciles: Reconciles) -> None:
    points = [_keypoints(converted, "aflw", index) for index in (0, 1)]
    data = np.stack([np.concatenate([p[:, 0], p[:, 1]]) for p in (*points, points[0])])  # 19 x, then 19 y
    mask = np.ones((3, 19))
    mask[1, 4] = 0
    scipy.io.savemat(
        tmp_path / "AFLWinfo_release.mat",
        {
            "data": data,
            "bbox": np.array([[316, 570, 175, 505], [119, 205, 129, 254], [0, 1, 0, 1]]),  # x0, x1, y0, y1
            "mask_new": mask,
            "nameList": np.array(["3/image22568.jpg", "0/image04476.jpg", "2/missing.jpg"], dtype=object)[:, None],
            "ra": np.array([[2, 3, 1]]),
        },
    )
    write_photo(tmp_path / "AFLW" / "flickr" / "3" / "image22568.jpg", 0)
    write_photo(tmp_path / "AFLW" / "flickr" / "0" / "image04476.jpg", 1)
    scan = READERS["aflw19"].scan(tmp_path)
    first, second = scan.items
    np.testing.assert_allclose(first.target, points[0], rtol=1e-6)
    np.testing.assert_array_equal(first.box, [316, 175, 570, 505])
    assert np.flatnonzero(~second.visible).tolist() == [4]
    # ra's ranks: rows 2, 3, 1 come first; all within the first 20000, so train
    assert (first.split, second.split) == ("train", "train")
    assert [(entry.line, entry.reason) for entry in scan.rejected] == [(3, "photo 2/missing.jpg is missing")]
    reconciles(tmp_path, scan, rows=3)


def test_lapa_published_landmarks(
    tmp_path: Path, converted: Path, write_photo: WritePhoto, reconciles: Reconciles
) -> None:
    points = _keypoints(converted, "lapa")
    for split in ("train", "test"):
        (tmp_path / "LaPa" / split / "landmarks").mkdir(parents=True)
        text = "106\n" + "".join(f"{x} {y}\n" for x, y in points)
        (tmp_path / "LaPa" / split / "landmarks" / "10773046825_0.txt").write_text(text)
    write_photo(tmp_path / "LaPa" / "train" / "images" / "10773046825_0.jpg", 0)
    write_photo(tmp_path / "LaPa" / "train" / "labels" / "10773046825_0.png", 0)
    scan = READERS["lapa_landmarks"].scan(tmp_path)
    assert [(item.image.relative_to(tmp_path).as_posix(), item.split) for item in scan.items] == [
        ("LaPa/train/images/10773046825_0.jpg", "train")
    ]
    np.testing.assert_allclose(scan.items[0].target, points)
    reasons = sorted((entry.path.parent.name, entry.reason) for entry in scan.rejected)
    assert reasons == [
        ("labels", "not part of LaPa's landmark layout (landmarks/, images/)"),
        ("landmarks", "photo images/10773046825_0.jpg is missing"),
    ]
    reconciles(tmp_path, scan, rows=1)
