"""Partial FC (An et al., "Partial FC: Training 10 Million Identities on a Single Machine", ICCVW 2021 /
"Killing Two Birds with One Stone", CVPR 2022), as insightface ``arcface_torch``'s ``PartialFC_V2``.

Each step the margin softmax runs over a random subset of the class centres that always contains every
positive class of the batch. Under DDP the centres ``[C, D]`` are split across ranks (rank ``r`` holds
``C // W`` rows, one more for the first ``C % W`` ranks, starting at ``class_start``); embeddings and
labels are all-gathered, every rank scores the whole global batch against its sampled centres, and the
cross-entropy's softmax denominator is summed over ranks (:func:`sharded_cross_entropy`).

Gradients (insightface's choices): each rank's centres get ``∂L/∂W_local`` of the global mean loss ``L``;
the all-gather returns to each rank the sum over ranks of its embeddings' gradients, scaled by the world
size so that DDP's gradient averaging yields ``∂L/∂θ`` for the backbone. The shard must therefore be
hidden from DDP (:meth:`PartialFC.local_parameter_names`) — a single process needs nothing.

Deviations from ``arcface_torch`` / FaceT, on purpose:

- ``ceil(sample_rate · C_local)`` centres per step, where the released code truncates (``int``): one more
  centre when the product is not whole (tests/nn/test_partial_fc.py,
  ``test_sampling_keeps_every_positive_and_takes_ceil_rate_times_c_centres``).
- The released cross-entropy clamps each row's target probability at 1e-30 before the log, which caps the
  row's loss at −log(1e-30) ≈ 69.08; here the loss is exact. The gradients are the same (both take the plain
  softmax); only the logged loss of such rows differs (tests/methods/test_finetune_golden.py,
  ``test_cross_entropy_is_not_capped_where_the_released_clamps_the_target_probability``).
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
from torch import nn

from facekit import distributed
from facekit.nn.margins import MarginHead


class _ShardedCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy over rows whose classes are split across ranks (see :func:`sharded_cross_entropy`)."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        row_max = logits.max(dim=1).values
        if distributed.is_distributed():
            dist.all_reduce(row_max, op=dist.ReduceOp.MAX)
        exp = (logits - row_max[:, None]).exp()
        denominator = distributed.all_reduce_sum(exp.sum(dim=1))
        has_target = labels >= 0
        target = torch.where(has_target, logits.gather(1, labels.clamp(min=0)[:, None]).squeeze(1), 0.0)
        target = distributed.all_reduce_sum(target)  # exactly one rank holds each row's positive
        ctx.save_for_backward(exp / denominator[:, None], labels)
        return (denominator.log() + row_max - target).mean()

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        prob, labels = ctx.saved_tensors
        one_hot = torch.zeros_like(prob).scatter_(
            1, labels.clamp(min=0)[:, None], (labels >= 0)[:, None].to(prob.dtype)
        )
        return (prob - one_hot) * (grad / prob.shape[0]), None


def sharded_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean over rows of ``logsumexp(all ranks' logits) − target logit``.

    logits: [N, K_local] float32, this rank's columns; labels: [N] index of the positive column on this
    rank, −1 where another rank holds it. Every rank returns the same value; the gradient is
    ``(softmax − one_hot) / N`` on the local columns (the partial derivative with the other ranks' columns
    held fixed). In one process it equals ``F.cross_entropy(logits, labels)``.
    """
    return _ShardedCrossEntropy.apply(logits, labels)


