"""Head-pose readers: AFLW2000-3D, 300W-LP and BIWI; ``target`` (3,) float32 degrees (yaw, pitch, roll).

- AFLW2000-3D and 300W-LP: ``<name>.jpg`` beside ``<name>.mat`` whose ``Pose_Para`` (1, 7) holds pitch, yaw,
  roll in radians, then the translation and scale; the box is the tight box of ``pt2d``'s points (the 21 AFLW
  points for AFLW2000-3D, 68 for 300W-LP; a negative coordinate marks a missing point and is left out), as
  the pose papers crop. AFLW2000-3D is a test set, 300W-LP (its ``AFW``, ``HELEN``, ``IBUG``, ``LFPW`` folders
  and their ``_Flip`` mirrors) a training set; 300W-LP's ``landmarks/`` and ``Code/`` are rejected.
- BIWI (Kinect head pose database, ``hpdb/``): ``<NN>/frame_<i>_rgb.png`` with ``frame_<i>_pose.txt``: three rows
  of the head rotation R, a blank line, the head centre (mm). With R^T = Rz(c) Ry(b) Rx(a), pitch = a,
  yaw = -b, roll = -c. The database has no partition: every frame is test. Depth, calibration, mask and model
  files are rejected.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy.spatial.transform import Rotation

from facekit.data.downstream.items import (
    DatasetReader,
    DatasetScan,
    DownstreamItem,
    Rejected,
    finish,
    load_mat,
    malformed,
    progress,
    require_dir,
)

ANGLES = ("yaw", "pitch", "roll")


def read_pose_mat(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """(yaw, pitch, roll) degrees ``(3,)`` and the ``pt2d`` box ``(4,)`` (None without points) of a 3DDFA ``.mat``."""
    mat = load_mat(path)
    pose = np.asarray(mat.get("Pose_Para", np.empty(0)), dtype=np.float64).ravel()
    if pose.size != 7:
        raise ValueError(f"{path}: Pose_Para must hold 7 values (pitch, yaw, roll, tx, ty, tz, scale), got {pose.size}")
    pitch, yaw, roll = np.degrees(pose[:3])
    points = np.asarray(mat.get("pt2d", np.empty((2, 0))), dtype=np.float64)
    if points.ndim != 2 or points.shape[0] != 2:
        raise ValueError(f"{path}: pt2d must be (2, K), got {points.shape}")
    points = points[:, (points >= 0).all(axis=0)]
    box = None
    if points.size:
        box = np.array([*points.min(axis=1), *points.max(axis=1)], dtype=np.float32)
    return np.array([yaw, pitch, roll], dtype=np.float32), box


def _scan_pose_mats(root: Path, split: str, reason: str) -> DatasetScan:
    root = require_dir(root)
    items: list[DownstreamItem] = []
    rejected: list[Rejected] = []
    consumed: set[Path] = set()
    for path in progress(sorted(root.rglob("*.mat")), root.name):
        if "landmarks" in path.relative_to(root).parts or "Code" in path.relative_to(root).parts:
            continue
        photo = path.with_suffix(".jpg")
        if not photo.is_file():
            rejected.append(Rejected(path, f"no photo {photo.name} beside it"))
            continue
        target, box = read_pose_mat(path)
        consumed.update((path, photo))
        items.append(DownstreamItem(photo, "pose", target, split, box=box))
    if not items and not rejected:
        raise FileNotFoundError(f"{root}: no <name>.mat with Pose_Para")

    def why(path: Path) -> str:
        parts = path.relative_to(root).parts
        if "landmarks" in parts:
            return "300W-LP landmark file: not read by the pose task"
        if path.suffix == ".jpg":
            return "photo without a .mat beside it"
        if "Code" in parts:
            return "300W-LP's code folder: not data"
        return reason

    return finish(root, items, rejected, consumed, why)


def scan_aflw2000_3d(root: Path) -> DatasetScan:
    """AFLW2000-3D under ``root`` (``AFLW2000/`` or the folder holding it)."""
    return _scan_pose_mats(root, "test", "not part of AFLW2000-3D's layout (image .jpg with .mat)")


def scan_300w_lp(root: Path) -> DatasetScan:
    """300W-LP under ``root`` (``300W_LP/`` or the folder holding it)."""
    return _scan_pose_mats(root, "train", "not part of 300W-LP's layout (subset folders of .jpg with .mat)")


def read_biwi_pose(path: Path) -> np.ndarray:
    """(yaw, pitch, roll) degrees ``(3,)`` of a BIWI ``frame_<i>_pose.txt`` (3 rotation rows, blank, centre)."""
    lines = [line.split() for line in path.read_text().splitlines()]
    rows = [line for line in lines if line]
    for number, line in enumerate(lines, start=1):
        if line and len(line) != 3:
            raise malformed(path, number, f"expected 3 numbers, got {len(line)}")
    if len(rows) != 4:
        raise malformed(path, len(lines), f"expected 3 rotation rows and the head centre, got {len(rows)} rows")
    try:
        rotation = np.array(rows[:3], dtype=np.float64)
    except ValueError:
        raise malformed(path, 1, "the rotation rows must be numbers") from None
    if not np.allclose(rotation @ rotation.T, np.eye(3), atol=1e-3) or np.linalg.det(rotation) < 0:
        raise malformed(path, 1, "the first three rows are not a rotation")
    pitch, minus_yaw, minus_roll = Rotation.from_matrix(rotation.T).as_euler("xyz", degrees=True)
    return np.array([-minus_yaw, pitch, -minus_roll], dtype=np.float32)


def scan_biwi(root: Path) -> DatasetScan:
    """BIWI under ``root`` (``hpdb/`` or the folder holding it)."""
    root = require_dir(root)
    items: list[DownstreamItem] = []
    rejected: list[Rejected] = []
    consumed: set[Path] = set()
    for path in progress(sorted(root.rglob("frame_*_pose.txt")), "biwi"):
        photo = path.with_name(path.name.replace("_pose.txt", "_rgb.png"))
        if not photo.is_file():
            rejected.append(Rejected(path, f"no photo {photo.name} beside it"))
            continue
        consumed.update((path, photo))
        items.append(DownstreamItem(photo, "pose", read_biwi_pose(path), "test"))
    if not items and not rejected:
        raise FileNotFoundError(f"{root}: no frame_<i>_pose.txt")

    def reason(path: Path) -> str:
        if path.name.endswith("_rgb.png"):
            return "frame without a pose file"
        if path.suffix in (".bin", ".cal", ".obj") or path.name.endswith("_mask.png"):
            return "depth, calibration, mask or head model: not read by the pose task"
        return "not part of BIWI's layout (frame_<i>_rgb.png with frame_<i>_pose.txt)"

    return finish(root, items, rejected, consumed, reason)


POSE_READERS = (
    DatasetReader("aflw2000_3d", "pose", ANGLES, scan_aflw2000_3d),
    DatasetReader("300w_lp", "pose", ANGLES, scan_300w_lp),
    DatasetReader("biwi", "pose", ANGLES, scan_biwi),
)
