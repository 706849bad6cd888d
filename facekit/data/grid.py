"""PNG grids of faces, for a person to look at what a stage produced."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

#: height in pixels of the caption strip under each face of a labelled grid
LABEL_HEIGHT = 14


def save_grid(
    faces_rgb: Sequence[np.ndarray | None],
    path: Path,
    *,
    columns: int = 8,
    cell: int = 112,
    labels: Sequence[str] | None = None,
) -> Path:
    """Tile faces (each ``[H, W, 3]`` uint8 RGB, resized to ``cell``; None = an empty grey cell) into one
    PNG, row-major.

    ``labels`` (one per face) are written in a white strip under each face. An empty list still writes a
    small grey image, so the stage's plot output always exists.
    """
    if labels is not None and len(labels) != len(faces_rgb):
        raise ValueError(f"{len(labels)} labels for {len(faces_rgb)} faces")
    path.parent.mkdir(parents=True, exist_ok=True)
    n = max(len(faces_rgb), 1)
    columns = min(columns, n)
    rows = (n + columns - 1) // columns
    strip = LABEL_HEIGHT if labels is not None else 0
    height = cell + strip
    canvas = Image.new("RGB", (columns * cell, rows * height), (128, 128, 128))
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    for i, face in enumerate(faces_rgb):
        if face is None:
            continue
        x, y = (i % columns) * cell, (i // columns) * height
        canvas.paste(Image.fromarray(face).resize((cell, cell), Image.Resampling.BILINEAR), (x, y))
        if labels is not None:
            draw.rectangle((x, y + cell, x + cell - 1, y + height - 1), fill=(255, 255, 255))
            draw.text((x + 2, y + cell + 1), labels[i], fill=(0, 0, 0), font=font)
    canvas.save(path, optimize=True)
    return path
