"""The contract every training objective follows (pre-training methods and fine-tuning alike).

One training loop (:func:`facekit.train.loop.train`) drives any :class:`Method`:

- ``views()`` returns the per-sample transform the Dataset workers apply to an aligned face
  (RGB uint8 ``[H, W, 3]``) — a picklable callable returning a dict of tensors (``"image"``, or
  ``"view1"``/``"view2"``/crop parameters/masks ...). The default collate stacks them into the batch,
  next to ``"identity"`` and ``"landmarks"`` from the shard.
- ``forward(batch, hp)`` returns a dict of scalar tensors with at least ``"loss"``; ``hp`` holds this
  iteration's scheduled values.
- Parameters with ``requires_grad=False`` (frozen teachers, EMA targets) are not optimised.
- ``before_optimizer_step(hp)`` runs after backward and gradient clipping, right before the optimizer step
  (only on steps that are taken), e.g. DINO drops its last layer's gradients during the first epoch.
- ``clip_scope()`` is the module whose gradients the loop clips; ``no_weight_decay()`` names the parameters
  of 2 or more dimensions left undecayed. ``recipe`` holds the released :class:`~facekit.config.TrainConfig`
  settings (lr, batch, schedules, clipping ...) of the method.
- ``after_step(hp)`` runs after each optimizer step (EMA teacher update, centre update, ...).
- ``export_backbone()`` returns the network that fine-tuning starts from.
- ``schedules(total_steps, steps_per_epoch)`` adds method-specific per-iteration schedules (e.g. the
  DINO teacher temperature) to the loop's lr / weight decay / momentum arrays.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from facekit.registry import Registry


@dataclass(frozen=True)
class StepValues:
    """This iteration's scheduled values, computed by the loop from per-iteration arrays.

    step:      global optimizer step (0-based); epoch: fractional epoch; progress: step / total in [0, 1].
    lr, weight_decay: this step's values; momentum: EMA momentum for teacher/target networks.
    extra:     method-specific schedules (from :meth:`Method.schedules`), name -> value.
    """

    step: int
    epoch: float
    progress: float
    lr: float
    weight_decay: float
    momentum: float
    extra: dict[str, float] = field(default_factory=dict)


class Method(nn.Module):
    """Base class of a training objective; subclasses are registered in :data:`METHODS`.

    ``mean`` / ``std``: the per-channel ``(pixels / 255 − mean) / std`` of the method's views, i.e. what its
    exported backbone expects (recorded in ``backbone.json``); methods set their own.
    """

    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    #: the released pre-training settings as :class:`~facekit.config.TrainConfig` fields (``batch_size`` is the
    #: global batch); empty when no released recipe applies
    recipe: ClassVar[dict[str, Any]] = {}

    def views(self) -> Callable[[np.ndarray], dict[str, torch.Tensor]]:
        raise NotImplementedError

    def forward(self, batch: dict[str, Any], hp: StepValues) -> dict[str, torch.Tensor | float]:
        """``{"loss": scalar tensor, **logged scalars}``; a value the host already knows (a scheduled value
        from ``hp``) is a Python float, so that a compiled forward is not re-traced as it changes."""
        raise NotImplementedError

    def before_optimizer_step(self, hp: StepValues) -> None:
        """Runs between backward (and clipping) and the optimizer step, where gradients may be edited
        (e.g. set to None to skip a parameter's update); the default does nothing."""

    def after_step(self, hp: StepValues) -> None:
        """Runs after every optimizer step; the default does nothing."""

    def export_backbone(self) -> nn.Module:
        raise NotImplementedError

    def clip_scope(self) -> nn.Module:
        """The module whose gradients the loop clips (``clip_grad`` by ``clip_mode``); default the whole
        method, i.e. every trainable parameter (DINO and LAFS clip their student, the part with gradients)."""
        return self

    def no_weight_decay(self) -> set[str]:
        """Names of the parameters of 2 or more dimensions that get no weight decay (1-d ones never do).

        Default none: the released pre-training code (MAE, FaceT's MAE, DINO, LAFS, CAMD, MCF) decays every
        parameter of 2 or more dimensions, cls token, mask token and learned position embedding included.
        """
        return set()

    def schedules(self, total_steps: int, steps_per_epoch: int) -> dict[str, np.ndarray]:
        """Extra per-iteration schedules, each an array of ``total_steps`` values; default none."""
        return {}


#: name -> Method subclass, e.g. ``METHODS.create("mae", backbone="vit_small_patch16_224")``.
METHODS: Registry[Method] = Registry("method")
