"""Fixtures of the downstream readers: the real downstream items and small copies of real photos."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image

from facekit.data.downstream import DatasetScan


@pytest.fixture(scope="session")
def downstream(assets: Path) -> Path:
    """The real downstream items of the assets (``downstream/``)."""
    return assets / "downstream"


@pytest.fixture(scope="session")
def real_photos(downstream: Path) -> list[Path]:
    """The 7 real CelebA photos of the assets, the sources of every layout fixture."""
    return sorted((downstream / "celeba" / "Img" / "img_celeba").glob("*.jpg"))


@pytest.fixture
def write_photo(real_photos: list[Path]) -> Callable[[Path, int], Path]:
    """``write_photo(path, index)``: a 32 px copy of real photo ``index`` saved at ``path`` (folders made)."""

    def write(path: Path, index: int = 0) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        with Image.open(real_photos[index % len(real_photos)]) as photo:
            photo.convert("RGB").resize((32, 32)).save(path)
        return path

    return write


@pytest.fixture
def reconciles() -> Callable[[Path, DatasetScan, int], None]:
    """``reconciles(root, scan, rows)``: the photos read, the annotation files read and the rejected files are every
    file under ``root`` (no file twice), and the items plus the rejected rows are ``rows``."""

    def check(root: Path, scan: DatasetScan, rows: int) -> None:
        photos = sorted({item.image for item in scan.items})  # a photo may hold several faces
        rejected_files = [entry.path for entry in scan.rejected if entry.line is None]
        accounted = photos + scan.annotations + rejected_files
        assert len(accounted) == len(set(accounted))
        assert set(accounted) == {path for path in root.rglob("*") if path.is_file()}
        assert len(scan.items) + sum(entry.line is not None for entry in scan.rejected) == rows

    return check
