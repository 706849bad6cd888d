"""Attribute readers: CelebA, LFWA (40 binary attributes)."""

from __future__ import annotations

from pathlib import Path

from facekit.data.downstream.items import DatasetReader, DatasetScan

CELEBA_ATTRIBUTES = (
    "5_o_Clock_Shadow", "Arched_Eyebrows", "Attractive", "Bags_Under_Eyes", "Bald", "Bangs", "Big_Lips", "Big_Nose",
    "Black_Hair", "Blond_Hair", "Blurry", "Brown_Hair", "Bushy_Eyebrows", "Chubby", "Double_Chin", "Eyeglasses",
    "Goatee", "Gray_Hair", "Heavy_Makeup", "High_Cheekbones", "Male", "Mouth_Slightly_Open", "Mustache",
    "Narrow_Eyes", "No_Beard", "Oval_Face", "Pale_Skin", "Pointy_Nose", "Receding_Hairline", "Rosy_Cheeks",
    "Sideburns", "Smiling", "Straight_Hair", "Wavy_Hair", "Wearing_Earrings", "Wearing_Hat", "Wearing_Lipstick",
    "Wearing_Necklace", "Wearing_Necktie", "Young",
)  # fmt: skip


def scan_celeba(root: Path) -> DatasetScan:
    raise NotImplementedError


def scan_lfwa(root: Path) -> DatasetScan:
    raise NotImplementedError


ATTRIBUTE_READERS = (
    DatasetReader("celeba", "attributes", CELEBA_ATTRIBUTES, scan_celeba),
    DatasetReader("lfwa", "attributes", CELEBA_ATTRIBUTES, scan_lfwa),
)
