"""Expression readers: RAF-DB, FERPlus, AffectNet."""

from __future__ import annotations

from pathlib import Path

from facekit.data.downstream.items import DatasetReader, DatasetScan

RAFDB_CLASSES = ("surprise", "fear", "disgust", "happiness", "sadness", "anger", "neutral")
FERPLUS_CLASSES = ("neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt")
AFFECTNET_CLASSES = ("neutral", "happy", "sad", "surprise", "fear", "disgust", "anger", "contempt")


def scan_rafdb(root: Path) -> DatasetScan:
    raise NotImplementedError


def scan_ferplus(root: Path) -> DatasetScan:
    raise NotImplementedError


def affectnet_reader(num_classes: int) -> DatasetReader:
    """AffectNet with 7 (no contempt) or 8 classes."""
    raise NotImplementedError


EXPRESSION_READERS = (
    DatasetReader("rafdb", "expression", RAFDB_CLASSES, scan_rafdb),
    DatasetReader("ferplus", "expression", FERPLUS_CLASSES, scan_ferplus),
    DatasetReader("affectnet", "expression", AFFECTNET_CLASSES, scan_rafdb),
    DatasetReader("affectnet7", "expression", AFFECTNET_CLASSES[:7], scan_rafdb),
)
