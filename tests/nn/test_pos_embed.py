"""Sin-cos position embeddings checked against hand-computed values."""

from __future__ import annotations

import math

import torch

from facekit.nn.pos_embed import sincos_1d, sincos_2d


def test_sincos_1d_hand_values() -> None:
    table = sincos_1d(4, torch.tensor([0.0, 1.5]))  # ω = [1, 10000^-½ = 0.01]
    expected = torch.tensor([[0.0, 0.0, 1.0, 1.0], [math.sin(1.5), math.sin(0.015), math.cos(1.5), math.cos(0.015)]])
    torch.testing.assert_close(table, expected)
    assert table.dtype == torch.float32


def test_sincos_2d_hand_values_at_row_1_col_2() -> None:
    table = sincos_2d(8, grid_size=3, cls_token=True)
    assert table.shape == (1, 10, 8)
    assert torch.all(table[0, 0] == 0)
    column = [math.sin(2), math.sin(0.02), math.cos(2), math.cos(0.02)]  # first half: column 2
    row = [math.sin(1), math.sin(0.01), math.cos(1), math.cos(0.01)]  # second half: row 1
    torch.testing.assert_close(table[0, 1 + 1 * 3 + 2], torch.tensor(column + row))
    torch.testing.assert_close(sincos_2d(8, grid_size=3), table[:, 1:])


def test_sincos_2d_rows_first_swaps_the_halves_as_facet_and_camd() -> None:
    """FaceT's ``PositionEmbed2D`` and CAMD's ``get_2d_sincos_pos_embed`` put the row's half first."""
    table = sincos_2d(8, grid_size=3, rows_first=True)
    row = [math.sin(1), math.sin(0.01), math.cos(1), math.cos(0.01)]  # first half: row 1
    column = [math.sin(2), math.sin(0.02), math.cos(2), math.cos(0.02)]  # second half: column 2
    torch.testing.assert_close(table[0, 1 * 3 + 2], torch.tensor(row + column))
    torch.testing.assert_close(
        table[0, 2 * 3 + 0, :4], torch.tensor([math.sin(2), math.sin(0.02), math.cos(2), math.cos(0.02)])
    )
    torch.testing.assert_close(table[0, 2 * 3 + 0, 4:], torch.tensor([0.0, 0.0, 1.0, 1.0]))  # column 0
    with_cls = sincos_2d(8, grid_size=3, cls_token=True, rows_first=True)
    assert torch.all(with_cls[0, 0] == 0) and torch.equal(with_cls[:, 1:], table)
