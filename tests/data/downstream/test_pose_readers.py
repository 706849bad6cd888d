"""The pose readers: AFLW2000-3D's real .mat files, a 300W-LP fixture of its layout built from them, and a BIWI
fixture with hand-written rotations (real photos)."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import scipy.io

from facekit.data.downstream import READERS, DatasetScan

WritePhoto = Callable[[Path, int], Path]
Reconciles = Callable[[Path, DatasetScan, int], None]


def test_aflw2000_3d_real_pose_in_degrees(downstream: Path, reconciles: Reconciles) -> None:
    root = downstream / "aflw2000_3d"
    scan = READERS["aflw2000_3d"].scan(root)
    assert len(scan.items) == 16 and {item.split for item in scan.items} == {"test"}
    first = scan.items[0]
    assert first.image.name == "image00050.jpg" and first.target.dtype == np.float32
    # Pose_Para of image00050.mat: pitch -0.081394404, yaw 0.016389934, roll 0.09836138 (radians)
    np.testing.assert_allclose(first.target, [0.939074, -4.663556, 5.635692], atol=1e-5)
    # pt2d of image00050.mat: x 127.49 (point 13) .. 324.07 (point 17), y 182.59 (point 2) .. 377.84 (point 21)
    np.testing.assert_allclose(first.box, [127.493634, 182.58668, 324.065622, 377.836435], atol=1e-4)
    assert scan.rejected == []
    reconciles(root, scan, rows=16)


@pytest.fixture
def w300_lp(tmp_path: Path, downstream: Path, write_photo: WritePhoto) -> Path:
    root = tmp_path / "300W_LP"
    real = downstream / "aflw2000_3d" / "AFLW2000" / "image00050.mat"
    for subset in ("AFW", "AFW_Flip"):
        (root / subset).mkdir(parents=True)
        shutil.copy(real, root / subset / "AFW_134212_1_0.mat")
        write_photo(root / subset / "AFW_134212_1_0.jpg", 0)
    points = np.array([[10.0, -1.0, 30.0], [20.0, -1.0, 5.0]])  # the middle point is missing
    write_photo(root / "HELEN" / "x.jpg", 1)
    scipy.io.savemat(root / "HELEN" / "x.mat", {"Pose_Para": np.zeros((1, 7)), "pt2d": points})
    (root / "IBUG").mkdir()
    shutil.copy(real, root / "IBUG" / "no_photo.mat")
    (root / "landmarks" / "AFW").mkdir(parents=True)
    scipy.io.savemat(root / "landmarks" / "AFW" / "AFW_134212_1_0_pts.mat", {"pts_2d": np.zeros((68, 2))})
    (root / "Code").mkdir()
    (root / "Code" / "ModelGeneration.m").write_text("% code\n")
    return root


def test_300w_lp_layout(w300_lp: Path, reconciles: Reconciles) -> None:
    scan = READERS["300w_lp"].scan(w300_lp)
    got = [(item.image.relative_to(w300_lp).as_posix(), item.split) for item in scan.items]
    assert got == [
        ("AFW/AFW_134212_1_0.jpg", "train"),
        ("AFW_Flip/AFW_134212_1_0.jpg", "train"),
        ("HELEN/x.jpg", "train"),
    ]
    np.testing.assert_allclose(scan.items[0].target, [0.939074, -4.663556, 5.635692], atol=1e-5)
    np.testing.assert_array_equal(scan.items[2].box, [10, 5, 30, 20])  # the (-1, -1) point left out
    assert sorted((entry.path.name, entry.reason) for entry in scan.rejected) == [
        ("AFW_134212_1_0_pts.mat", "300W-LP landmark file: not read by the pose task"),
        ("ModelGeneration.m", "300W-LP's code folder: not data"),
        ("no_photo.mat", "no photo no_photo.jpg beside it"),
    ]
    reconciles(w300_lp, scan, rows=3)


def test_pose_mat_without_a_full_pose_names_the_file(w300_lp: Path) -> None:
    scipy.io.savemat(w300_lp / "HELEN" / "x.mat", {"Pose_Para": np.zeros((1, 6)), "pt2d": np.zeros((2, 3))})
    with pytest.raises(ValueError, match=r"x.mat: Pose_Para must hold 7 values"):
        READERS["300w_lp"].read(w300_lp)


# BIWI rotations written out by hand (R as the pose file holds it; R^T = Rz(-roll) Ry(-yaw) Rx(pitch)):
# yaw 30: R = [[cos 30, 0, sin 30], [0, 1, 0], [-sin 30, 0, cos 30]]
# pitch 20: R = [[1, 0, 0], [0, cos 20, sin 20], [0, -sin 20, cos 20]]
# roll 15: R = [[cos 15, -sin 15, 0], [sin 15, cos 15, 0], [0, 0, 1]]
BIWI_POSES = {
    "00003": ("0.866025 0 0.5\n0 1 0\n-0.5 0 0.866025\n", (30, 0, 0)),
    "00004": ("1 0 0\n0 0.939693 0.342020\n0 -0.342020 0.939693\n", (0, 20, 0)),
    "00005": ("0.965926 -0.258819 0\n0.258819 0.965926 0\n0 0 1\n", (0, 0, 15)),
}


@pytest.fixture
def biwi(tmp_path: Path, write_photo: WritePhoto) -> Path:
    root = tmp_path / "hpdb"
    for index, (frame, (rotation, _)) in enumerate(BIWI_POSES.items()):
        (root / "01").mkdir(parents=True, exist_ok=True)
        (root / "01" / f"frame_{frame}_pose.txt").write_text(f"{rotation}\n42.1 17.3 958.2\n")
        write_photo(root / "01" / f"frame_{frame}_rgb.png", index)
        (root / "01" / f"frame_{frame}_depth.bin").write_bytes(b"\0" * 8)
    write_photo(root / "01" / "frame_00006_rgb.png", 3)
    (root / "01" / "rgb.cal").write_text("517 0 320\n")
    (root / "01.obj").write_text("v 0 0 0\n")
    return root


def test_biwi_rotation_to_yaw_pitch_roll(biwi: Path, reconciles: Reconciles) -> None:
    scan = READERS["biwi"].scan(biwi)
    assert [item.image.name for item in scan.items] == [f"frame_{frame}_rgb.png" for frame in BIWI_POSES]
    for item, (_, angles) in zip(scan.items, BIWI_POSES.values(), strict=True):
        np.testing.assert_allclose(item.target, angles, atol=1e-3)
        assert item.split == "test"
    assert sorted((entry.path.name, entry.reason) for entry in scan.rejected)[-2:] == [
        ("frame_00006_rgb.png", "frame without a pose file"),
        ("rgb.cal", "depth, calibration, mask or head model: not read by the pose task"),
    ]
    reconciles(biwi, scan, rows=3)


def test_biwi_pose_file_that_is_not_a_rotation_names_the_file(biwi: Path) -> None:
    (biwi / "01" / "frame_00004_pose.txt").write_text("1 0 0\n0 2 0\n0 0 1\n\n1 2 3\n")
    with pytest.raises(ValueError, match=r"frame_00004_pose.txt:1: the first three rows are not a rotation"):
        READERS["biwi"].read(biwi)
    (biwi / "01" / "frame_00004_pose.txt").write_text("1 0 0\n0 1\n0 0 1\n\n1 2 3\n")
    with pytest.raises(ValueError, match=r"frame_00004_pose.txt:2: expected 3 numbers"):
        READERS["biwi"].read(biwi)
