"""FaceT's pieces: the DeepNorm block and the prompt pool (Zhu et al., "Joint Holistic and Masked Face
Recognition", IEEE TIFS 2023; seed ``zyainfal/Joint-Holistic-and-Masked-Face-Recognition``).

DeepNorm (Wang et al., "DeepNet", 2022) is a post-norm residual with an up-weighted skip branch,
``x = LN(α·x + F(x))`` with ``α = (2N)^¼``, paired with Xavier-uniform init of gain ``β = (8N)^−¼``
(N = number of blocks). FaceT-B (N = 12): α ≈ 2.213, β ≈ 0.320.

The per-block prompt tokens themselves live on :class:`facekit.nn.vit.ViT` (parameter ``prompts``,
``[depth, 2, P, D]``), which prepends them before each block and drops them after it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import Block
from torch import nn


def deepnorm_alpha(depth: int) -> float:
    """Residual up-weighting ``α = (2N)^¼`` of an encoder-only DeepNet with N blocks."""
    return (2 * depth) ** 0.25


def deepnorm_beta(depth: int) -> float:
    """Init gain ``β = (8N)^−¼`` of an encoder-only DeepNet with N blocks."""
    return (8 * depth) ** -0.25


def init_deepnorm_(module: nn.Module, beta: float, skip: tuple[nn.Module, ...] = ()) -> None:
    """FaceT's init: every ``nn.Linear`` inside ``module`` (except those in ``skip``) gets Xavier-uniform
    weights with gain ``beta`` and zero bias; LayerNorms get weight 1 / bias 0."""
    skipped = {id(m) for m in skip}
    for m in module.modules():
        if isinstance(m, nn.Linear) and id(m) not in skipped:
            nn.init.xavier_uniform_(m.weight, gain=beta)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class DeepNormBlock(Block):
    """timm's ViT ``Block`` (same ``attn``/``mlp``/``norm1``/``norm2``/``drop_path*`` modules and
    state-dict keys) run post-norm with DeepNorm's scaled skip:

        x = norm1(α·x + DropPath(Attn(x)));  x = norm2(α·x + DropPath(MLP(x)))

    x: [B, N, D] -> [B, N, D]; every output token has zero mean / unit variance before the LN affine.
    LayerNorm eps is PyTorch's default 1e-5, as in FaceT (timm's pre-norm ViT uses 1e-6).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        alpha: float,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__(
            dim, num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, drop_path=drop_path, norm_layer=nn.LayerNorm
        )
        self.alpha = alpha

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        attn = self.attn(x, attn_mask=attn_mask, is_causal=is_causal)
        x = self.norm1(self.alpha * x + self.drop_path1(self.ls1(attn)))
        x = self.norm2(self.alpha * x + self.drop_path2(self.ls2(self.mlp(x))))
        return x


class PromptsPool(nn.Module):
    """FaceT's prompt pooling: per-sample learnable queries cross-attend the patch tokens.

    Two query sets ``queries: [2, H, P, D/H]`` (randn init, as the seed), one per face kind, are picked
    by ``ismask`` (0 = holistic face, 1 = masked face). Keys are ``key_proj(x)`` split into heads, values
    are the raw tokens ``x`` split into heads (no value/output projection, as the seed). The softmax
    scale is ``D^−½`` over the full width, not the head width: the seed's choice, kept.

    x: [B, N, D], ismask: [B] long -> [B, P, D] (the caller mean-pools it to [B, D]).
    """

    def __init__(self, embed_dim: int, num_heads: int, num_prompts: int) -> None:
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.num_prompts = num_prompts
        self.scale = embed_dim**-0.5
        self.queries = nn.Parameter(torch.randn(2, num_heads, num_prompts, embed_dim // num_heads))
        self.key_proj = nn.Linear(embed_dim, embed_dim)

    def forward(self, x: torch.Tensor, ismask: torch.Tensor) -> torch.Tensor:
        batch, num_tokens, dim = x.shape
        q = self.queries[ismask.long()]  # [B, H, P, D/H]
        k = self.key_proj(x).reshape(batch, num_tokens, self.num_heads, -1).transpose(1, 2)  # [B, H, N, D/H]
        v = x.reshape(batch, num_tokens, self.num_heads, -1).transpose(1, 2)  # [B, H, N, D/H]
        pooled = F.scaled_dot_product_attention(q, k, v, scale=self.scale)  # [B, H, P, D/H]
        return pooled.transpose(1, 2).reshape(batch, self.num_prompts, dim)
