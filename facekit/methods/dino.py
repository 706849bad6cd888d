"""DINO (Caron et al., ICCV 2021) on aligned faces: self-distillation with a momentum teacher and multi-crop.

Reading order: :func:`dino_loss` (the loss), :func:`update_center`, :class:`DINOViews` (the crops),
:class:`DINONetwork` (backbone + :class:`~facekit.nn.heads.DINOHead`), :class:`DINO` (the Method).

Per step, with G = 2 global and L local crops of B faces and K head outputs::

    global crops [G·B, 3, S, S] --teacher (EMA, no grad)--> t [G, B, K]
    global + local crops       --student-------------------> s [G + L, B, K]
    loss = mean over pairs (g, v), v ≠ g, of CE(softmax((t_g − center) / τ_t), log_softmax(s_v / τ_s))

The centre is an EMA (momentum 0.9) of the teacher's mean output over all processes; τ_t follows a
per-epoch linear warm-up (:meth:`DINO.schedules` → ``hp.extra["teacher_temp"]``); the teacher follows
``hp.momentum`` (the loop's cosine 0.996 → 1); weight decay follows the loop's schedule (DINO: 0.04 → 0.4).
The head's last layer is frozen during the first ``freeze_last_layer`` epochs
(:meth:`DINO.before_optimizer_step`). DINO-face pipeline (``DataAugmentationDINO`` of the LAFS repository):
112 px global crops (scale 0.4–1), 48 px local crops (0.05–0.4), ImageNet normalisation.

Released recipe (:attr:`DINO.recipe`, ``main_dino.py`` defaults, ViT-S/16 on 8 GPUs as in its README; the
DINO-face training scripts of the LAFS repository are not released): batch 512 (64 per GPU), 100 epochs,
AdamW, lr 5e-4 per 256 images, 10 warm-up epochs, cosine to 1e-6, weight decay cosine 0.04 → 0.4 (none on
biases and 1-d parameters; cls token and positions decayed), every student gradient clipped to norm 3.0 on
its own (``clip_gradients``: ``clip_mode="per_parameter"``), teacher momentum cosine 0.996 → 1.

Deviation: the lr warm-up is the loop's ``base · i / W`` (:mod:`facekit.train.schedules`); DINO's
``np.linspace(0, base, W)`` reaches ``base`` one step earlier (each warm-up step is at most ``base / W``
lower here; ``test_warm_up_reaches_base_after_its_last_step_as_mae_not_as_dino``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any, ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from facekit import distributed
from facekit.data.augment import normalize_batch
from facekit.data.augment_gpu import BatchPhotometric
from facekit.data.views import IMAGENET_MEAN, IMAGENET_STD, ViewRecipe, add_views, crop_views
from facekit.methods.base import METHODS, Method, StepValues
from facekit.nn.backbones import BACKBONES
from facekit.nn.ema import ema_update
from facekit.nn.heads import DINOHead
from facekit.nn.pos_embed import interpolate_pos_embed
from facekit.nn.vit import LinearPatchEmbed, ViT

#: Where the photometric augmentations run: in the DataLoader workers (OpenCV, per image) or on the device
#: in the training step (:class:`~facekit.data.augment_gpu.BatchPhotometric`; the workers only crop and flip).
Photometric = Literal["workers", "device"]

#: DINO's ViT on 112 px faces (``vit_small`` with ``--patch_size 8`` as in the LAFS repository): 14 × 14
#: tokens, learned positions, drop-path 0.1 for the student (the teacher is built without drop-path).
DINO_FACE_BACKBONE: dict[str, Any] = {"img_size": 112, "patch_size": 8, "pos_embed": "learned", "drop_path_rate": 0.1}


def dino_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    center: torch.Tensor,
    student_temp: float,
    teacher_temp: float,
) -> torch.Tensor:
    """DINO's cross-entropy over view pairs.

    student_logits: ``[V, B, K]`` (the G global views first, then the locals); teacher_logits: ``[G, B, K]``;
    center: ``[K]`` or ``[1, K]``. Teacher view g and student view g are the same crop, so those G pairs are
    left out: the mean over the ``G·V − G`` other pairs of ``mean_b Σ_k −softmax((t − c)/τ_t)·log_softmax(s/τ_s)``.
    Computed in float32 (also under autocast); the teacher side carries no gradient.
    """
    num_views, batch, _ = student_logits.shape
    num_globals = teacher_logits.shape[0]
    with torch.autocast(student_logits.device.type, enabled=False):  # float32 even under bf16 autocast
        targets = teacher_targets(teacher_logits, center, teacher_temp)
        log_probs = F.log_softmax(student_logits.float() / student_temp, dim=-1)
        ce = -torch.einsum("gbk,vbk->gv", targets, log_probs) / batch  # [G, V]
    keep = ~torch.eye(num_globals, num_views, dtype=torch.bool, device=ce.device)
    return torch.where(keep, ce, 0.0).sum() / (num_globals * num_views - min(num_globals, num_views))


def teacher_targets(teacher_logits: torch.Tensor, center: torch.Tensor, teacher_temp: float) -> torch.Tensor:
    """The teacher's centred, sharpened distributions ``softmax((t − c) / τ_t)`` in float32, without gradient:
    ``[..., K]`` → ``[..., K]``."""
    return F.softmax((teacher_logits.detach().float() - center.float()) / teacher_temp, dim=-1)


@torch.no_grad()
def target_entropy(teacher_logits: torch.Tensor, center: torch.Tensor, teacher_temp: float) -> torch.Tensor:
    """Mean entropy (nats) of :func:`teacher_targets` over ``[..., K]`` rows: DINO's collapse gauge. It stays
    near ``ln K`` when centering wins (uniform targets, nothing to learn: the loss sits at ``ln K`` too) and
    falls to 0 when one output dominates; a run that learns keeps it well between the two."""
    p = teacher_targets(teacher_logits, center, teacher_temp)
    return -(p * p.clamp_min(1e-30).log()).sum(-1).mean()


@torch.no_grad()
def update_center(center: torch.Tensor, logits_sum: torch.Tensor, count: int | torch.Tensor, momentum: float) -> None:
    """In place: ``center ← momentum·center + (1 − momentum)·mean`` where ``mean`` is the teacher output mean
    over every process (``logits_sum [K]`` summed over this process's ``count`` rows; equal counts per rank)."""
    batch_center = distributed.all_reduce_sum(logits_sum) / (count * distributed.world_size())
    center.mul_(momentum).add_(batch_center.reshape(center.shape), alpha=1 - momentum)


class DINOViews:
    """DINO's multi-crop: ``global_<i>`` from ``global_recipes[i]``, ``local_0 .. local_<n-1>`` from
    ``local_recipe``, each with ``<name>_box`` (float32 [5]) — the keys of
    :class:`facekit.data.views.MultiCropView`, with one recipe per global crop so that global 0 is always
    blurred and global 1 sometimes solarised, as DINO does."""

    def __init__(self, global_recipes: Sequence[ViewRecipe], local_recipe: ViewRecipe, n_local: int) -> None:
        self.global_recipes, self.local_recipe, self.n_local = tuple(global_recipes), local_recipe, n_local

    def __call__(self, rgb: np.ndarray) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        add_views(out, "global", *crop_views(rgb, self.global_recipes))
        if self.n_local:
            add_views(out, "local", *crop_views(rgb, [self.local_recipe] * self.n_local))
        return out


def dino_recipes(
    global_size: int,
    local_size: int,
    global_scale: tuple[float, float],
    local_scale: tuple[float, float],
    mean: tuple[float, float, float],
    std: tuple[float, float, float],
) -> tuple[tuple[ViewRecipe, ViewRecipe], ViewRecipe]:
    """DINO's three pipelines: RandomResizedCrop (bicubic), flip, colour jitter (0.4, 0.4, 0.2, 0.1) p 0.8,
    grayscale p 0.2, then blur p 1.0 (global 0) / blur p 0.1 + solarise p 0.2 (global 1) / blur p 0.5 (local)."""
    common = {"jitter_p": 0.8, "gray_p": 0.2, "mean": mean, "std": std}
    global_0 = ViewRecipe(global_size, scale=global_scale, blur_p=1.0, **common)
    global_1 = ViewRecipe(global_size, scale=global_scale, blur_p=0.1, solarize_p=0.2, **common)
    local = ViewRecipe(local_size, scale=local_scale, blur_p=0.5, **common)
    return (global_0, global_1), local


def embed_images(vit: ViT, images: torch.Tensor) -> torch.Tensor:
    """Patch tokens with positions ``[B, N, D]`` of ``images [B, 3, H, W]`` at any size divisible by the
    patch size; other grids than the backbone's get its position embedding resampled by
    :func:`~facekit.nn.pos_embed.interpolate_pos_embed` (DINO's ``interpolate_pos_encoding``)."""
    grid = (images.shape[-2] // vit.patch_size, images.shape[-1] // vit.patch_size)
    if isinstance(vit.patch_embed, LinearPatchEmbed):
        tokens = vit.patch_embed(images)
    else:  # timm's PatchEmbed insists on its own size: run its projection directly
        tokens = vit.patch_embed.norm(vit.patch_embed.proj(images).flatten(2).transpose(1, 2))
    pos = interpolate_pos_embed(vit.pos_embed, grid, vit.num_prefix_tokens)
    return tokens + pos[:, vit.num_prefix_tokens :]


class DINONetwork(nn.Module):
    """Backbone + DINO head. x: images ``[B, 3, H, W]`` (any size) or, for LAFS, pre-cut patches
    ``[B, n, p·p·3]`` (embedded by the backbone's Linear patch embedding at positions ``1 .. n``) → ``[B, K]``."""

    def __init__(self, backbone: ViT, head: DINOHead) -> None:
        super().__init__()
        if backbone.num_prompts:
            raise ValueError("DINO / LAFS backbones take no prompts: pass backbone_kwargs num_prompts=0")
        self.backbone, self.head = backbone, head

    def features(self, x: torch.Tensor) -> torch.Tensor:
        vit = self.backbone
        tokens = embed_images(vit, x) if x.ndim == 4 else vit.embed_patches(x)
        return vit.encode_tokens(tokens)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@METHODS.register("dino")
class DINO(Method):
    """DINO self-distillation on faces (defaults: the DINO-face settings of the LAFS repository).

    ``backbone_kwargs`` are merged over :data:`DINO_FACE_BACKBONE`. Head: 2048-d MLP (3 layers, GELU) →
    256 → ``out_dim`` (LAFS: 100,000; DINO: 65,536), weight-normalised last layer with its norm frozen.
    Teacher temperature: linear per epoch from ``warmup_teacher_temp`` to ``teacher_temp`` over
    ``warmup_teacher_temp_epochs`` (DINO's ViT recipe 0.04 → 0.07 over 30), then constant. The teacher is
    the student's copy without drop-path and is what :meth:`export_backbone` returns.

    Where the augmentation runs: by default the DataLoader workers return normalised float views;
    ``normalize=False`` returns uint8 views, normalised on the device (4x less to copy);
    ``photometric="device"`` has the workers only crop and flip (uint8) and runs jitter, grayscale, blur and
    solarize batched on the device in :meth:`logits` (:class:`~facekit.data.augment_gpu.BatchPhotometric`,
    torch's RNG), which frees the CPU cores multi-crop would otherwise need.
    """

    recipe: ClassVar[dict[str, Any]] = {
        "batch_size": 512,
        "epochs": 100,
        "optimizer": "adamw",
        "blr": 5e-4,
        "min_lr": 1e-6,
        "warmup_epochs": 10,
        "weight_decay": 0.04,
        "weight_decay_end": 0.4,
        "clip_grad": 3.0,
        "clip_mode": "per_parameter",
        "ema_momentum": 0.996,
        "ema_momentum_end": 1.0,
    }

    def __init__(
        self,
        backbone: str = "vit_small_patch16_224",
        backbone_kwargs: dict[str, Any] | None = None,
        out_dim: int = 65536,
        head_hidden_dim: int = 2048,
        head_bottleneck_dim: int = 256,
        head_layers: int = 3,
        norm_last_layer: bool = True,
        n_local: int = 8,
        local_size: int = 48,
        global_scale: tuple[float, float] = (0.4, 1.0),
        local_scale: tuple[float, float] = (0.05, 0.4),
        student_temp: float = 0.1,
        teacher_temp: float = 0.07,
        warmup_teacher_temp: float = 0.04,
        warmup_teacher_temp_epochs: int = 30,
        center_momentum: float = 0.9,
        freeze_last_layer: int = 1,
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
        normalize: bool = True,
        photometric: Photometric = "workers",
    ) -> None:
        super().__init__()
        if photometric not in ("workers", "device"):
            raise ValueError(f"photometric must be 'workers' or 'device', got {photometric!r}")
        kwargs = {**DINO_FACE_BACKBONE, **(backbone_kwargs or {})}
        head_args = (out_dim, head_hidden_dim, head_bottleneck_dim, head_layers)
        student_vit = BACKBONES.create(backbone, **kwargs)
        self.student = DINONetwork(student_vit, DINOHead(student_vit.out_dim, *head_args, norm_last_layer))
        teacher_vit = BACKBONES.create(backbone, **{**kwargs, "drop_path_rate": 0.0})
        self.teacher = DINONetwork(teacher_vit, DINOHead(teacher_vit.out_dim, *head_args, norm_last_layer))
        self.teacher.load_state_dict(self.student.state_dict())
        self.teacher.requires_grad_(False)
        self.register_buffer("center", torch.zeros(1, out_dim))
        self.n_global, self.n_local = 2, n_local
        self.local_size, self.global_scale, self.local_scale = local_size, tuple(global_scale), tuple(local_scale)
        self.student_temp, self.teacher_temp = student_temp, teacher_temp
        self.warmup_teacher_temp, self.warmup_teacher_temp_epochs = warmup_teacher_temp, warmup_teacher_temp_epochs
        self.center_momentum, self.freeze_last_layer = center_momentum, freeze_last_layer
        self.mean, self.std = tuple(mean), tuple(std)
        self.normalize, self.photometric = normalize and photometric == "workers", photometric
        # this step's teacher outputs (summed over its micro-batches), applied in after_step; tensors, so that a
        # compiled forward neither reads them back nor is traced again as they change
        self.register_buffer("_center_sum", torch.zeros(out_dim), persistent=False)
        self.register_buffer("_center_rows", torch.zeros(()), persistent=False)
        self.register_buffer("_center_step", torch.full((), -1, dtype=torch.long), persistent=False)

    # ---------------------------------------------------------------- data and schedules

    def recipes(self) -> tuple[tuple[ViewRecipe, ...], ViewRecipe]:
        """(global recipes, local recipe): :func:`dino_recipes` with global crops at the backbone's size."""
        size = self.student.backbone.img_size
        return dino_recipes(size, self.local_size, self.global_scale, self.local_scale, self.mean, self.std)

    def worker_recipes(self) -> tuple[tuple[ViewRecipe, ...], ViewRecipe]:
        """:meth:`recipes` as the DataLoader workers run them: uint8 unless ``normalize``, crop and flip only
        with ``photometric="device"``."""
        global_recipes, local_recipe = self.recipes()
        if self.photometric == "device":
            return tuple(r.geometric_only() for r in global_recipes), local_recipe.geometric_only()
        if not self.normalize:
            return tuple(replace(r, normalize=False) for r in global_recipes), replace(local_recipe, normalize=False)
        return global_recipes, local_recipe

    def views(self) -> Callable[[np.ndarray], dict[str, torch.Tensor]]:
        """:class:`DINOViews` of :meth:`worker_recipes`."""
        global_recipes, local_recipe = self.worker_recipes()
        return DINOViews(global_recipes, local_recipe, self.n_local)

    def network_input(self, views: torch.Tensor, recipe: ViewRecipe) -> torch.Tensor:
        """A batch of one recipe's views as the network takes them: float normalised views pass through; uint8
        views get the recipe's photometric steps on their device (``photometric="device"``), then
        normalisation."""
        if views.dtype != torch.uint8:
            return views
        if self.photometric == "device":
            views = BatchPhotometric.from_recipe(recipe)(views)
        return normalize_batch(views, self.mean, self.std)

    def teacher_temp_at(self, epoch: np.ndarray | int) -> np.ndarray:
        """τ_t of (integer) epoch(s): ``linspace(warmup, final, warmup_epochs)[epoch]``, then ``final`` (DINO)."""
        epoch = np.asarray(epoch, dtype=np.int64)
        warm = self.warmup_teacher_temp_epochs
        if warm <= 0:
            return np.full(epoch.shape, self.teacher_temp)
        ramp = np.linspace(self.warmup_teacher_temp, self.teacher_temp, warm)
        return np.where(epoch < warm, ramp[np.minimum(epoch, warm - 1)], self.teacher_temp)

    def schedules(self, total_steps: int, steps_per_epoch: int) -> dict[str, np.ndarray]:
        """``teacher_temp`` per step: the value of the step's epoch (DINO indexes its schedule by epoch)."""
        return {"teacher_temp": self.teacher_temp_at(np.arange(total_steps) // steps_per_epoch)}

    # ---------------------------------------------------------------- forward

    def logits(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """(student ``[G + L, B, K]``, teacher ``[G, B, K]``) for the batch's ``global_<i>`` / ``local_<i>`` crops."""
        global_recipes, local_recipe = self.recipes()
        globals_ = torch.cat([self.network_input(batch[f"global_{i}"], r) for i, r in enumerate(global_recipes)])
        locals_ = None
        if self.n_local:
            locals_ = self.network_input(torch.cat([batch[f"local_{i}"] for i in range(self.n_local)]), local_recipe)
        return self.crop_logits(globals_, locals_)

    def crop_logits(self, globals_: torch.Tensor, locals_: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Network inputs stacked view-major (``[G·B, ...]``, ``[L·B, ...]`` or None) → (student ``[G + L, B, K]``,
        teacher ``[G, B, K]``). Inputs of one size go through a network together, as DINO's MultiCropWrapper."""
        with torch.no_grad():
            teacher = self.teacher(globals_)
        student = [self.student(globals_)]
        if locals_ is not None:
            student.append(self.student(locals_))
        batch_size = globals_.shape[0] // self.n_global
        return torch.cat(student).unflatten(0, (-1, batch_size)), teacher.unflatten(0, (self.n_global, batch_size))

    def forward(self, batch: dict[str, Any], hp: StepValues) -> dict[str, torch.Tensor | float]:
        student, teacher = self.logits(batch)
        temp = hp.extra["teacher_temp"] if "teacher_temp" in hp.extra else float(self.teacher_temp_at(int(hp.epoch)))
        loss = dino_loss(student, teacher, self.center, self.student_temp, temp)
        entropy = target_entropy(teacher, self.center, temp)  # before this step's teacher moves the centre
        self._add_to_center(teacher, hp.step)
        return {"loss": loss, "teacher_temp": temp, "teacher_entropy": entropy}

    def _add_to_center(self, teacher: torch.Tensor, step: int) -> None:
        """Sum this step's teacher outputs (over micro-batches); :meth:`after_step` folds them into the centre,
        so a skipped (non-finite) step leaves the centre alone: the next step's first micro-batch drops its sums."""
        same_step = (self._center_step == step).float()
        rows = teacher.detach().float().flatten(0, 1)
        self._center_sum.mul_(same_step).add_(rows.sum(dim=0))
        self._center_rows.mul_(same_step).add_(rows.shape[0])
        self._center_step.fill_(step)

    # ---------------------------------------------------------------- around the optimizer step

    def before_optimizer_step(self, hp: StepValues) -> None:
        """During the first ``freeze_last_layer`` epochs the head's last layer gets no update (DINO's
        ``cancel_gradients_last_layer``: its gradients are dropped after clipping)."""
        if hp.epoch < self.freeze_last_layer:
            for p in self.student.head.last_layer.parameters():
                p.grad = None

    def after_step(self, hp: StepValues) -> None:
        """EMA teacher (``hp.momentum``) and centre update from this step's teacher outputs."""
        ema_update(self.teacher, self.student, hp.momentum)
        update_center(self.center, self._center_sum, self._center_rows, self.center_momentum)
        self._center_step.fill_(-1)  # the next step starts new sums

    def export_backbone(self) -> nn.Module:
        """The teacher's backbone (DINO evaluates, and LAFS fine-tunes from, the teacher)."""
        return self.teacher.backbone
