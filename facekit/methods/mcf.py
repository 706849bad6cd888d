"""MCF, Mask Contrastive Face (Wang et al., ACM MM 2023), as its released code trains it.

Released code: ``nomewang/MCF`` @ bc8706f (``models_mcf.py``, ``models_moco.py``, ``main_pretrain.py``,
``engine_pretrain.py``, README). An MAE-style ViT (75% random mask) with a pixel decoder is trained by

- a perceptual ("CPL") loss: the decoder's whole predicted image and the input go through a frozen,
  pre-trained timm ViT; the token maps after blocks 2, 5, 8, 11 (cls included, ``[B, 1+N, C]``), each
  L2-normalised along the token axis, are compared by MSE and summed over layers;
- a MoCo-v3 contrastive loss: ``q = predictor(projector(online cls))`` of the masked view against
  ``k = target_projector(target cls)`` of the same image under an independent 75% mask, the target
  an EMA of the online encoder and projector; InfoNCE over globally gathered keys, T = 0.2, ×2T.

Total: ``1000·L_perceptual + L_contrastive``. The released code has no pixel-MSE term, although the
paper describes one: ``pixel_loss_weight > 0`` adds it (masked-patch MSE, as in MAE).

Target network, as released: every training forward first computes ``q``, then (no gradient) moves the
target ``t ← m·t + (1 − m)·online`` with the constant ``momentum`` m = 0.99 (forward's default; the
script's ``--moco_m`` never reaches it), then computes the keys with the moved target. The update is per
forward, not per optimizer step: with ``accum_steps`` micro-batches a step moves the target
``accum_steps`` times (the README recipe's 8: 0.99⁸ ≈ 0.923 per step), and each micro-batch's keys see
the target as moved so far. The loop's ``hp.momentum`` schedule is not used. The target's parameters are
in the state dict, so a resumed run continues the same sequence. Projector and predictor Linears are
Xavier-uniform (no biases), as the released ``_init_weights`` leaves them.

Released recipe (:attr:`MCF.recipe`; the loop owns these): ViT-B/16 at 224, batch 64 per GPU on 8 GPUs
(one process here: 512 per micro-batch, so the 512 InfoNCE keys of a released forward) × 8 accumulated
micro-batches = 4096, 16 epochs, 1 warm-up epoch, base lr 1.5e-4 (lr = blr × 4096 / 256), cosine to 0,
AdamW betas (0.9, 0.95), weight decay 0.05 (none on biases and norms), no gradient clipping, AMP.

Deviations from the released code, each on purpose:

- The target moves only in training mode: an evaluation forward (``eval()``) leaves it alone. The
  released code never runs its forward outside training.
- A step the loop skips for a non-finite loss has already moved the target (towards the unchanged
  online weights); the released code stops the run instead. Both are seen by ``tests/methods/test_mcf.py``.
- AMP is bf16 autocast (the loop's), not fp16 with a loss scaler; BatchNorm statistics of the heads are
  over this process's micro-batch (512 in the recipe, 64 per GPU when released).
- What would not run as released, fixed here: ``main_pretrain.py`` imports ``models_mcg`` and builds
  ``models_mae_moco_online`` (the model is ``models_mcf``); the loss labels are moved with ``.cuda()``
  and need an initialised process group.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import timm
import torch
import torch.nn.functional as F
from torch import nn

from facekit.data.views import IMAGENET_MEAN, IMAGENET_STD, ResizeFlipView
from facekit.distributed import all_gather_cat, rank
from facekit.methods.base import METHODS, Method, StepValues
from facekit.methods.mae import MAEDecoder, masked_mse, patch_targets
from facekit.nn.backbones import BACKBONES
from facekit.nn.ema import copy_as_target, ema_update
from facekit.nn.heads import MLPHead
from facekit.nn.masking import random_keep
from facekit.nn.vit import ViT


def info_nce(q: torch.Tensor, k: torch.Tensor, temperature: float) -> torch.Tensor:
    """MoCo-v3 InfoNCE, one direction: ``CE(q̂ · K̂ᵀ / T, own index) · 2T``.

    q: ``[B, C]`` queries (with grad); k: ``[B, C]`` this rank's keys; both are L2-normalised and the
    keys gathered from all ranks, so the positive of local query i is global key ``i + B·rank``.
    """
    q = F.normalize(q, dim=1)
    keys = all_gather_cat(F.normalize(k, dim=1))
    logits = q @ keys.t() / temperature
    labels = torch.arange(q.shape[0], device=q.device) + q.shape[0] * rank()
    return F.cross_entropy(logits, labels) * (2 * temperature)


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """A ViT state dict from a local file (``.safetensors`` or a torch checkpoint, tensors only).

    Accepts a bare state dict or one under ``"state_dict"`` / ``"model"``; for a MoCo-v3 checkpoint
    only ``module.base_encoder.*`` is kept; a leading ``module.`` is stripped; ``head.*`` is dropped.
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
        for key in ("state_dict", "model"):
            if isinstance(state, dict) and isinstance(state.get(key), dict):
                state = state[key]
    prefix = "module.base_encoder."
    if any(name.startswith(prefix) for name in state):
        state = {name[len(prefix) :]: v for name, v in state.items() if name.startswith(prefix)}
    state = {name.removeprefix("module."): v for name, v in state.items()}
    return {name: v for name, v in state.items() if not name.startswith("head.")}


