"""Masked autoencoders: MAE (He et al., CVPR 2022) and FaceT's MAE pre-training (Zhu et al., TIFS 2023).

Reading order: :func:`patch_targets` and :func:`masked_mse` (the loss), :class:`MAEDecoder` (visible
tokens + mask tokens → pixels per patch), :class:`MAE` (the Method), :func:`facet_mae` (FaceT's preset).

Pipeline, with N patches of p·p·3 values and K = N·(1 − mask_ratio) visible ones::

    images [B, 3, H, W] --random_keep--> keep [B, K], mask [B, N] (True = masked)
      --encoder.encode(images, keep)--> patches [B, K, D] (+ cls [B, D])
      --MAEDecoder--> pred [B, N, p·p·3] --masked_mse against patchify(images)--> loss

Released code followed: MAE ``facebookresearch/mae`` @ efb2a80 (``models_mae.py``), FaceT
``zyainfal/Joint-Holistic-and-Masked-Face-Recognition`` @ 3126602 (``code/VIT/mim_pytorch.py``, class
``MAE``). Differences from FaceT's, neither changing what is computed or its distribution:

- FaceT's mask hides the patches of *lowest* noise, ``int(N·ratio)`` of them; here the lowest noise is
  kept (MAE's rule), ``int(N·(1 − ratio))`` patches (the same counts at 196 patches and ratio 0.75).
- FaceT puts the mask tokens before the visible ones in its decoder sequence; here every token sits at
  its patch's place. The decoder blocks see no order (positions are added to the tokens), so each
  token's output is the same.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any, ClassVar

import numpy as np
import torch
from timm.models.vision_transformer import Block
from torch import nn

from facekit.data.views import IMAGENET_MEAN, IMAGENET_STD, MAEView, ResizeFlipView
from facekit.methods.base import METHODS, Method, StepValues
from facekit.nn.backbones import BACKBONES
from facekit.nn.facet import DeepNormBlock, deepnorm_alpha, deepnorm_beta, init_deepnorm_
from facekit.nn.masking import random_keep
from facekit.nn.pos_embed import sincos_2d
from facekit.nn.vit import ViT

_layer_norm = partial(nn.LayerNorm, eps=1e-6)  # MAE's decoder norm


def patch_targets(patches: torch.Tensor, norm_pix: bool, eps: float = 1e-6) -> torch.Tensor:
    """Reconstruction targets ``[B, N, P]`` from image patches ``[B, N, P]``.

    With ``norm_pix`` each patch is standardised by its own mean and (unbiased, as in the MAE code)
    variance: ``(x − mean) / sqrt(var + eps)``; otherwise the patches are returned unchanged.
    """
    if not norm_pix:
        return patches
    mean = patches.mean(dim=-1, keepdim=True)
    var = patches.var(dim=-1, keepdim=True)
    return (patches - mean) / (var + eps).sqrt()


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error per patch, averaged over the masked patches only.

    pred, target: ``[B, N, P]``; mask: ``[B, N]`` bool, True = masked (the only patches that count).
    """
    per_patch = (pred - target).pow(2).mean(dim=-1)
    weight = mask.to(per_patch.dtype)
    return (per_patch * weight).sum() / weight.sum()


