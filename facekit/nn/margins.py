"""Additive-margin softmax heads for face recognition: ArcFace, CosFace, CurricularFace, MagFace, combined.

Every head works on the cosine matrix between L2-normalised embeddings and L2-normalised class centres,
``cos [B, C] = normalize(emb) · normalize(W)ᵀ``, and changes only the target column ``y`` of each row
(CurricularFace also the hard negatives) before scaling by ``s``; the loss is cross-entropy on the result.

- :class:`MarginHead` owns the centres ``weight [C, D]`` (N(0, 0.01²), as insightface) when built with
  ``embedding_size`` and ``num_classes``; built without them it is a margin only, for
  :class:`~facekit.nn.partial_fc.PartialFC`, which owns (a shard of) the centres and calls :meth:`margin`.
- :meth:`MarginHead.margin` (``cos [B, C], labels [B], norms [B] -> logits [B, C]``) is the subclass hook.
  A label of −1 marks a row whose positive class is not among the columns (Partial FC under DDP): that
  row is only scaled. Everything is out of place (``gather`` / ``scatter`` / ``where``), so autograd sees
  the whole computation; the cosine runs in float32 even under autocast.
- :meth:`MarginHead.regularizers` adds loss terms that depend on the raw embedding norms (MagFace's g(a)).

The ``θ + m > π`` rule, as in FaceT's ``loss/face_losses.py`` (its ArcFace, CurricularFace and
CombinedMarginLoss, copied from the ``arcface_torch`` of 2021-22): ``cos(θ + m)`` is not monotonic in θ
once ``θ + m > π``, so there the target logit becomes ``cos θ − m·sin m`` (a CosFace-like penalty that
keeps the target decreasing in θ), i.e. ``where(cos θ > cos(π − m), cos(θ + m), cos θ − m·sin m)``.
FaceT's MagFace continues with ``cos θ`` there (its ``margin_am`` is 0). ``easy_margin`` instead keeps
``cos θ`` wherever ``cos θ ≤ 0``.

Deviation, on purpose: ``arcface_torch`` since December 2022 (``losses.py`` @ 7fadd42) computes ArcFace and
``CombinedMarginLoss(1, m2, 0)`` as ``cos(arccos(cos θ) + m)`` under ``no_grad``: no ``θ + m > π`` rule (the
target rises again past π) and a straight-through gradient (``s`` per unit of ``cos θ`` for the target too).
facekit follows FaceT's ArcFace, which FaceT trained with: the rule and the exact gradient. The two agree
wherever ``θ + m ≤ π`` (tests/methods/test_finetune_golden.py, ``test_arcface_beyond_pi_follows_facet``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from facekit import distributed
from facekit.registry import Registry


def _target_column(cos: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(target cos [B], has_target [B] bool, safe labels [B] with −1 replaced by 0) of ``cos [B, C]``."""
    has_target = labels >= 0
    safe = labels.clamp(min=0)
    return cos.gather(1, safe[:, None]).squeeze(1), has_target, safe


