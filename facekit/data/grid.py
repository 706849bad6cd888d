"""PNG grids of faces, for a person to look at what a stage produced."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image


def save_grid(faces_rgb: Sequence[np.ndarray], path: Path, *, columns: int = 8, cell: int = 112) -> Path:
    """Tile faces (each ``[H, W, 3]`` uint8 RGB, resized to ``cell``) into one PNG, row-major.

    An empty list still writes a small grey image, so the stage's plot output always exists.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    n = max(len(faces_rgb), 1)
    columns = min(columns, n)
    rows = (n + columns - 1) // columns
    canvas = Image.new("RGB", (columns * cell, rows * cell), (128, 128, 128))
    for i, face in enumerate(faces_rgb):
        tile = Image.fromarray(face).resize((cell, cell), Image.Resampling.BILINEAR)
        canvas.paste(tile, ((i % columns) * cell, (i // columns) * cell))
    canvas.save(path, optimize=True)
    return path