class MAEDecoder(nn.Module):
    """Pixel decoder: encoded visible tokens plus mask tokens at fixed 2-D sin-cos positions → pixels.

    ``norm="pre"`` (MAE): pre-norm timm Blocks, then a final LayerNorm; every Linear Xavier-uniform.
    ``norm="deepnorm"`` (FaceT): DeepNorm blocks, whose last LayerNorm ends the stack, so no final norm;
    the blocks get DeepNorm's init, ``embed`` and ``pred`` keep PyTorch's default Linear init (FaceT's
    ``enc_to_dec`` and ``to_pixels``). ``pos_on_visible=False`` follows FaceT's code, which adds decoder
    positions to the mask tokens only (visible tokens keep just the encoder's positions).
    ``pos_rows_first``: the position table's row half comes first (FaceT's ``PositionEmbed2D``; MAE puts
    the column first). A cls token, when given, is prepended with no position (MAE's zero slot) and
    dropped before the pixel head.
    """

    def __init__(
        self,
        in_dim: int,
        grid_size: int | tuple[int, int],
        patch_size: int,
        dim: int = 512,
        depth: int = 8,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        norm: str = "pre",
        pos_on_visible: bool = True,
        pos_rows_first: bool = False,
        mask_token_std: float = 0.02,
    ) -> None:
        super().__init__()
        if norm not in ("pre", "deepnorm"):
            raise ValueError(f"decoder norm must be 'pre' or 'deepnorm', got {norm!r}")
        self.pos_on_visible = pos_on_visible
        self.embed = nn.Linear(in_dim, dim)
        self.mask_token = nn.Parameter(torch.randn(1, 1, dim) * mask_token_std)
        self.register_buffer("pos_embed", sincos_2d(dim, grid_size, rows_first=pos_rows_first), persistent=False)
        if norm == "pre":
            self.blocks = nn.ModuleList(
                Block(dim, num_heads, mlp_ratio, qkv_bias=True, norm_layer=_layer_norm) for _ in range(depth)
            )
            self.norm: nn.Module = _layer_norm(dim)
            self.blocks.apply(_xavier_linear)
        else:
            alpha = deepnorm_alpha(depth)
            self.blocks = nn.ModuleList(DeepNormBlock(dim, num_heads, alpha, mlp_ratio) for _ in range(depth))
            init_deepnorm_(self.blocks, deepnorm_beta(depth))
            self.norm = nn.Identity()
        self.pred = nn.Linear(dim, patch_size * patch_size * 3)
        if norm == "pre":
            _xavier_linear(self.embed)
            _xavier_linear(self.pred)

    def forward(self, tokens: torch.Tensor, keep: torch.Tensor, cls: torch.Tensor | None = None) -> torch.Tensor:
        """tokens: ``[B, K, D]`` encoded visible patches; keep: ``[B, K]`` their indices in ``[0, N)``;
        cls: ``[B, D]`` or None. Returns ``[B, N, p·p·3]`` predictions for every patch."""
        batch, dim = tokens.shape[0], self.mask_token.shape[-1]
        num_patches = self.pos_embed.shape[1]
        visible = self.embed(tokens)
        index = keep.unsqueeze(-1).expand(-1, -1, dim)
        x = self.mask_token.to(visible.dtype).expand(batch, num_patches, dim).scatter(1, index, visible)
        if self.pos_on_visible:
            x = x + self.pos_embed
        else:
            masked = torch.ones(batch, num_patches, 1, device=x.device, dtype=x.dtype)
            x = x + self.pos_embed * masked.scatter(1, keep.unsqueeze(-1), 0.0)
        if cls is not None:
            x = torch.cat([self.embed(cls).unsqueeze(1), x], dim=1)
        for block in self.blocks:
            x = block(x)
        x = self.pred(self.norm(x))
        return x[:, 1:] if cls is not None else x


def _xavier_linear(module: nn.Module) -> None:
    """MAE's init: Xavier-uniform weights and zero biases for every ``nn.Linear`` it is applied to."""
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