class _ScaleGrad(torch.autograd.Function):
    """Identity forward; backward multiplies the gradient by ``scale``."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad * ctx.scale, None


class PartialFC(nn.Module):
    """Margin softmax over a sampled subset of (this rank's shard of) the class centres.

    margin_head: a :class:`~facekit.nn.margins.MarginHead` built without centres (it supplies the margin
    and its regularisers). num_classes, embedding_size: C and D. sample_rate: the fraction of this rank's
    centres scored per step, ``ceil(sample_rate · C_local)`` of them (insightface truncates); all positives
    are kept, filled up with random negatives, so more positives than that means all positives only.
    1.0 scores every centre (a plain full FC). Joins the torchrun process group (if any) to find its shard.
    """

    def __init__(self, margin_head: MarginHead, num_classes: int, embedding_size: int, sample_rate: float = 1.0):
        super().__init__()
        if margin_head.weight is not None:
            raise ValueError("PartialFC owns the class centres: build its margin head without num_classes")
        if not 0.0 < sample_rate <= 1.0:
            raise ValueError(f"sample_rate must be in (0, 1], got {sample_rate}")
        distributed.init_from_env()
        rank, world = distributed.rank(), distributed.world_size()
        if num_classes < world:
            raise ValueError(f"num_classes {num_classes} is smaller than the world size {world}")
        self.margin_head = margin_head
        margin_head.shared_rows = world > 1
        self.num_classes, self.embedding_size, self.sample_rate = num_classes, embedding_size, sample_rate
        self.world = world
        self.num_local = num_classes // world + int(rank < num_classes % world)
        self.class_start = num_classes // world * rank + min(rank, num_classes % world)
        self.num_sample = math.ceil(sample_rate * self.num_local)
        self.weight = nn.Parameter(torch.randn(self.num_local, embedding_size) * 0.01)  # insightface's init

    def local_parameter_names(self) -> list[str]:
        """Parameters (relative names) that differ per rank and must not be synchronised by DDP."""
        return ["weight"] if self.world > 1 else []

    @torch.no_grad()
    def sample(self, labels: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
        """Pick this step's centres for the global batch's ``labels [N]``.

        Returns (index ``[K]`` sorted rows of the local shard, or None for all of them; local labels ``[N]``:
        each row's positive as a column of the selection, −1 where another rank holds it).
        """
        local = labels - self.class_start
        in_shard = (local >= 0) & (local < self.num_local)
        if self.num_sample >= self.num_local:
            return None, torch.where(in_shard, local, -1)
        positives = torch.unique(local[in_shard])  # sorted
        if positives.numel() >= self.num_sample:
            index = positives
        else:
            score = torch.rand(self.num_local, device=labels.device)
            score[positives] = 2.0  # above every random score: positives always win
            index = score.topk(self.num_sample).indices.sort().values
        columns = torch.searchsorted(index, local.clamp(0, self.num_local - 1))
        return index, torch.where(in_shard, columns, -1)

    def forward(self, emb: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """emb: [B, D] un-normalised local embeddings, labels: [B] long in [0, C) ->
        ``{"loss": CE + regularisers, "ce": CE, **regularisers}`` (scalars; CE identical on every rank)."""
        if emb.ndim != 2 or emb.shape[1] != self.embedding_size:
            raise ValueError(f"embeddings must be [B, {self.embedding_size}], got {list(emb.shape)}")
        if labels.shape != emb.shape[:1]:
            raise ValueError(f"labels must be [{emb.shape[0]}], got {list(labels.shape)}")
        valid = ((labels >= 0) & (labels < self.num_classes)).all()
        torch._assert_async(valid, f"identity labels must lie in [0, {self.num_classes})")  # read on the device
        labels = labels.long()
        everyone = distributed.all_gather_cat_with_grad(_ScaleGrad.apply(emb, float(self.world)))  # [N, D]
        all_labels = distributed.all_gather_cat(labels)
        index, columns = self.sample(all_labels)
        weight = self.weight if index is None else self.weight[index]
        cos = self.margin_head.cosine(everyone, weight)
        logits = self.margin_head.margin(cos, columns, everyone.float().norm(dim=1))
        ce = sharded_cross_entropy(logits, columns)
        extra = self.margin_head.regularizers(emb.float().norm(dim=1))
        return {"loss": ce + sum(extra.values()), "ce": ce, **extra}

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, local={self.class_start}..{self.class_start + self.num_local}, "
            f"embedding_size={self.embedding_size}, sample_rate={self.sample_rate}"
        )
