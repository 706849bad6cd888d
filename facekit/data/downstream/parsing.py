"""Face-parsing readers: LaPa (11 classes), CelebAMask-HQ (19 classes)."""

from __future__ import annotations

from pathlib import Path

from facekit.data.downstream.items import DatasetReader, DatasetScan

LAPA_CLASSES = (
    "background", "skin", "left_eyebrow", "right_eyebrow", "left_eye", "right_eye", "nose", "upper_lip",
    "inner_mouth", "lower_lip", "hair",
)  # fmt: skip
CELEBAMASK_HQ_CLASSES = (
    "background", "skin", "nose", "eye_g", "l_eye", "r_eye", "l_brow", "r_brow", "l_ear", "r_ear", "mouth",
    "u_lip", "l_lip", "hair", "hat", "ear_r", "neck_l", "neck", "cloth",
)  # fmt: skip


def scan_lapa(root: Path) -> DatasetScan:
    raise NotImplementedError


PARSING_READERS = (
    DatasetReader("lapa", "parsing", LAPA_CLASSES, scan_lapa),
    DatasetReader("celebamask_hq", "parsing", CELEBAMASK_HQ_CLASSES, scan_lapa),
)
