"""Landmark readers: 300W, 300-VW, WFLW, AFLW-19, COFW, LaPa (106 points)."""

from __future__ import annotations

from pathlib import Path

from facekit.data.downstream.items import DatasetReader, DatasetScan


def scan_300w(root: Path) -> DatasetScan:
    raise NotImplementedError


ALIGNMENT_READERS = (
    DatasetReader("300w", "alignment", (), scan_300w, landmarks=68),
    DatasetReader("300vw", "alignment", (), scan_300w, landmarks=68),
    DatasetReader("wflw", "alignment", (), scan_300w, landmarks=98),
    DatasetReader("aflw19", "alignment", (), scan_300w, landmarks=19),
    DatasetReader("cofw", "alignment", (), scan_300w, landmarks=29),
    DatasetReader("lapa_landmarks", "alignment", (), scan_300w, landmarks=106),
)
