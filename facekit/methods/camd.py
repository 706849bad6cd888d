"""CAMD: Context-Aware Masked Distillation (Wang et al., TCSVT 2025), a facekit :class:`Method`.

CAMD is SiameseIM (predict a full view's momentum features from a masked, cropped view, UniGrad loss)
plus AGMD, a layer-wise distillation of the momentum encoder's tokens into the online encoder's. It
follows the released code (``mumumu-wss/CAMD`` @ 537a7cb) where that differs from the paper.

Per sample (:class:`CAMDViews`): ``view1`` a random crop (scale 0.08-0.6) with strong colour
augmentation, ``view2`` the whole face, each with its crop box and flip, and a BEiT block mask hiding
118 of view 1's 196 patches. Per batch (:meth:`CAMD.forward`)::

    online:  view1 visible patches + cls -> ViT (patch tokens of blocks 2, 5, 8, 11 kept: "local")
             -> decoder_embed -> projector (2 blocks)
             -> [cls + pos | visible + pos | N mask tokens + view-2 positions in view-1 coordinates]
             -> predictor (4 blocks) -> decoder_pred -> pred [B, N, Dd] (the last N tokens)
    target:  view2 (all patches) + cls -> EMA ViT ("global" tokens of the same blocks)
             -> EMA decoder_embed -> EMA projector -> target [B, N, Dd] (patch tokens), no gradient
    loss  =  1 * UniGrad(pred, target) + 0.25 * global UniGrad + w * AGMD,  w = 0.1 if AGMD < 1 else 0.01

Projector and predictor blocks are timm ``Block`` s whose norms are BatchNorm1d over all tokens of the
batch (:class:`TokenBatchNorm`; the released code converts them to SyncBatchNorm under DDP). The fixed
2-D sin-cos tables of the encoder and the decoder put the row half first (the released
``util/pos_embed.py``, unlike MAE's), the order of the relative embedding's rows and columns.

Released recipe (:attr:`CAMD.recipe`; the loop owns these): ViT-B/16 at 224, batch 1024, 400 epochs
(fast: 50), 5 warm-up epochs, AdamW betas (0.9, 0.95), base lr 3.125e-5 (lr = blr * batch / 256 =
1.25e-4), weight decay 0.05 (none on biases and norms), gradient clipping 1.0, AMP, EMA momentum from
0.995 to 1 (cosine). The EMA momentum is the loop's ``hp.momentum``, its cosine from the run's
``ema_momentum`` to ``ema_momentum_end`` (the released ``1 - (1 - mm) * (1 + cos(pi * t / T)) / 2``; the
loop owns the schedule, one for every method), applied to the backbone, ``decoder_embed`` and projector
once per optimizer step, at its first micro-batch, before the target forward, as released.

The EMA momentum is the loop's ``hp.momentum``, the released ``1 - (1 - 0.995) * (1 + cos(pi * t / T)) / 2``
(t / T = step / steps; base ``ema_momentum``, 0.995 in the recipe), applied once per optimizer step before
the target forward, as released.

Deviations from the released code, each on purpose:

- The released target also keeps an EMA mask token it never reads; it is left out.
- The released global loss skips the target LayerNorm that the token loss applies; that is kept
  (``global_norm_target=False``). It averages ``pred`` and ``target`` over the *batch* axis
  (``global_mean="batch"``, giving ``[N, Dd]``); ``global_mean="token"`` averages over tokens
  (``[B, Dd]``), which is what "global" suggests.
- facekit's ViT applies its final LayerNorm to the tokens it returns; the released encoder has no
  final norm before ``decoder_embed`` (its fine-tuning starts a fresh ``fc_norm``). Kept so that the
  exported backbone's final norm, which kNN and fine-tuning read, is trained; effect: one more learned
  LayerNorm before ``decoder_embed`` on both branches. AGMD reads the per-block tokens before that
  norm, as released.
- What would not run as released, fixed here: the engine unpacks five values (a ``pixel_loss`` the
  model never computes) from a model returning four; an AGMD loss of exactly 1.0 got no weight
  (neither ``> 1`` nor ``< 1``); ``util/masking_generator.py`` ships only as a ``.pyc``; ``np.float``
  (removed from numpy) in the position embedding; ``from turtle import update`` (needs Tk) in the model
  and engine; an unconditional ``torch.cuda.synchronize()``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
from timm.models.vision_transformer import Block
from torch import nn

from facekit.data.augment import normalize_batch
from facekit.data.views import VGGFACE2_MEAN, VGGFACE2_STD, TwoViews, ViewRecipe
from facekit.distributed import all_reduce_mean
from facekit.methods.base import METHODS, Method, StepValues
from facekit.nn.backbones import BACKBONES
from facekit.nn.ema import copy_as_target, ema_update
from facekit.nn.masking import block_mask
from facekit.nn.pos_embed import sincos_1d, sincos_2d
from facekit.nn.topk_attention import MultiHeadAttentionTopK
from facekit.nn.vit import ViT

#: The fraction of patches CAMD hides: 118 of 196 at 224 / 16.
MASK_FRACTION = 118 / 196


class CAMDViews:
    """CAMD's per-sample transform: RGB uint8 ``[H, W, 3]`` -> dict of tensors (picklable).

    ``view1``, ``view2``: float32 ``[3, S, S]`` (uint8 with ``normalize=False``); ``view1_box``,
    ``view2_box``: float32 [5] ``(top, left, height, width)`` as fractions of the source, then flipped
    (0/1); ``mask``: bool ``[G * G]``, ``num_masked`` True (hidden from the online encoder).

    Both views get an independent horizontal flip. View 1: RandomResizedCrop(S, ``crop_scale``) bicubic,
    ColorJitter(0.4, 0.4, 0.2, 0.1) p=0.8, grayscale p=0.2, blur sigma in [0.1, 2] p=1. View 2: the
    whole face, same jitter and grayscale, blur p=0.1, solarize p=0.2. VGGFace2 mean/std. The released
    code flips before cropping; cropping first and flipping the crop gives the same distribution, and
    the box is then in the unflipped source. Randomness comes from the global ``np.random`` state.
    """

    def __init__(
        self,
        size: int = 224,
        patch_size: int = 16,
        num_masked: int | None = None,
        crop_scale: tuple[float, float] = (0.08, 0.6),
        normalize: bool = True,
    ) -> None:
        self.grid = size // patch_size
        self.num_masked = default_num_masked(self.grid**2) if num_masked is None else num_masked
        common: dict[str, Any] = dict(
            size=size, jitter_p=0.8, gray_p=0.2, mean=VGGFACE2_MEAN, std=VGGFACE2_STD, normalize=normalize
        )
        view1 = ViewRecipe(scale=crop_scale, blur_p=1.0, **common)
        view2 = ViewRecipe(scale=(1.0, 1.0), blur_p=0.1, solarize_p=0.2, **common)
        self.views = TwoViews(view1, view2)

    def __call__(self, rgb: np.ndarray) -> dict[str, torch.Tensor]:
        out = self.views(rgb)
        rng = np.random.default_rng(np.random.randint(0, 2**31))
        mask = block_mask(self.grid, self.num_masked, rng=rng)  # BEiT blocks of >= 16 patches, topped up
        out["mask"] = torch.from_numpy(mask.reshape(-1))
        return out


def default_num_masked(num_patches: int) -> int:
    """CAMD's 118 hidden patches of 196, scaled to ``num_patches`` (rounded)."""
    return round(num_patches * MASK_FRACTION)