class PerceptualTeacher(nn.Module):
    """MCF's frozen "CPL" network: a timm ViT whose intermediate token maps define a perceptual loss.

    arch/kwargs build ``timm.create_model(arch, pretrained=False, num_classes=0, **kwargs)``; the
    weights come from ``checkpoint`` (a local file, see :func:`load_state_dict_file`), or stay random
    when it is None (with a warning). layers: block indices whose outputs are compared (released code:
    2, 5, 8, 11, before the final norm). norm_axis: ``"token"`` L2-normalises each ``[B, 1+N, C]`` map
    along dim 1, the released code's quirk; ``"channel"`` along the feature dim. Always in eval mode.
    """

    def __init__(
        self,
        arch: str = "vit_base_patch16_224",
        checkpoint: str | Path | None = None,
        layers: Sequence[int] = (2, 5, 8, 11),
        norm_axis: str = "token",
        **kwargs: Any,
    ) -> None:
        super().__init__()
        if norm_axis not in ("token", "channel"):
            raise ValueError(f"norm_axis must be 'token' or 'channel', got {norm_axis!r}")
        self.model = timm.create_model(arch, pretrained=False, num_classes=0, **kwargs)
        if checkpoint is None:
            warnings.warn("MCF perceptual teacher has no checkpoint: using random weights", stacklevel=2)
        else:
            self.model.load_state_dict(load_state_dict_file(checkpoint))
        self.model.requires_grad_(False)
        self.layers = list(layers)
        self.norm_dim = 1 if norm_axis == "token" else -1
        self.input_size = tuple(self.model.patch_embed.img_size)
        self.eval()

    def train(self, mode: bool = True) -> PerceptualTeacher:
        """The teacher stays in eval mode whatever the Method's mode."""
        return super().train(False)

    def features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """images ``[B, 3, H, W]`` (resized, nearest, to the teacher's size as released) → per layer
        ``[B, 1+N, C]`` (prefix tokens first), L2-normalised along ``norm_axis``."""
        if tuple(images.shape[-2:]) != self.input_size:
            images = F.interpolate(images, size=self.input_size)
        maps = self.model.forward_intermediates(
            images,
            indices=self.layers,
            return_prefix_tokens=True,
            norm=False,
            output_fmt="NLC",
            intermediates_only=True,
        )
        return [F.normalize(torch.cat([prefix, tokens], dim=1), dim=self.norm_dim) for tokens, prefix in maps]

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Σ over layers of MSE(features(pred), features(target)); the target side carries no gradient."""
        with torch.no_grad():
            target_maps = self.features(target)
        return sum(F.mse_loss(p, t) for p, t in zip(self.features(pred), target_maps, strict=True))


@METHODS.register("mcf")
class MCF(Method):
    """Mask Contrastive Face pre-training (see the module docstring for the objective).

    Online encoder: a facekit ViT (default ViT-B/16, sin-cos positions, cls, final LN) on the visible
    patches; pixel decoder :class:`~facekit.methods.mae.MAEDecoder` (512-d, 8 blocks, 16 heads).
    Projector ``D→4096→256`` (Linear without bias + BN + ReLU, last BN affine=False), predictor
    ``256→4096→256`` (no final BN), Linears Xavier-uniform; target encoder and projector are EMA copies,
    moved by ``momentum`` in every training forward (:meth:`update_target`).
    Views: resize to the encoder's size, random flip, ImageNet mean/std (faces pre-cropped square).
    """

    recipe: ClassVar[dict[str, Any]] = {
        "batch_size": 512,
        "accum_steps": 8,
        "epochs": 16,
        "warmup_epochs": 1,
        "blr": 1.5e-4,
        "min_lr": 0.0,
        "betas": (0.9, 0.95),
        "weight_decay": 0.05,
        "clip_grad": None,
        "amp": True,
    }

    def __init__(
        self,
        backbone: str = "vit_base_patch16_224",
        backbone_kwargs: dict[str, Any] | None = None,
        mask_ratio: float = 0.75,
        decoder_dim: int = 512,
        decoder_depth: int = 8,
        decoder_heads: int = 16,
        decoder_mlp_ratio: float = 4.0,
        proj_hidden_dim: int = 4096,
        proj_dim: int = 256,
        temperature: float = 0.2,
        momentum: float = 0.99,
        teacher_arch: str = "vit_base_patch16_224",
        teacher_checkpoint: str | None = None,
        teacher_kwargs: dict[str, Any] | None = None,
        teacher_layers: Sequence[int] = (2, 5, 8, 11),
        teacher_norm_axis: str = "token",
        perceptual_weight: float = 1000.0,
        contrastive_weight: float = 1.0,
        pixel_loss_weight: float = 0.0,
        norm_pix_loss: bool = False,
        image_size: int | None = None,
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
    ) -> None:
        super().__init__()
        if not 0.0 < mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in (0, 1), got {mask_ratio}")
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum must be in [0, 1], got {momentum}")
        kwargs = dict(backbone_kwargs or {})
        if image_size is not None:
            kwargs["img_size"] = image_size
        self.encoder: ViT = BACKBONES.create(backbone, **kwargs)
        if not self.encoder.has_cls:
            raise ValueError(f"MCF needs a backbone with a cls token; {backbone!r} has none")
        dim = self.encoder.embed_dim
        self.decoder = MAEDecoder(
            dim,
            self.encoder.grid_size,
            self.encoder.patch_size,
            dim=decoder_dim,
            depth=decoder_depth,
            num_heads=decoder_heads,
            mlp_ratio=decoder_mlp_ratio,
        )
        self.projector = MLPHead(dim, proj_hidden_dim, proj_dim, norm="bn", last_norm="bn_noaffine", bias=False)
        self.predictor = MLPHead(proj_dim, proj_hidden_dim, proj_dim, norm="bn", last_norm="none", bias=False)
        for linear in [m for head in (self.projector, self.predictor) for m in head if isinstance(m, nn.Linear)]:
            nn.init.xavier_uniform_(linear.weight)  # no biases: MoCo-v3's heads have none
        self.target_encoder = copy_as_target(self.encoder)
        self.target_projector = copy_as_target(self.projector)
        self.teacher = PerceptualTeacher(
            teacher_arch, teacher_checkpoint, teacher_layers, teacher_norm_axis, **(teacher_kwargs or {})
        )
        self.mask_ratio = mask_ratio
        self.temperature = temperature
        self.momentum = momentum
        self.perceptual_weight = perceptual_weight
        self.contrastive_weight = contrastive_weight
        self.pixel_loss_weight = pixel_loss_weight
        self.norm_pix_loss = norm_pix_loss
        self.mean, self.std = tuple(mean), tuple(std)

    def views(self) -> Callable[[np.ndarray], dict[str, torch.Tensor]]:
        return ResizeFlipView(self.encoder.img_size, mean=self.mean, std=self.std)

    def masks(self, batch: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Two independent random masks: (online keep ``[B, K]``, online mask ``[B, N]``, target keep ``[B, K]``),
        the online one drawn first, as released."""
        num_patches = self.encoder.num_patches
        keep, mask, _ = random_keep(batch, num_patches, self.mask_ratio, device)
        target_keep, _, _ = random_keep(batch, num_patches, self.mask_ratio, device)
        return keep, mask, target_keep

    def forward(self, batch: dict[str, Any], hp: StepValues) -> dict[str, torch.Tensor]:
        images = batch["image"]
        keep, mask, target_keep = self.masks(images.shape[0], images.device)
        out = self.encoder.encode(images, keep=keep)
        pred = self.decoder(out.patches, keep, out.cls)  # [B, N, p·p·3]
        q = self.predictor(self.projector(out.cls))
        with torch.no_grad():
            if self.training:
                self.update_target()
            k = self.target_projector(self.target_encoder.encode(images, keep=target_keep).cls)
        contrastive = info_nce(q, k, self.temperature)
        perceptual = self.teacher(self.encoder.unpatchify(pred), images)
        loss = self.perceptual_weight * perceptual + self.contrastive_weight * contrastive
        logs = {"loss_perceptual": perceptual.detach(), "loss_contrastive": contrastive.detach()}
        if self.pixel_loss_weight > 0:
            pixel = masked_mse(pred, patch_targets(self.encoder.patchify(images), self.norm_pix_loss), mask)
            loss = loss + self.pixel_loss_weight * pixel
            logs["loss_pixel"] = pixel.detach()
        return {"loss": loss, **logs}

    @torch.no_grad()
    def update_target(self) -> None:
        """EMA of the target encoder and projector parameters: ``t ← m·t + (1 − m)·online``, m = ``momentum``
        (buffers, i.e. the target projector's BatchNorm statistics, are its own)."""
        ema_update(self.target_encoder, self.encoder, self.momentum)
        ema_update(self.target_projector, self.projector, self.momentum)

    def export_backbone(self) -> nn.Module:
        return self.encoder