def _put_target(cos: torch.Tensor, labels: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``cos`` with column ``labels[i]`` of row ``i`` replaced by ``target[i]`` (rows with label −1 kept)."""
    original, has_target, safe = _target_column(cos, labels)
    return cos.scatter(1, safe[:, None], torch.where(has_target, target, original)[:, None])


def _cos_plus(cos: torch.Tensor, m: torch.Tensor | float) -> torch.Tensor:
    """``cos(θ + m) = cos θ·cos m − sin θ·sin m`` from ``cos θ``, elementwise, with no rule past π."""
    m = torch.as_tensor(m, dtype=cos.dtype, device=cos.device)
    sin = (1.0 - cos * cos).clamp(min=1e-12).sqrt()  # the clamp zeroes sqrt's infinite slope at cos = ±1
    return cos * torch.cos(m) - sin * torch.sin(m)


def additive_angular(
    cos: torch.Tensor, m: torch.Tensor | float, easy_margin: bool = False, beyond_pi: torch.Tensor | float | None = None
) -> torch.Tensor:
    """ArcFace's target transform, elementwise: ``cos θ -> cos(θ + m)`` with the ``θ + m > π`` rule.

    ``cos(θ + m) = cos θ·cos m − sin θ·sin m`` (no ``arccos``; ``sin θ ≥ 1e-6`` keeps gradients finite); where
    ``cos θ ≤ cos(π − m)`` it is ``cos θ − beyond_pi`` instead (default ``m·sin m``, ArcFace's rule; MagFace: 0).
    ``easy_margin``: ``cos θ`` wherever ``cos θ ≤ 0``, no rule. ``m``, ``beyond_pi``: floats or tensors
    broadcasting against ``cos`` (MagFace's per-sample margin).
    """
    m = torch.as_tensor(m, dtype=cos.dtype, device=cos.device)
    shifted = _cos_plus(cos, m)
    if easy_margin:
        return torch.where(cos > 0, shifted, cos)
    penalty = m * torch.sin(m) if beyond_pi is None else beyond_pi
    return torch.where(cos > torch.cos(math.pi - m), shifted, cos - penalty)


class MarginHead(nn.Module):
    """Base of the margin heads: normalised class centres and the cosine matrix; subclasses add the margin.

    embedding_size, num_classes: D and C of the centres ``weight [C, D]``; leave both None for a margin
    used inside :class:`~facekit.nn.partial_fc.PartialFC`. s: the logit scale.

    ``shared_rows`` (set by Partial FC under DDP): every rank scores the same gathered rows against its own
    columns, so a row's target column lives on one rank only and per-row statistics are summed over ranks.
    """

    shared_rows: bool = False

    def __init__(self, embedding_size: int | None = None, num_classes: int | None = None, *, s: float = 64.0) -> None:
        super().__init__()
        if (embedding_size is None) != (num_classes is None):
            raise ValueError("give both embedding_size and num_classes (a full FC head) or neither (a margin only)")
        self.s = s
        self.weight = None if num_classes is None else nn.Parameter(torch.randn(num_classes, embedding_size) * 0.01)

    def cosine(self, emb: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """``cos [B, C]`` between the rows of ``emb [B, D]`` and ``weight [C, D]``, float32, clamped to [−1, 1]."""
        with torch.autocast(emb.device.type, enabled=False):
            return F.linear(F.normalize(emb.float()), F.normalize(weight.float())).clamp(-1.0, 1.0)

    def forward(self, emb: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """emb: [B, D] un-normalised embeddings, labels: [B] long in [0, C) -> logits [B, C] (float32)."""
        if self.weight is None:
            raise ValueError(f"{type(self).__name__} was built without class centres (a margin for PartialFC)")
        if emb.ndim != 2 or emb.shape[1] != self.weight.shape[1]:
            raise ValueError(f"embeddings must be [B, {self.weight.shape[1]}], got {list(emb.shape)}")
        norms = emb.float().norm(dim=1)
        return self.margin(self.cosine(emb, self.weight), labels, norms)

    def loss(self, emb: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """Full-FC training loss: ``{"loss": CE + regularisers, "ce": CE, **regularisers}`` (scalars)."""
        ce = F.cross_entropy(self(emb, labels), labels)
        extra = self.regularizers(emb.float().norm(dim=1))
        return {"loss": ce + sum(extra.values()), "ce": ce, **extra}

    def margin(self, cos: torch.Tensor, labels: torch.Tensor, norms: torch.Tensor) -> torch.Tensor:
        """The subclass hook: cos [B, C] in [−1, 1], labels [B] (−1 = no target column), norms [B] -> logits."""
        raise NotImplementedError

    def regularizers(self, norms: torch.Tensor) -> dict[str, torch.Tensor]:
        """Loss terms on the raw embedding norms ``[B]`` (already weighted), name -> scalar; default none."""
        return {}


#: name -> margin head, e.g. ``MARGINS.create("arcface", s=64.0, m=0.5)``.
MARGINS: Registry[MarginHead] = Registry("margin")


@MARGINS.register("arcface")
class ArcFace(MarginHead):
    """ArcFace (Deng et al., CVPR 2019): target logit ``s·cos(θ_y + m)``, others ``s·cos θ_j``; s 64, m 0.5.

    ``θ_y + m > π`` handled as in insightface (see :func:`additive_angular`).
    """

    def __init__(
        self,
        embedding_size: int | None = None,
        num_classes: int | None = None,
        *,
        s: float = 64.0,
        m: float = 0.5,
        easy_margin: bool = False,
    ) -> None:
        super().__init__(embedding_size, num_classes, s=s)
        self.m, self.easy_margin = m, easy_margin

    def margin(self, cos: torch.Tensor, labels: torch.Tensor, norms: torch.Tensor) -> torch.Tensor:
        target, _, _ = _target_column(cos, labels)
        return self.s * _put_target(cos, labels, additive_angular(target, self.m, self.easy_margin))


@MARGINS.register("cosface")
class CosFace(MarginHead):
    """CosFace (Wang et al., CVPR 2018): target logit ``s·(cos θ_y − m)``, others ``s·cos θ_j``; s 64, m 0.4."""

    def __init__(
        self, embedding_size: int | None = None, num_classes: int | None = None, *, s: float = 64.0, m: float = 0.4
    ) -> None:
        super().__init__(embedding_size, num_classes, s=s)
        self.m = m

    def margin(self, cos: torch.Tensor, labels: torch.Tensor, norms: torch.Tensor) -> torch.Tensor:
        target, _, _ = _target_column(cos, labels)
        return self.s * _put_target(cos, labels, target - self.m)


@MARGINS.register("combined")
class CombinedMargin(MarginHead):
    """insightface's combined margin: target logit ``s·(cos(m1·θ_y + m2) − m3)``, others ``s·cos θ_j``.

    (1, 0.5, 0) is ArcFace, (1, 0, 0.4) CosFace, (1.35, 0, 0) SphereFace-like. ``θ = arccos(cos)`` (clamped
    to ±(1 − 1e-7), which keeps gradients finite) and, where ``m1·θ + m2 > π``, the target continues as
    ``cos θ − m2·sin m2 − m3`` (ArcFace's rule). The released ``CombinedMarginLoss`` (FaceT's copy) covers
    (1, m2, 0), in the closed form of :func:`additive_angular`, and m3 > 0, where it subtracts m3 alone
    (ignoring m1 and m2); facekit agrees with it on (1, m2, 0) and (1, 0, m3) up to rounding.
    """

    def __init__(
        self,
        embedding_size: int | None = None,
        num_classes: int | None = None,
        *,
        s: float = 64.0,
        m1: float = 1.0,
        m2: float = 0.5,
        m3: float = 0.0,
    ) -> None:
        super().__init__(embedding_size, num_classes, s=s)
        if m1 <= 0:
            raise ValueError(f"combined margin m1 must be positive, got {m1}")
        self.m1, self.m2, self.m3 = m1, m2, m3

    def margin(self, cos: torch.Tensor, labels: torch.Tensor, norms: torch.Tensor) -> torch.Tensor:
        target, _, _ = _target_column(cos, labels)
        angle = self.m1 * target.clamp(-1 + 1e-7, 1 - 1e-7).acos() + self.m2
        angular = torch.where(angle <= math.pi, torch.cos(angle), target - self.m2 * math.sin(self.m2))
        return self.s * _put_target(cos, labels, angular - self.m3)


@MARGINS.register("curricularface")
class CurricularFace(MarginHead):
    """CurricularFace (Huang et al., CVPR 2020): ArcFace target plus adaptive hard-negative weights; s 64, m 0.5.

    Target logit ``s·cos(θ_y + m)`` with the ``θ + m > π`` rule. A negative ``j`` is hard when
    ``cos θ_j > cos(θ_y + m)``, the plain one even past π (as the official code and FaceT's: the mask is taken
    before the rule); its logit becomes ``s·cos θ_j·(t + cos θ_j)``, easy ones stay ``s·cos θ_j`` (as do rows
    without a target; with ``shared_rows`` the threshold comes from the rank holding the target).
    ``t`` (buffer, init 0) is an EMA of the mean target cosine, updated in training mode *before* it is
    used (as the official code): ``t ← 0.01·mean(cos θ_y) + 0.99·t``, without gradient. The mean runs over
    the rows with a target column, summed over processes, so every rank (and every Partial FC shard) keeps
    the same ``t``.
    """

    def __init__(
        self,
        embedding_size: int | None = None,
        num_classes: int | None = None,
        *,
        s: float = 64.0,
        m: float = 0.5,
        t_momentum: float = 0.01,
    ) -> None:
        super().__init__(embedding_size, num_classes, s=s)
        self.m, self.t_momentum = m, t_momentum
        self.register_buffer("t", torch.zeros(()))

    def margin(self, cos: torch.Tensor, labels: torch.Tensor, norms: torch.Tensor) -> torch.Tensor:
        target, has_target, _ = _target_column(cos, labels)
        final_target = additive_angular(target, self.m)
        if self.training:
            with torch.no_grad():
                stats = torch.stack([(target * has_target).sum(), has_target.sum().to(target.dtype)])
                total, count = distributed.all_reduce_sum(stats).unbind()
                if count > 0:
                    self.t.mul_(1 - self.t_momentum).add_(self.t_momentum * total / count)
        row_target = _cos_plus(target, self.m).detach()
        if self.shared_rows:
            row_target = distributed.all_reduce_sum(torch.where(has_target, row_target, 0.0))
        hard = cos > row_target[:, None]
        if not self.shared_rows:
            hard = hard & has_target[:, None]
        modulated = torch.where(hard, cos * (self.t + cos), cos)
        return self.s * _put_target(modulated, labels, final_target)


@MARGINS.register("magface")
class MagFace(MarginHead):
    """MagFace (Meng et al., CVPR 2021): ArcFace with a margin growing with the feature norm, plus g(a).

    ``a = clamp(‖emb‖, l_a, u_a)`` (a ∈ [10, 110]); ``m(a) = l_m + (u_m − l_m)·(a − l_a)/(u_a − l_a)``
    (0.45 → 0.8); target ``s·cos(θ_y + m(a))``, s 64; where ``θ_y + m(a) > π`` the target is ``s·cos θ_y``
    (FaceT's MagFace: ``cos θ − margin_am`` with ``margin_am = 0``). The margin keeps its gradient with
    respect to the norm (FaceT and the official code). Regulariser ``g(a) = a/u_a² + 1/a``, returned as
    ``{"mag_g": λ_g·mean(g(a))}`` with λ_g 35.

    Deviations from FaceT, on purpose, both only with more than one process:

    - a row whose positive lives on another rank (label −1) is only scaled; FaceT's MagFace writes the
      margin into the last column of such a row (its label −1 indexes from the end).
    - g is averaged over this process's embeddings, so under DDP its gradient is that of λ_g·mean(g) over
      the global batch; FaceT takes g over the all-gathered batch, whose backward multiplies by the world
      size W (meant for the sharded cross-entropy), so its g pulls W times harder (λ_g·W: 70 on the README's
      2 GPUs). tests/nn/test_partial_fc.py, ``test_two_ranks_with_sharded_centres_match_one_process``.
    """

    def __init__(
        self,
        embedding_size: int | None = None,
        num_classes: int | None = None,
        *,
        s: float = 64.0,
        l_a: float = 10.0,
        u_a: float = 110.0,
        l_m: float = 0.45,
        u_m: float = 0.8,
        lambda_g: float = 35.0,
    ) -> None:
        super().__init__(embedding_size, num_classes, s=s)
        if not 0 < l_a < u_a:
            raise ValueError(f"MagFace needs 0 < l_a < u_a, got l_a={l_a}, u_a={u_a}")
        self.l_a, self.u_a, self.l_m, self.u_m, self.lambda_g = l_a, u_a, l_m, u_m, lambda_g

    def clamped_norm(self, norms: torch.Tensor) -> torch.Tensor:
        """``a = clamp(‖emb‖, l_a, u_a)`` for norms [B]."""
        return norms.clamp(self.l_a, self.u_a)

    def adaptive_margin(self, norms: torch.Tensor) -> torch.Tensor:
        """m(a) [B], linear from ``l_m`` at ``a = l_a`` to ``u_m`` at ``a = u_a``."""
        a = self.clamped_norm(norms)
        return self.l_m + (self.u_m - self.l_m) * (a - self.l_a) / (self.u_a - self.l_a)

    def margin(self, cos: torch.Tensor, labels: torch.Tensor, norms: torch.Tensor) -> torch.Tensor:
        target, _, _ = _target_column(cos, labels)
        return self.s * _put_target(cos, labels, additive_angular(target, self.adaptive_margin(norms), beyond_pi=0.0))

    def regularizers(self, norms: torch.Tensor) -> dict[str, torch.Tensor]:
        a = self.clamped_norm(norms)
        return {"mag_g": self.lambda_g * (a / self.u_a**2 + 1.0 / a).mean()}