def relative_positions(
    box1: torch.Tensor, box2: torch.Tensor, grid: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """View 2's patch centres in view 1's patch coordinates, and the relative crop scale.

    box1, box2: ``[B, 5]`` ``(top, left, height, width, flipped)`` in fractions of the source image.
    Returns rows ``[B, G*G]`` and columns ``[B, G*G]`` (row-major over view 2's grid; patch ``(i, j)`` of
    view 1 sits at ``(i, j)``) and ``dh = h2 / h1``, ``dw = w2 / w1`` ``[B]``. A flipped view shows
    source column ``left + (1 - u) * width`` at its fractional column ``u``. This is the released
    ``(delta_i, delta_j, delta_h, delta_w, relative_flip, flip_delta_j)`` mapping, written in source
    coordinates.
    """
    box1, box2 = box1.float(), box2.float()
    t1, l1, h1, w1, f1 = box1.unbind(-1)
    t2, l2, h2, w2, f2 = box2.unbind(-1)
    centres = (torch.arange(grid, dtype=torch.float32, device=box1.device) + 0.5) / grid  # [G]
    u, v = centres.repeat_interleave(grid), centres.repeat(grid)  # [G*G] row, column fractions
    v2 = torch.where(f2[:, None] > 0.5, 1 - v, v)  # [B, G*G] unflipped column fraction in view 2
    y = t2[:, None] + u * h2[:, None]  # source row
    x = l2[:, None] + v2 * w2[:, None]  # source column
    v1 = (x - l1[:, None]) / w1[:, None]
    v1 = torch.where(f1[:, None] > 0.5, 1 - v1, v1)
    rows = (y - t1[:, None]) / h1[:, None] * grid - 0.5
    cols = v1 * grid - 0.5
    return rows, cols, h2 / h1, w2 / w1


def relative_pos_embed(
    rows: torch.Tensor, cols: torch.Tensor, dh: torch.Tensor, dw: torch.Tensor, dim: int
) -> torch.Tensor:
    """Sin-cos embedding ``[B, N, 2 * dim]`` of positions ``rows, cols [B, N]`` and scales ``dh, dw [B]``.

    Four ``dim / 2`` blocks: rows, columns, ``10 * log(dh)``, ``10 * log(dw)`` (the scales repeated for
    every token), as released.
    """
    b, n = rows.shape
    parts = [sincos_1d(dim // 2, p.reshape(-1)).view(b, n, dim // 2) for p in (rows, cols)]
    for scale in (dh, dw):
        parts.append(sincos_1d(dim // 2, 10 * torch.log(scale)).view(b, 1, dim // 2).expand(b, n, -1))
    return torch.cat(parts, dim=-1)


def unigrad_loss(
    pred: torch.Tensor, target: torch.Tensor, neg_weight: float = 0.02, normalize_target: bool = True
) -> torch.Tensor:
    """UniGrad: ``[mean ||p - t||^2 + neg_weight * mean(p^T C p)] / D`` over all rows, ``C = t^T t / M``.

    pred, target: ``[..., D]``, flattened to ``M`` rows; ``t`` is the target after a LayerNorm without
    affine (eps 1e-5) when ``normalize_target``. ``C [D, D]`` is averaged over processes. Computed in
    float32; no gradient reaches ``target``.
    """
    with torch.autocast(pred.device.type, enabled=False):
        d = pred.shape[-1]
        p = pred.float().reshape(-1, d)
        t = target.detach().float().reshape(-1, d)
        if normalize_target:
            t = F.layer_norm(t, (d,), eps=1e-5)
        correlation = all_reduce_mean(t.T @ t / t.shape[0])  # [D, D]
        positive = (p - t).pow(2).sum(-1).mean()
        negative = ((p @ correlation) * p).sum(-1).mean()
        return (positive + neg_weight * negative) / d


def global_unigrad_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    neg_weight: float = 0.02,
    mean: Literal["batch", "token"] = "batch",
    normalize_target: bool = False,
) -> torch.Tensor:
    """CAMD's "global" loss: :func:`unigrad_loss` on ``pred``, ``target [B, N, D]`` averaged over one axis.

    ``mean="batch"`` (released) averages over the batch axis, leaving ``N`` rows ``[N, D]``;
    ``mean="token"`` over the tokens, leaving one row per image ``[B, D]``. The released code does not
    LayerNorm this target (``normalize_target=False``).
    """
    if mean not in ("batch", "token"):
        raise ValueError(f"mean must be 'batch' or 'token', got {mean!r}")
    dim = 0 if mean == "batch" else 1
    return unigrad_loss(pred.mean(dim), target.mean(dim), neg_weight, normalize_target)


def agmd_weight(
    loss_agmd: torch.Tensor, threshold: float = 1.0, weights: tuple[float, float] = (0.1, 0.01)
) -> torch.Tensor:
    """The adaptive AGMD weight: ``weights[0]`` while ``loss_agmd < threshold``, else ``weights[1]``.

    A detached scalar tensor (no host sync). The released engine gave a loss of exactly 1 no weight.
    """
    return torch.where(loss_agmd.detach() < threshold, weights[0], weights[1]).to(loss_agmd.dtype)


class TokenBatchNorm(nn.BatchNorm1d):
    """BatchNorm1d over every token of the batch: ``[B, L, C]`` -> ``[B, L, C]``, in float32."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):
            return super().forward(x.float().transpose(1, 2)).transpose(1, 2)


def _blocks(dim: int, depth: int, heads: int, mlp_ratio: float) -> nn.Sequential:
    return nn.Sequential(
        *[Block(dim, heads, mlp_ratio, qkv_bias=True, norm_layer=TokenBatchNorm) for _ in range(depth)]
    )


@METHODS.register("camd")
class CAMD(Method):
    """Context-Aware Masked Distillation; see the module docstring (views normalised with VGGFace2's mean / std).

    backbone / backbone_kwargs: a :data:`facekit.nn.backbones.BACKBONES` name and overrides (a class token
    always; by default sin-cos positions and a patch embedding frozen at its random init, as released).
    decoder_dim ``Dd`` (768 released), decoder_heads 16, projector_depth 2, predictor_depth 4.
    num_masked: patches hidden from view 1 (default 118/196 of them). distill_layers: blocks AGMD
    distils (2, 5, 8, 11), top_k 2. neg_weight 0.02; unigrad_weight 1, global_weight 0.25;
    distill_weights ``(below, above)`` the AGMD ``distill_threshold`` 1; global_mean /
    global_norm_target: see the module docstring; crop_scale: view 1's
    RandomResizedCrop scale; normalize: whether views are normalised in the workers (else uint8 views
    are normalised here, on the device).
    """

    mean, std = VGGFACE2_MEAN, VGGFACE2_STD
    recipe: ClassVar[dict[str, Any]] = {
        "batch_size": 1024,
        "epochs": 400,
        "warmup_epochs": 5,
        "blr": 3.125e-5,
        "betas": (0.9, 0.95),
        "weight_decay": 0.05,
        "clip_grad": 1.0,
        "ema_momentum": 0.995,
    }

    def __init__(
        self,
        backbone: str = "vit_base_patch16_224",
        backbone_kwargs: dict[str, Any] | None = None,
        *,
        decoder_dim: int = 768,
        decoder_heads: int = 16,
        projector_depth: int = 2,
        predictor_depth: int = 4,
        mlp_ratio: float = 4.0,
        num_masked: int | None = None,
        distill_layers: Sequence[int] = (2, 5, 8, 11),
        top_k: int = 2,
        neg_weight: float = 0.02,
        unigrad_weight: float = 1.0,
        global_weight: float = 0.25,
        distill_weights: tuple[float, float] = (0.1, 0.01),
        distill_threshold: float = 1.0,
        global_mean: Literal["batch", "token"] = "batch",
        global_norm_target: bool = False,
        crop_scale: tuple[float, float] = (0.08, 0.6),
        normalize: bool = True,
    ) -> None:
        super().__init__()
        kwargs = {"pos_embed": "sincos", "freeze_patch_embed": True, **(backbone_kwargs or {}), "class_token": True}
        self.backbone: ViT = BACKBONES.create(backbone, **kwargs)
        vit = self.backbone
        if max(distill_layers) >= vit.depth:
            raise ValueError(f"distill_layers {tuple(distill_layers)} need a ViT deeper than {vit.depth}")
        self.grid = vit.grid_size
        self.num_patches = vit.num_patches
        self.num_masked = default_num_masked(self.num_patches) if num_masked is None else num_masked
        self.distill_layers = tuple(distill_layers)
        self.neg_weight, self.unigrad_weight, self.global_weight = neg_weight, unigrad_weight, global_weight
        self.distill_weights, self.distill_threshold = distill_weights, distill_threshold
        self.global_mean, self.global_norm_target = global_mean, global_norm_target
        self.crop_scale, self.normalize = crop_scale, normalize

        self.decoder_embed = nn.Linear(vit.embed_dim, decoder_dim)
        self.projector = _blocks(decoder_dim, projector_depth, decoder_heads, mlp_ratio)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        self.decoder_pos_mlp = nn.Linear(2 * decoder_dim, decoder_dim)
        self.predictor = _blocks(decoder_dim, predictor_depth, decoder_heads, mlp_ratio)
        self.decoder_pred = nn.Linear(decoder_dim, decoder_dim)
        self.topk_attention = MultiHeadAttentionTopK(vit.embed_dim, vit.num_heads, top_k)
        if not isinstance(vit.pos_embed, nn.Parameter):  # fixed sin-cos: the released row-first table
            vit.pos_embed.copy_(sincos_2d(vit.embed_dim, self.grid, cls_token=True, rows_first=True))
        pos = sincos_2d(decoder_dim, self.grid, cls_token=True, rows_first=True)[0]
        self.register_buffer("decoder_pos_embed", pos, persistent=False)  # [1 + N, Dd]
        heads = (self.decoder_embed, self.projector, self.decoder_pos_mlp, self.predictor, self.decoder_pred)
        for module in (*heads, self.topk_attention):
            module.apply(_xavier_init)
        nn.init.normal_(self.mask_token, std=0.02)

        self.target_backbone = copy_as_target(self.backbone)
        self.target_decoder_embed = copy_as_target(self.decoder_embed)
        self.target_projector = copy_as_target(self.projector)
        self._ema_step = -1  # the optimizer step whose EMA update has run

    def views(self) -> CAMDViews:
        vit = self.backbone
        return CAMDViews(vit.img_size, vit.patch_size, self.num_masked, self.crop_scale, self.normalize)

    def export_backbone(self) -> nn.Module:
        return self.backbone

    @torch.no_grad()
    def update_target(self, momentum: float) -> None:
        """EMA of the online backbone, decoder_embed and projector into their target copies."""
        for target, online in (
            (self.target_backbone, self.backbone),
            (self.target_decoder_embed, self.decoder_embed),
            (self.target_projector, self.projector),
        ):
            ema_update(target, online, momentum)

    def forward(self, batch: dict[str, Any], hp: StepValues) -> dict[str, torch.Tensor | float]:
        """batch: ``view1``, ``view2`` ``[B, 3, S, S]``, ``view1_box``, ``view2_box`` ``[B, 5]``, ``mask``
        ``[B, N]`` (True = hidden); returns ``loss`` and its detached parts."""
        x1, x2 = self._input(batch["view1"]), self._input(batch["view2"])
        mask = batch["mask"].reshape(x1.shape[0], -1).bool()
        if self.training and hp.step != self._ema_step:  # once per optimizer step, before the target
            self.update_target(hp.momentum)
            self._ema_step = hp.step

        local, pred = self._online(x1, mask, batch["view1_box"], batch["view2_box"])
        with torch.no_grad():
            glob, target = self._target(x2)

        loss_unigrad = unigrad_loss(pred, target, self.neg_weight)
        loss_global = global_unigrad_loss(pred, target, self.neg_weight, self.global_mean, self.global_norm_target)
        loss_agmd = self.agmd_loss(local, glob)
        weight = agmd_weight(loss_agmd, self.distill_threshold, self.distill_weights)
        loss = self.unigrad_weight * loss_unigrad + self.global_weight * loss_global + weight * loss_agmd
        parts = {"unigrad": loss_unigrad, "global": loss_global, "agmd": loss_agmd, "agmd_weight": weight}
        parts = {k: v.detach() for k, v in parts.items()}
        return {"loss": loss, **parts, "momentum": hp.momentum}

    def _input(self, x: torch.Tensor) -> torch.Tensor:
        return normalize_batch(x, self.mean, self.std) if x.dtype == torch.uint8 else x

    def _online(
        self, x1: torch.Tensor, mask: torch.Tensor, box1: torch.Tensor, box2: torch.Tensor
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Masked view 1 -> (local tokens of the distilled blocks ``[B, K, D]`` each, pred ``[B, N, Dd]``)."""
        b = x1.shape[0]
        hidden_ok = (mask.sum(1) == self.num_masked).all()
        torch._assert_async(hidden_ok, f"every image must hide num_masked={self.num_masked} patches")  # on the device
        keep = torch.argsort(mask.int(), dim=1, stable=True)[:, : self.num_patches - self.num_masked]  # [B, K]
        out = self.backbone.encode(x1, keep=keep, return_layers=self.distill_layers)
        tokens = self.projector(self.decoder_embed(torch.cat([out.cls[:, None], out.patches], 1)))  # [B, 1+K, Dd]
        pos = self.decoder_pos_embed.to(tokens.dtype)
        rel = relative_pos_embed(*relative_positions(box1, box2, self.grid), tokens.shape[-1])
        queries = self.mask_token.expand(b, self.num_patches, -1) + self.decoder_pos_mlp(rel.to(tokens.dtype))
        x = torch.cat([tokens[:, :1] + pos[0], tokens[:, 1:] + pos[1:][keep], queries], dim=1)
        pred = self.decoder_pred(self.predictor(x)[:, -self.num_patches :])
        return out.layers, pred

    def _target(self, x2: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Whole view 2 -> (global tokens of the distilled blocks ``[B, N, D]`` each, target ``[B, N, Dd]``)."""
        out = self.target_backbone.encode(x2, return_layers=self.distill_layers)
        tokens = torch.cat([out.cls[:, None], out.patches], 1)
        return out.layers, self.target_projector(self.target_decoder_embed(tokens))[:, 1:]

    def agmd_loss(self, local: Sequence[torch.Tensor], glob: Sequence[torch.Tensor]) -> torch.Tensor:
        """Sum over layers of ``MSE(mean_tokens(local), mean_tokens(TopK-attention(local -> global)))``.

        local: ``[B, K, D]`` per layer (online, masked view 1); glob: ``[B, N, D]`` (target, view 2).
        """
        losses = [
            F.mse_loss(lo.float().mean(1), self.topk_attention(lo, gl).float().mean(1))
            for lo, gl in zip(local, glob, strict=True)
        ]
        return torch.stack(losses).sum()


def _xavier_init(module: nn.Module) -> None:
    """The released initialisation of CAMD's heads: Xavier-uniform linear weights, zero biases."""
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
