"""Vision Transformer backbones on timm's blocks: ViT-S/B (Dosovitskiy et al. 2021, initialised as MAE,
He et al. 2022) and FaceT-B (Zhu et al., TIFS 2023: DeepNorm, linear patch embedding, prompts).

One class covers every seed's encoder:

- MAE / MCF / CAMD: ``ViT(pos_embed="sincos")`` with a cls token; ``encode(x, keep=...)`` runs the
  visible tokens only; ``return_layers`` gives CAMD's / MCF's per-block patch features;
  ``freeze_patch_embed`` is MoCo-v3's / CAMD's random frozen patch projection.
- FaceT-B: ``BACKBONES.create("facet_base")`` (:mod:`facekit.nn.backbones` registers the presets).

Pooling (``ViTOutput.pooled``): ``"token"`` takes the normed cls token; ``"avg"`` means the normed patch
tokens (unlike timm / MAE fine-tuning, which pool the un-normed tokens and then apply an ``fc_norm``).
With prompts (``num_prompts > 0``) ``global_pool`` must be ``"avg"`` and it averages the ``num_prompts``
outputs of :class:`~facekit.nn.facet.PromptsPool` instead of the patch tokens, as FaceT does.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal

import torch
from timm.layers import PatchEmbed, trunc_normal_
from timm.models.vision_transformer import Block
from torch import nn

from facekit.nn.facet import DeepNormBlock, PromptsPool, deepnorm_alpha, deepnorm_beta, init_deepnorm_
from facekit.nn.pos_embed import sincos_2d


@dataclass
class ViTOutput:
    """What :meth:`ViT.encode` returns.

    cls:     [B, D] the class token after the final norm, or None without one.
    patches: [B, K, D] patch tokens after the final norm (DeepNorm models: the last block's output);
             K = N, or the number of ``keep`` indices.
    layers:  patch tokens [B, K, D] right after each requested block (before any final norm), in request order.
    pooled:  [B, D] the pooled feature the head consumes (see the module docstring).
    """

    cls: torch.Tensor | None
    patches: torch.Tensor
    layers: list[torch.Tensor]
    pooled: torch.Tensor


def patchify(imgs: torch.Tensor, patch_size: int) -> torch.Tensor:
    """imgs: [B, C, H, W] -> [B, N, p·p·C], patches row-major, pixels row-major and channels last within a
    patch (MAE's layout, also FaceT's ``(p1 p2 c)`` linear patch embedding)."""
    batch, channels, height, width = imgs.shape
    p = patch_size
    if height % p or width % p:
        raise ValueError(f"image size {height}×{width} is not a multiple of the patch size {p}")
    x = imgs.reshape(batch, channels, height // p, p, width // p, p)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(batch, (height // p) * (width // p), p * p * channels)


def unpatchify(x: torch.Tensor, patch_size: int, channels: int = 3) -> torch.Tensor:
    """Inverse of :func:`patchify` for a square grid: x: [B, N, p·p·C] -> [B, C, √N·p, √N·p]."""
    batch, num_patches, _ = x.shape
    grid = math.isqrt(num_patches)
    if grid * grid != num_patches:
        raise ValueError(f"{num_patches} patches do not form a square grid")
    p = patch_size
    x = x.reshape(batch, grid, grid, p, p, channels).permute(0, 5, 1, 3, 2, 4)
    return x.reshape(batch, channels, grid * p, grid * p)


class LinearPatchEmbed(nn.Module):
    """FaceT's patch embedding: ``Linear(p·p·3 -> D)`` on :func:`patchify`'s output.

    x: [B, 3, H, W] -> [B, N, D]. Equivalent to a stride-p convolution with permuted weights.
    """

    def __init__(self, patch_size: int, embed_dim: int, in_chans: int = 3) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Linear(patch_size * patch_size * in_chans, embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(patchify(x, self.patch_size))


class ViT(nn.Module):
    """A plain ViT encoder (pre-norm timm ``Block``s, or FaceT's DeepNorm blocks) with an optional
    ``Linear(D -> head_dim) + BatchNorm1d(head_dim, affine=False)`` embedding head (FaceT's 512-d head).

    State-dict keys follow timm's ``VisionTransformer`` (``cls_token``, ``pos_embed``,
    ``patch_embed.proj``, ``blocks.<i>``, ``norm``), so timm / MAE checkpoints load directly.

    Init: pre-norm follows MAE (Xavier-uniform Linears, zero biases, conv patch weight Xavier over its
    flattened view, cls ~ N(0, 0.02²), learned pos-embed ~ trunc-normal(``pos_embed_std``), 0 = zeros);
    DeepNorm follows FaceT (every Linear but the head Xavier-uniform with gain β = (8N)^−¼). Prompts
    (``[depth, 2, P, D]``) and the PromptsPool queries are N(0, 1) as in FaceT.
    """

    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 16,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        class_token: bool = True,
        pos_embed: Literal["sincos", "learned"] = "sincos",
        patch_embed: Literal["conv", "linear"] = "conv",
        global_pool: Literal["token", "avg"] = "token",
        norm: Literal["pre", "deepnorm"] = "pre",
        drop_path_rate: float = 0.0,
        head_dim: int | None = None,
        num_prompts: int = 0,
        freeze_patch_embed: bool = False,
        pos_embed_std: float = 0.02,
    ) -> None:
        super().__init__()
        _check_choice("pos_embed", pos_embed, ("sincos", "learned"))
        _check_choice("patch_embed", patch_embed, ("conv", "linear"))
        _check_choice("global_pool", global_pool, ("token", "avg"))
        _check_choice("norm", norm, ("pre", "deepnorm"))
        if img_size % patch_size:
            raise ValueError(f"img_size {img_size} is not a multiple of patch_size {patch_size}")
        if global_pool == "token" and not class_token:
            raise ValueError("global_pool='token' needs class_token=True")
        if num_prompts and global_pool != "avg":
            raise ValueError("prompts pool through PromptsPool: use global_pool='avg' with num_prompts > 0")
        self.img_size = img_size
        self.patch_size = patch_size
        self.grid_size = img_size // patch_size
        self.num_patches = self.grid_size**2
        self.embed_dim = self.num_features = embed_dim
        self.depth = depth
        self.num_heads = num_heads
        self.has_cls = class_token
        self.num_prefix_tokens = int(class_token)
        self.global_pool = global_pool
        self.num_prompts = num_prompts
        self.out_dim = head_dim or embed_dim

        if patch_embed == "conv":
            self.patch_embed: nn.Module = PatchEmbed(img_size, patch_size, 3, embed_dim)
        else:
            self.patch_embed = LinearPatchEmbed(patch_size, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if class_token else None
        if pos_embed == "sincos":
            self.register_buffer("pos_embed", sincos_2d(embed_dim, self.grid_size, cls_token=class_token))
        else:
            self.pos_embed = nn.Parameter(torch.zeros(1, self.num_prefix_tokens + self.num_patches, embed_dim))

        rates = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]  # linear, as timm / MAE
        if norm == "pre":
            norm_layer = partial(nn.LayerNorm, eps=1e-6)
            self.blocks = nn.ModuleList(
                Block(embed_dim, num_heads, mlp_ratio, qkv_bias=qkv_bias, drop_path=r, norm_layer=norm_layer)
                for r in rates
            )
            self.norm: nn.Module = norm_layer(embed_dim)
        else:
            alpha = deepnorm_alpha(depth)
            self.blocks = nn.ModuleList(
                DeepNormBlock(embed_dim, num_heads, alpha, mlp_ratio, qkv_bias=qkv_bias, drop_path=r) for r in rates
            )
            self.norm = nn.Identity()  # each DeepNorm block already ends in a LayerNorm

        self.prompts = nn.Parameter(torch.randn(depth, 2, num_prompts, embed_dim)) if num_prompts else None
        self.prompts_pool = PromptsPool(embed_dim, num_heads, num_prompts) if num_prompts else None
        self.head: nn.Module = (
            nn.Sequential(nn.Linear(embed_dim, head_dim), nn.BatchNorm1d(head_dim, affine=False))
            if head_dim
            else nn.Identity()
        )
        self._init_weights(norm, pos_embed_std)
        if freeze_patch_embed:
            self.patch_embed.requires_grad_(False)

    def _init_weights(self, norm: str, pos_embed_std: float) -> None:
        head_linear = self.head[0] if isinstance(self.head, nn.Sequential) else None
        if norm == "pre":
            for m in self.modules():
                if isinstance(m, nn.Linear):
                    nn.init.xavier_uniform_(m.weight)
                    if m.bias is not None:
                        nn.init.zeros_(m.bias)
                elif isinstance(m, nn.LayerNorm):
                    nn.init.ones_(m.weight)
                    nn.init.zeros_(m.bias)
        else:
            init_deepnorm_(self, deepnorm_beta(self.depth), skip=(head_linear,) if head_linear else ())
        if head_linear is not None:
            nn.init.xavier_uniform_(head_linear.weight)
            nn.init.zeros_(head_linear.bias)
        if isinstance(self.patch_embed, PatchEmbed):
            weight = self.patch_embed.proj.weight
            nn.init.xavier_uniform_(weight.data.view(weight.shape[0], -1))
        if self.cls_token is not None:
            nn.init.normal_(self.cls_token, std=0.02)
        if isinstance(self.pos_embed, nn.Parameter) and pos_embed_std > 0:
            trunc_normal_(self.pos_embed, std=pos_embed_std)

    def patchify(self, imgs: torch.Tensor) -> torch.Tensor:
        """imgs: [B, 3, H, W] -> [B, N, p·p·3] (see :func:`patchify`)."""
        return patchify(imgs, self.patch_size)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, N, p·p·3] -> imgs [B, 3, H, W]."""
        return unpatchify(x, self.patch_size)

    def encode(
        self,
        x: torch.Tensor,
        keep: torch.Tensor | None = None,
        return_layers: Sequence[int] = (),
        ismask: torch.Tensor | None = None,
    ) -> ViTOutput:
        """Run the encoder.

        x: [B, 3, H, W]. keep: [B, K] long indices of the patches to keep (MAE's visible tokens; None =
        all N): the position embedding is added to all N patch tokens first, then only ``keep`` are
        gathered, then the cls token (with its position) is prepended. return_layers: block indices
        (0-based, negatives count from the end) whose patch tokens to return. ismask: [B] long in {0, 1}
        selecting each sample's prompt set (None = zeros, holistic faces); ignored without prompts.
        """
        tokens = self.patch_embed(x) + self.pos_embed[:, self.num_prefix_tokens :]  # [B, N, D]
        batch = tokens.shape[0]
        if keep is not None:
            tokens = torch.gather(tokens, 1, keep[..., None].expand(-1, -1, self.embed_dim))  # [B, K, D]
        if self.cls_token is not None:
            cls = (self.cls_token + self.pos_embed[:, :1]).expand(batch, -1, -1)
            tokens = torch.cat([cls, tokens], dim=1)  # [B, 1 + K, D]
        ismask = torch.zeros(batch, dtype=torch.long, device=tokens.device) if ismask is None else ismask.long()
        prompts = self.prompts[:, ismask] if self.prompts is not None else None  # [depth, B, P, D]

        wanted = [self._block_index(i) for i in return_layers]
        layers: dict[int, torch.Tensor] = {}
        for i, block in enumerate(self.blocks):
            if prompts is not None:
                tokens = block(torch.cat([prompts[i], tokens], dim=1))[:, self.num_prompts :]
            else:
                tokens = block(tokens)
            if i in wanted:
                layers[i] = tokens[:, self.num_prefix_tokens :]
        tokens = self.norm(tokens)

        cls_out = tokens[:, 0] if self.has_cls else None
        patches = tokens[:, self.num_prefix_tokens :]
        if self.prompts_pool is not None:
            pooled = self.prompts_pool(patches, ismask).mean(dim=1)
        elif self.global_pool == "token":
            pooled = cls_out
        else:
            pooled = patches.mean(dim=1)
        return ViTOutput(cls=cls_out, patches=patches, layers=[layers[i] for i in wanted], pooled=pooled)

    def embed_patches(self, patches: torch.Tensor) -> torch.Tensor:
        """Pre-cut patches ``[B, n, p·p·3]`` (:func:`patchify`'s layout, e.g. LAFS's landmark patches) ->
        tokens ``[B, n, D]``: the Linear patch embedding plus the first ``n`` patch positions (1 .. n after a
        cls token's 0)."""
        if not isinstance(self.patch_embed, LinearPatchEmbed):
            raise ValueError("pre-cut patches need a backbone with patch_embed='linear'")
        if patches.shape[1] > self.num_patches:
            raise ValueError(f"{patches.shape[1]} patch tokens, but the backbone has {self.num_patches} positions")
        start = self.num_prefix_tokens
        return self.patch_embed.proj(patches) + self.pos_embed[:, start : start + patches.shape[1]]

    def encode_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Run the encoder on tokens that already carry their positions: ``[B, n, D]`` -> ``[B, out_dim]``
        (cls with its position prepended, blocks, final norm, pooling, head), as ``forward`` does on
        images; prompts are not used."""
        if self.cls_token is not None:
            cls = (self.cls_token + self.pos_embed[:, :1]).expand(tokens.shape[0], -1, -1)
            tokens = torch.cat([cls, tokens], dim=1)
        for block in self.blocks:
            tokens = block(tokens)
        tokens = self.norm(tokens)
        pooled = tokens[:, 0] if self.global_pool == "token" else tokens[:, self.num_prefix_tokens :].mean(dim=1)
        return self.head(pooled)

    def _block_index(self, index: int) -> int:
        if not -self.depth <= index < self.depth:
            raise IndexError(f"block {index} out of range for depth {self.depth}")
        return index % self.depth

    def forward(self, x: torch.Tensor, ismask: torch.Tensor | None = None) -> torch.Tensor:
        """x: [B, 3, H, W] -> [B, head_dim] (or [B, D] without a head): pooled feature through the head."""
        return self.head(self.encode(x, ismask=ismask).pooled)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """Learned position embedding and cls token: fine-tuning leaves them undecayed (MAE's fine-tuning;
        FaceT's lists ``pos_embed`` and has no cls token); prompts are decayed, as in FaceT. Pre-training
        methods decay them (:meth:`facekit.methods.base.Method.no_weight_decay`)."""
        return {name for name, _ in self.named_parameters() if name in ("pos_embed", "cls_token")}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """timm's layer grouping for layer-wise lr decay: the embeddings (cls token, positions, patch
        embedding) are layer 0, block i is layer i + 1; nothing else matches (final norm, prompts,
        PromptsPool, head), so it forms timm's top group L + 1. With decay d and layer i getting
        d^(L + 1 − i) (:func:`facekit.train.optim.param_groups`, timm), block i gets d^(L − i), the embeddings
        d^(L + 1) and the rest the full lr: FaceT's and MAE's layer decay. ``coarse`` is accepted for timm's
        signature and changes nothing."""
        return {"stem": r"^cls_token|^pos_embed|^patch_embed", "blocks": r"^blocks\.(\d+)"}


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
