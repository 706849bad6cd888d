"""Face grids: labelled cells, empty cells, one row per person."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import simplejpeg
from PIL import Image

from facekit.data.grid import LABEL_HEIGHT, save_grid
from facekit.data.record import FaceRecord
from facekit.data.shards import ShardWriter
from facekit.stages.pack import GRID_COLUMNS, save_face_grid

GREY = (128, 128, 128)


def _face(value: int, size: int = 16) -> np.ndarray:
    return np.full((size, size, 3), value, np.uint8)


def test_labels_sit_in_a_white_strip_under_each_face_and_none_stays_grey(tmp_path: Path) -> None:
    path = save_grid([_face(10), None, _face(200)], tmp_path / "g.png", columns=2, cell=32, labels=["ab", "", "c"])
    grid = np.asarray(Image.open(path).convert("RGB"))
    assert grid.shape == (2 * (32 + LABEL_HEIGHT), 64, 3)
    assert (grid[:32, :32] == 10).all() and (grid[:32, 32:] == GREY).all()  # the None cell is left grey
    first_strip = grid[32 : 32 + LABEL_HEIGHT, :32]
    assert (first_strip == 255).mean() > 0.6 and (first_strip < 100).any()  # white, with dark text
    assert (grid[32 + LABEL_HEIGHT : 64 + LABEL_HEIGHT, :32] == 200).all()


def test_labels_must_match_the_faces(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="2 labels for 1 faces"):
        save_grid([_face(1)], tmp_path / "g.png", labels=["a", "b"])


def _shard(path: Path, identities: list[int]) -> Path:
    """Faces whose grey level encodes their position: face i is filled with 10 + 20 i."""
    with ShardWriter(path) as writer:
        for i, identity in enumerate(identities):
            image = simplejpeg.encode_jpeg(_face(10 + 20 * i, 32), 100, "RGB")
            writer.put(
                FaceRecord(
                    key=f"k{i:02d}",
                    image=image,
                    identity=identity,
                    landmarks=np.zeros((5, 2), np.float32),
                    bbox=np.zeros(4, np.float32),
                    det_score=1.0,
                    num_faces=1,
                    source="t",
                    source_sha256=str(i),
                )
            )
    return path


def test_the_face_grid_gives_each_person_a_row_in_order_of_appearance(tmp_path: Path) -> None:
    shard = _shard(tmp_path / "s.lmdb", [1, 0, 1, -1, 2, 0, 1])
    path = save_face_grid([shard], tmp_path / "faces.png", count=2 * GRID_COLUMNS, names=["ann", "bob", "cy"])
    grid = np.asarray(Image.open(path).convert("RGB")).astype(int)
    height = 112 + LABEL_HEIGHT
    assert grid.shape[:2] == (2 * height, GRID_COLUMNS * 112)  # two people fit: bob (id 1), then ann (id 0)
    centre = [[grid[r * height + 56, c * 112 + 56, 0] for c in range(3)] for r in range(2)]
    levels = [[10 + 20 * i for i in row] for row in ([0, 2, 6], [1, 5])]
    assert np.allclose(centre[0], levels[0], atol=3)
    assert np.allclose(centre[1][:2], levels[1], atol=3) and centre[1][2] == 128  # a short row is padded grey


def test_a_person_with_many_faces_gets_one_row_of_eight(tmp_path: Path) -> None:
    shard = _shard(tmp_path / "s.lmdb", [1] * 10 + [0])
    grid = np.asarray(Image.open(save_face_grid([shard], tmp_path / "faces.png", count=2 * GRID_COLUMNS)))
    assert grid.shape[:2] == (2 * (112 + LABEL_HEIGHT), GRID_COLUMNS * 112)  # id 1's first 8, then id 0
    assert abs(int(grid[112 + LABEL_HEIGHT + 56, 56, 0]) - (10 + 20 * 10)) <= 3  # row 2 starts with id 0's face
