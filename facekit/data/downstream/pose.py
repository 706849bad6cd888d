"""Head-pose readers: AFLW2000-3D, 300W-LP, BIWI; angles in degrees (yaw, pitch, roll)."""

from __future__ import annotations

from pathlib import Path

from facekit.data.downstream.items import DatasetReader, DatasetScan

ANGLES = ("yaw", "pitch", "roll")


def scan_aflw2000_3d(root: Path) -> DatasetScan:
    raise NotImplementedError


POSE_READERS = (
    DatasetReader("aflw2000_3d", "pose", ANGLES, scan_aflw2000_3d),
    DatasetReader("300w_lp", "pose", ANGLES, scan_aflw2000_3d),
    DatasetReader("biwi", "pose", ANGLES, scan_aflw2000_3d),
)