@METHODS.register("mae")
class MAE(Method):
    """Masked autoencoder pre-training of a facekit :class:`~facekit.nn.vit.ViT`.

    The encoder sees the ``K = N·(1 − mask_ratio)`` visible patches (random per sample); the decoder
    (:class:`MAEDecoder`) predicts all N patches; the loss is the per-patch MSE averaged over masked
    patches, against raw patches or, with ``norm_pix_loss``, per-patch standardised ones.

    Defaults are MAE's (He et al.): decoder 512-d, 8 pre-norm blocks, 16 heads, MLP 4, mask tokens
    ~ N(0, 0.02²), ImageNet mean/std, RandomResizedCrop scale (0.2, 1). ``image_size`` overrides the
    backbone's ``img_size``. ``crop_scale=None`` replaces the random crop by resize + flip. FaceT's
    variant is the :func:`facet_mae` preset.

    Released recipe (:attr:`recipe`, MAE's ``PRETRAIN.md``): batch 4096, 800 epochs, AdamW betas (0.9, 0.95),
    base lr 1.5e-4 (lr = blr · batch / 256), 40 warm-up epochs, cosine to 0, weight decay 0.05 (none on
    biases and norms; cls and mask tokens decayed), no gradient clipping.
    """

    recipe: ClassVar[dict[str, Any]] = {
        "batch_size": 4096,
        "epochs": 800,
        "optimizer": "adamw",
        "blr": 1.5e-4,
        "betas": (0.9, 0.95),
        "min_lr": 0.0,
        "warmup_epochs": 40,
        "weight_decay": 0.05,
    }

    def __init__(
        self,
        backbone: str = "vit_small_patch16_224",
        backbone_kwargs: dict[str, Any] | None = None,
        mask_ratio: float = 0.75,
        decoder_dim: int = 512,
        decoder_depth: int = 8,
        decoder_heads: int = 16,
        decoder_mlp_ratio: float = 4.0,
        decoder_norm: str = "pre",
        decoder_pos_on_visible: bool = True,
        decoder_pos_rows_first: bool = False,
        mask_token_std: float = 0.02,
        norm_pix_loss: bool = False,
        image_size: int | None = None,
        crop_scale: tuple[float, float] | None = (0.2, 1.0),
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
    ) -> None:
        super().__init__()
        if not 0.0 < mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in (0, 1), got {mask_ratio}")
        kwargs = dict(backbone_kwargs or {})
        if image_size is not None:
            kwargs["img_size"] = image_size
        self.encoder: ViT = BACKBONES.create(backbone, **kwargs)
        self.decoder = MAEDecoder(
            self.encoder.embed_dim,
            self.encoder.grid_size,
            self.encoder.patch_size,
            dim=decoder_dim,
            depth=decoder_depth,
            num_heads=decoder_heads,
            mlp_ratio=decoder_mlp_ratio,
            norm=decoder_norm,
            pos_on_visible=decoder_pos_on_visible,
            pos_rows_first=decoder_pos_rows_first,
            mask_token_std=mask_token_std,
        )
        self.mask_ratio = mask_ratio
        self.norm_pix_loss = norm_pix_loss
        self.crop_scale = crop_scale
        self.mean, self.std = tuple(mean), tuple(std)

    def views(self) -> Callable[[np.ndarray], dict[str, torch.Tensor]]:
        """MAEView (random resized crop + flip) at the encoder's size; ResizeFlipView if ``crop_scale`` is None."""
        size = self.encoder.img_size
        if self.crop_scale is None:
            return ResizeFlipView(size, mean=self.mean, std=self.std)
        return MAEView(size, scale=self.crop_scale, mean=self.mean, std=self.std)

    def predict(
        self, images: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mask, encode and decode ``images [B, 3, H, W]`` → (pred ``[B, N, p·p·3]``, mask ``[B, N]`` bool)."""
        num_patches = self.encoder.num_patches
        keep, mask, _ = random_keep(images.shape[0], num_patches, self.mask_ratio, images.device, generator)
        out = self.encoder.encode(images, keep=keep)
        return self.decoder(out.patches, keep, out.cls), mask

    def loss(self, images: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Masked-patch MSE of ``pred [B, N, P]`` against the (optionally normalised) patches of ``images``."""
        return masked_mse(pred, patch_targets(self.encoder.patchify(images), self.norm_pix_loss), mask)

    def forward(self, batch: dict[str, Any], hp: StepValues) -> dict[str, torch.Tensor]:
        images = batch["image"]
        pred, mask = self.predict(images)
        return {"loss": self.loss(images, pred, mask)}

    @torch.no_grad()
    def reconstruct(
        self, images: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """For visualising: (predicted images ``[B, 3, H, W]``, mask ``[B, N]`` bool, True = masked).

        Predictions are in the input's (normalised) pixel space; with ``norm_pix_loss`` each predicted
        patch is mapped back with the mean and std of the corresponding input patch.
        """
        pred, mask = self.predict(images, generator)
        if self.norm_pix_loss:
            patches = self.encoder.patchify(images)
            pred = pred * (patches.var(dim=-1, keepdim=True) + 1e-6).sqrt() + patches.mean(dim=-1, keepdim=True)
        return self.encoder.unpatchify(pred), mask

    def export_backbone(self) -> nn.Module:
        return self.encoder


#: FaceT's MAE (``mim_pytorch.MAE`` in the released code): facet_base encoder (112 px, patch 8, no cls,
#: DeepNorm, so no final norm; pre-trained without prompts or the 512-d head), decoder 516-d, 8 DeepNorm
#: blocks, 12 heads, MLP 3, row-first sin-cos positions on the mask tokens only, mask tokens ~ N(0, 1),
#: plain MSE on masked patches, flip + (0.5, 0.5) normalisation, no crop. FaceT warms the lr up with
#: ``np.linspace(0, base, W)``, one step ahead of the loop's ``base · i / W`` (:mod:`facekit.train.schedules`).
FACET_MAE: dict[str, Any] = {
    "backbone": "facet_base",
    "backbone_kwargs": {"num_prompts": 0, "head_dim": None},
    "decoder_dim": 516,
    "decoder_depth": 8,
    "decoder_heads": 12,
    "decoder_mlp_ratio": 3.0,
    "decoder_norm": "deepnorm",
    "decoder_pos_on_visible": False,
    "decoder_pos_rows_first": True,
    "mask_token_std": 1.0,
    "norm_pix_loss": False,
    "crop_scale": None,
    "mean": (0.5, 0.5, 0.5),
    "std": (0.5, 0.5, 0.5),
}


@METHODS.register("facet_mae")
def facet_mae(**overrides: Any) -> MAE:
    """:class:`MAE` with FaceT's settings (:data:`FACET_MAE`); keyword arguments override them
    (``backbone_kwargs`` entries are merged into the preset's, e.g. ``backbone_kwargs={"depth": 2}``)."""
    backbone_kwargs = {**FACET_MAE["backbone_kwargs"], **(overrides.pop("backbone_kwargs", None) or {})}
    return MAE(**{**FACET_MAE, **overrides, "backbone_kwargs": backbone_kwargs})
