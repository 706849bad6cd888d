"""Position embeddings: fixed sine-cosine tables (Vaswani et al. 2017; 2-D layout of MAE, He et al. 2022)
and DINO's resampling of a learned table to another patch grid.

``sincos_2d`` reproduces MAE's ``get_2d_sincos_pos_embed`` value for value (MAE, MCF): the first half
of the channels encodes the patch's column, the second half its row, each half being
``[sin(pos·ω), cos(pos·ω)]`` with ``ω_k = 10000^(−k / (D/4))``. With ``rows_first`` the halves swap
(row, then column): the layout of CAMD's (SiameseIM's) ``get_2d_sincos_pos_embed`` and of FaceT's
``PositionEmbed2D``.
``interpolate_pos_embed`` is DINO's ``interpolate_pos_encoding`` (multi-crop's smaller crops).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

_TEMPERATURE = 10000.0


def sincos_1d(embed_dim: int, positions: torch.Tensor) -> torch.Tensor:
    """1-D sin-cos embedding of arbitrary (real-valued) positions.

    positions: [M] (any float or integer dtype, any device) -> [M, embed_dim] float32 laid out as
    ``[sin(p·ω_0..ω_{D/2-1}), cos(p·ω_0..ω_{D/2-1})]`` with ``ω_k = 10000^(−2k/D)``. Computed in
    float64 like MAE's numpy version; differentiable in ``positions``.
    """
    if embed_dim % 2:
        raise ValueError(f"embed_dim must be even, got {embed_dim}")
    half = embed_dim // 2
    omega = torch.arange(half, dtype=torch.float64, device=positions.device) / half
    omega = _TEMPERATURE**-omega  # [D/2]
    angles = positions.reshape(-1).to(torch.float64)[:, None] * omega[None, :]  # [M, D/2]
    return torch.cat([angles.sin(), angles.cos()], dim=1).float()


def sincos_2d(embed_dim: int, grid_size: int, cls_token: bool = False, rows_first: bool = False) -> torch.Tensor:
    """MAE's fixed 2-D sin-cos table for a square ``grid_size × grid_size`` patch grid.

    Returns [1, (1 +) grid_size², embed_dim] float32, patches in row-major order (token ``r·G + c``);
    channels ``[:D/2]`` encode the column ``c`` and ``[D/2:]`` the row ``r`` (``rows_first``: the row
    first, then the column). With ``cls_token`` a row of zeros is put first for the class-token slot.
    """
    if embed_dim % 4:
        raise ValueError(f"embed_dim must be a multiple of 4, got {embed_dim}")
    coords = torch.arange(grid_size, dtype=torch.float64)
    rows, cols = torch.meshgrid(coords, coords, indexing="ij")  # [G, G] each
    halves = [sincos_1d(embed_dim // 2, cols.reshape(-1)), sincos_1d(embed_dim // 2, rows.reshape(-1))]
    table = torch.cat(halves[::-1] if rows_first else halves, dim=1)  # [G², D]
    if cls_token:
        table = torch.cat([table.new_zeros(1, embed_dim), table], dim=0)
    return table[None]


def interpolate_pos_embed(pos_embed: torch.Tensor, grid: tuple[int, int], num_prefix_tokens: int) -> torch.Tensor:
    """A learned table ``[1, P + G², D]`` (P prefix tokens, a square G × G patch grid) for a ``grid = (h, w)``
    patch grid → ``[1, P + h·w, D]``, as DINO's ``interpolate_pos_encoding``: bicubic (a = −0.75, no
    antialiasing, ``align_corners=False``) with the scale factors ``(h + 0.1) / G`` and ``(w + 0.1) / G``
    themselves (the +0.1 keeps the output size at h × w), so a source coordinate is
    ``(i + ½)·G / (h + 0.1) − ½``, not ``(i + ½)·G / h − ½``. Prefix rows are kept; ``grid == (G, G)``
    returns the table itself."""
    side = math.isqrt(pos_embed.shape[1] - num_prefix_tokens)
    if tuple(grid) == (side, side):
        return pos_embed
    prefix, table = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    dim = table.shape[-1]
    scale = ((grid[0] + 0.1) / side, (grid[1] + 0.1) / side)
    image = table.reshape(1, side, side, dim).permute(0, 3, 1, 2)  # [1, D, G, G]
    resampled = F.interpolate(image, scale_factor=scale, mode="bicubic", align_corners=False)  # [1, D, h, w]
    return torch.cat([prefix, resampled.permute(0, 2, 3, 1).reshape(1, -1, dim)], dim=1)
