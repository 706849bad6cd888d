"""The training loop's settings: :class:`TrainConfig`, checked field by field when it is built."""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

from facekit.config.values import check_value

LR_SCHEDULES = ("cosine", "step")
CLIP_MODES = ("global", "per_parameter")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")  # torch.compile's
FUSED_OPTIMIZERS = ("adam", "adamw", "sgd", "momentum")  # timm names of torch optimizers with a fused kernel


@dataclass(frozen=True)
class TrainConfig:
    """Everything the training loop needs; ``batch_size`` is per process and per micro-batch.

    Exactly one of ``lr`` (absolute) and ``blr`` (lr = blr × global batch / 256, global batch =
    batch_size × accum_steps × world size) is set. lr: linear warm-up over ``warmup_epochs``, then
    ``lr_schedule`` ``"cosine"`` (to ``min_lr``) or ``"step"`` (×``lr_gamma`` at each of ``lr_milestones``:
    increasing epochs counted from the start, fractions allowed, past the warm-up; no milestones: constant);
    weight decay: cosine to ``weight_decay_end`` (None: constant); EMA momentum (``hp.momentum``): cosine
    from ``ema_momentum`` to ``ema_momentum_end``. ``clip_grad``: gradient clipping of the parameters in the
    method's :meth:`~facekit.methods.base.Method.clip_scope`, by ``clip_mode`` ``"global"`` (their joint
    L2 norm, ``clip_grad_norm_``: FaceT, CAMD, arcface_torch) or ``"per_parameter"`` (each parameter's
    gradient to norm ``clip_grad`` on its own: DINO's and LAFS's ``clip_gradients``); None = no clipping.
    ``amp``: bf16 autocast; None = on CUDA only. Speed settings, which leave the arithmetic as it is:
    ``compile`` (a ``torch.compile`` mode of the method's forward and backward; None = eager),
    ``fused_optimizer`` (the optimizer's fused kernel; None = on CUDA where the optimizer has one),
    ``channels_last`` (convolution weights and 4-d inputs in channels-last memory format).
    ``max_steps`` stops early (smoke runs) without changing the schedules. ``max_nonfinite_steps``
    consecutive NaN/Inf steps abort the run. Values are checked against the field types (YAML lists
    become tuples).
    """

    epochs: int
    batch_size: int
    out_dir: Path
    accum_steps: int = 1
    optimizer: str = "adamw"
    lr: float | None = None
    blr: float | None = None
    min_lr: float = 0.0
    warmup_epochs: float = 0.0
    lr_schedule: str = "cosine"
    lr_milestones: tuple[float, ...] = ()
    lr_gamma: float = 0.1
    weight_decay: float = 0.05
    weight_decay_end: float | None = None
    betas: tuple[float, float] = (0.9, 0.999)
    momentum: float = 0.9
    ema_momentum: float = 0.996
    ema_momentum_end: float = 1.0
    layer_decay: float | None = None
    clip_grad: float | None = None
    clip_mode: str = "global"
    amp: bool | None = None
    compile: str | None = None
    fused_optimizer: bool | None = None
    channels_last: bool = False
    num_workers: int = 0
    seed: int = 0
    max_steps: int | None = None
    log_every: int = 10
    checkpoint_every: int | None = 1000
    keep_checkpoints: bool = False
    max_nonfinite_steps: int = 5
    sync_batchnorm: bool = False
    find_unused_parameters: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(TrainConfig)
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(f.default, tuple) and isinstance(value, list):  # YAML gives lists (betas, lr_milestones)
                object.__setattr__(self, f.name, tuple(value))
            elif not isinstance(f.default, tuple):
                check_value(value, hints[f.name], f.name)
        if (self.lr is None) == (self.blr is None):
            raise ValueError(f"set exactly one of lr and blr (got lr={self.lr}, blr={self.blr})")
        for name in ("epochs", "batch_size", "accum_steps", "log_every", "max_nonfinite_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.clip_mode not in CLIP_MODES:
            raise ValueError(f"clip_mode must be one of {CLIP_MODES}, got {self.clip_mode!r}")
        if self.compile is not None and self.compile not in COMPILE_MODES:
            raise ValueError(f"compile must be one of {COMPILE_MODES} (or null: eager), got {self.compile!r}")
        if self.fused_optimizer and self.optimizer not in FUSED_OPTIMIZERS:
            raise ValueError(f"fused_optimizer needs one of the optimizers {FUSED_OPTIMIZERS}, got {self.optimizer!r}")
        if self.clip_grad is not None and not self.clip_grad > 0:
            raise ValueError(f"clip_grad must be > 0 (or null: no clipping), got {self.clip_grad}")
        self._check_lr_schedule()

    def _check_lr_schedule(self) -> None:
        if not isinstance(self.lr_milestones, tuple):
            raise ValueError(f"lr_milestones must be a list of epochs, got {self.lr_milestones!r}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
        if self.lr_schedule != "step":
            if self.lr_milestones:
                raise ValueError(f"lr_milestones {self.lr_milestones} need lr_schedule 'step' (got 'cosine')")
            return
        if self.min_lr:
            raise ValueError(f"min_lr ({self.min_lr}) is the cosine schedule's floor; lr_schedule 'step' has none")
        if not self.lr_gamma > 0:
            raise ValueError(f"lr_gamma must be > 0, got {self.lr_gamma}")
        if any(b <= a for a, b in pairwise(self.lr_milestones)):
            raise ValueError(f"lr_milestones must be strictly increasing, got {self.lr_milestones}")
        outside = [m for m in self.lr_milestones if not (0 < m < self.epochs and m >= self.warmup_epochs)]
        if outside:
            raise ValueError(
                f"lr_milestones {outside} outside (0, epochs={self.epochs}) or inside the warm-up "
                f"(warmup_epochs={self.warmup_epochs})"
            )
