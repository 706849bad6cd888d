"""Multi-head cross-attention that attends only to each query's top-k keys (CAMD's AGMD module).

CAMD (Wang et al., TCSVT 2025) distils the momentum encoder's full-view ("global") tokens into the
online encoder's masked-view ("local") tokens through this module: every local token keeps only the
``k`` best-scoring global tokens per head and takes a softmax over those ``k`` scores alone; every
other key gets exactly zero weight.
"""

from __future__ import annotations

import torch
from torch import nn


class MultiHeadAttentionTopK(nn.Module):
    """Cross-attention with separate query / key / value / output projections and top-k sparsity.

    ``embed_dim`` must be divisible by ``num_heads``; scores are scaled by ``head_dim ** -0.5``.
    """

    def __init__(self, embed_dim: int, num_heads: int, k: int = 2) -> None:
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.k = k
        self.query = nn.Linear(embed_dim, embed_dim)
        self.key = nn.Linear(embed_dim, embed_dim)
        self.value = nn.Linear(embed_dim, embed_dim)
        self.out = nn.Linear(embed_dim, embed_dim)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, N, H * d]`` -> ``[B, H, N, d]``."""
        b, n, _ = x.shape
        return x.view(b, n, self.num_heads, self.head_dim).transpose(1, 2)

    def attention_weights(self, query: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """Sparse attention weights ``[B, H, Nq, Nk]``: a softmax over each row's top-k scores, 0 elsewhere.

        query: ``[B, Nq, D]``; context: ``[B, Nk, D]`` with ``Nk >= k``.
        """
        q, key = self._heads(self.query(query)), self._heads(self.key(context))
        scores = q @ key.transpose(-2, -1) * self.head_dim**-0.5  # [B, H, Nq, Nk]
        top, index = scores.topk(self.k, dim=-1)  # [B, H, Nq, k]
        weights = top.softmax(dim=-1)  # float32 under CUDA autocast, whatever the scores' dtype
        return torch.zeros_like(scores, dtype=weights.dtype).scatter(-1, index, weights)

    def forward(self, query: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """Attend from ``query [B, Nq, D]`` to ``context [B, Nk, D]``; returns ``[B, Nq, D]``."""
        weights = self.attention_weights(query, context)
        attended = weights @ self._heads(self.value(context))  # [B, H, Nq, d]
        b, _, nq, _ = attended.shape
        return self.out(attended.transpose(1, 2).reshape(b, nq, self.num_heads * self.head_dim))
