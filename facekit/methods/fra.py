"""FRA: Facial Region Awareness (Gao & Patras, CVPR 2024), a facekit :class:`Method`.

BYOL-style online / target ResNets (LEWEL lineage) whose neck also finds K = 8 facial regions and matches
them across views. Follows the released code (``zaczgao/Facial_Region_Awareness`` @ 791434b, ``FRAB``
with ``mask_type="attn"``). Per view, for the online network and its EMA target::

    images [B, 3, S, S] -> ResNet trunk -> x [B, C, h, w]                     (C = 2048, h = w = S / 32)
      proj(mean_p x) -> z_g [B, D]                                            (MLP1D, D = 256)
      proj_pixel(x)  -> z_feat [B, D, h, w]
      proj_attn(x)   -> mask embeddings [B, K, D] -> batch mean (all ranks) -> e [K, D]
      dots_k(p) = cos(e_k, z_feat(p));  M = softmax_k(dots / scale) + 1e-7    (heatmaps [B, K, h, w])
      regions r_k = proj_obj(sum_p M_k(p) x(p) / sum_p M_k(p)) -> [B, K, D]

    loss = sum over (online v1, target v2), (online v2, target v1) of
               0.5 * (2 - 2 cos(predictor(z_g), z_g'))                        (:func:`byol_loss`)
             + 0.5 * (pos + 0.02 * neg) of predictor_obj(r) vs r'             (:func:`region_loss`)
           + 0.1 * mean over views of the cluster loss, online vs target dots  (:func:`cluster_loss`)

Evaluation heatmaps (:meth:`FRA.heatmaps`) use ``proto``, an EMA (0.9) of the batch-mean embeddings,
instead of the batch's own. The target is updated after every optimizer step with the loop's
``hp.momentum`` (FRA keeps no schedule of its own, so a run's ``ema_momentum`` / ``ema_momentum_end`` apply):
BYOL's ``1 - (1 - 0.996) (cos(pi k / K) + 1) / 2`` at step k of K (base ``ema_momentum``, 0.996 in the
recipe); parameters only, buffers keep their own values, as the released ``FRAB.momentum_update``.

Why the heatmaps start (and in short runs stay) flat at ``1 / K``, as in the released code: the K mask
embeddings leave the decoder nearly equal (cosine ~0.99 at init: the targets start at zero, so the queries
differ only through cross-attention weights over a small map); with equal embeddings every region gets
``1 / K`` everywhere, and the instance and region losses give the dots no gradient there (a softmax over
regions of a loss symmetric in the regions), so only the cluster loss (weight 0.1; teacher 0.04 sharper
than student 0.1) can pull the regions apart, and only while the teacher's scores follow the student's:
the decoder's dropout (``attn_dropout``, 0.1 as released) is on in both networks, and on real faces its
noise outweighs the regions' differences, so at init the cluster loss pushes them together; with
``attn_dropout=0`` it separates them, slowly (the README gives the measured ``region_cos``). ``proto``
follows the embeddings. :meth:`FRA.forward` logs ``region_cos``, the mean cosine between the K batch-mean
embeddings (1 = one region), to show when they separate. Even for orthogonal embeddings a region's weight
reaches only ``e / (e + K - 1)`` at scale 1 (0.28 for K = 8), so :func:`save_heatmap_figure` colours the
maps over their own range.

Released recipe (:attr:`FRA.recipe`; the loop owns these): ResNet-50 at 224 on VGGFace2, batch 512,
LARS (momentum 0.9, trust coefficient 0.001, no adaptation and no weight decay on biases and BN), lr 0.9
(not batch-scaled), weight decay 1e-6, 50 epochs, cosine with 10 warm-up epochs, AMP, SyncBN. With
``optimizer="lars"`` the loop's :func:`~facekit.train.optim.param_groups` put every 1-d parameter (biases,
BN, LayerNorm) in groups with weight decay 0, and timm's ``Lars`` adapts only groups with non-zero weight
decay, so those parameters get plain SGD-momentum updates, as released.

Deviations, on purpose:

- The released LARS excluded parameters by name (``bn``, ``downsample.1``, ``bias``), which missed the
  neck's BN (``mlp.1``) and the transformer's LayerNorms; here every 1-d parameter is excluded.
  timm's ``Lars`` applies the lr after the momentum buffer (the released one before it); they differ
  only while the lr changes.
- ``proto`` is updated only in the online network (the released target kept an unused copy of its
  own); as released, once per online forward, i.e. twice per step (view 1, then view 2).
- Left out, as unused in the released code: the teacher ``center`` (never updated, stays 0) and the
  intersection masks computed in ``loss_func``.
- Scores, heatmaps, region pooling and losses run in float32 under autocast.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from facekit import distributed
from facekit.data.augment import normalize_batch
from facekit.data.views import VGGFACE2_MEAN, VGGFACE2_STD, TwoViews, ViewRecipe
from facekit.methods.base import METHODS, Method, StepValues
from facekit.nn.backbones import BACKBONES
from facekit.nn.ema import copy_as_target, ema_update
from facekit.nn.heads import MLPHead
from facekit.nn.resnet import ResNetTrunk

HEATMAP_EPS = 1e-7  # added to the softmax heatmaps, as released


# ---------------------------------------------------------------- losses and their pieces


def byol_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``2 - 2 * mean_rows cos(pred, target)``; pred, target ``[..., D]``; no gradient to ``target``."""
    p, t = F.normalize(pred.float(), dim=-1), F.normalize(target.detach().float(), dim=-1)
    return 2 - 2 * (p * t).sum(-1).mean()


def region_loss(pred: torch.Tensor, target: torch.Tensor, neg_weight: float = 0.02) -> torch.Tensor:
    """FRA's region loss ``pos + neg_weight * neg`` on pred, target ``[B, K, D]`` (no gradient to target).

    pos = ``2 - 2 mean_{b,k} cos(pred_bk, target_bk)``; neg = ``mean_{b,k} (1/K) sum_{k' != k}
    cos(pred_bk, target_bk')^2`` (decorrelates a region from the other regions of the same image).
    """
    p, t = F.normalize(pred.float(), dim=-1), F.normalize(target.detach().float(), dim=-1)
    k = p.shape[1]
    pos = 2 - 2 * (p * t).sum(-1).mean()
    off_diagonal = 1 - torch.eye(k, device=p.device)
    neg = ((p @ t.transpose(1, 2)).pow(2) * off_diagonal).sum(-1).div(k).mean()
    return pos + neg_weight * neg


def global_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean of ``x [N, ...]`` over its first axis and over all processes -> ``[...]``.

    The value is the global mean; the gradient flows through this process's mean divided by the world
    size (what the released in-place, untracked ``all_reduce`` followed by ``/ world_size`` gives).
    """
    local, world = x.mean(0), distributed.world_size()
    return local / world + (distributed.all_reduce_mean(local) - local.detach() / world)


@torch.no_grad()
def sinkhorn(probs: torch.Tensor, iters: int = 3) -> torch.Tensor:
    """Sinkhorn-Knopp on ``probs [N, K]`` (N rows over all processes): ``[N, K]`` whose rows sum to 1 and
    whose columns tend to ``N / K`` (exactly so after enough ``iters``; 3 in FRA / SwAV)."""
    q = probs.float().T.clone()  # [K, N]
    k, n = q.shape[0], q.shape[1] * distributed.world_size()
    q /= distributed.all_reduce_sum(q.sum())
    for _ in range(iters):
        q /= distributed.all_reduce_sum(q.sum(dim=1, keepdim=True)) * k  # each region: total 1 / K
        q /= q.sum(dim=0, keepdim=True) * n  # each row: total 1 / N
    return (q * n).T


def cluster_loss(
    student: torch.Tensor, teacher: torch.Tensor, student_temp: float = 0.1, teacher_temp: float = 0.04, iters: int = 3
) -> torch.Tensor:
    """FRA's deep-clustering loss on per-pixel region scores student, teacher ``[N, K]`` (N = B·h·w).

    ``CE(sinkhorn(softmax(teacher / teacher_temp)), log_softmax(student / student_temp))`` averaged over
    rows, plus ``log K - H(p_bar)`` with ``p_bar`` the mean student probability over rows and processes
    (a mean-entropy maximisation that keeps every region in use). No gradient reaches ``teacher``.
    """
    log_p = F.log_softmax(student.float() / student_temp, dim=-1)
    assignment = sinkhorn(F.softmax(teacher.detach().float() / teacher_temp, dim=-1), iters)
    cross_entropy = -(assignment * log_p).sum(-1).mean()
    p_bar = global_mean(log_p.exp())
    return cross_entropy + (p_bar * p_bar.log()).sum() + math.log(p_bar.shape[0])


def region_cosine(mask_embed: torch.Tensor) -> torch.Tensor:
    """Mean cosine between the K batch-mean region embeddings of ``mask_embed [B, K, D]`` over the K·(K − 1)
    ordered pairs: 1 when the regions have collapsed into one (every heatmap ``1 / K``), near 0 when apart."""
    e = F.normalize(mask_embed.detach().float().mean(0), dim=-1)
    k = e.shape[0]
    return ((e @ e.T).sum() - k) / (k * (k - 1))


def region_heatmaps(
    embeddings: torch.Tensor, pixels: torch.Tensor, scale: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """embeddings ``[K, D]``, pixel projections ``[B, D, h, w]`` -> (dots, heatmaps), each ``[B, K, h, w]``.

    dots = cosine similarities; heatmaps = ``softmax_k(dots / scale) + 1e-7`` (sum over k: ``1 + K·1e-7``).
    """
    dots = torch.einsum("kd,bdhw->bkhw", F.normalize(embeddings.float(), dim=-1), F.normalize(pixels.float(), dim=1))
    return dots, (dots / scale).softmax(dim=1) + HEATMAP_EPS


# ---------------------------------------------------------------- the neck


class MLP1D(nn.Sequential):
    """BYOL's neck on sequences: ``Conv1d(k=1, no bias) -> BN1d -> ReLU -> Conv1d(k=1, no bias)``.

    x: ``[B, in_dim, L]`` -> ``[B, out_dim, L]`` (BN statistics over B·L). Init as released (``utils/init.py``:
    every ``Conv1d`` of the necks and the predictors gets Caffe2's MSRA fill): Kaiming normal, fan-out, ReLU.
    """

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int) -> None:
        super().__init__(
            nn.Conv1d(in_dim, hidden_dim, 1, bias=False),
            nn.BatchNorm1d(hidden_dim),
            nn.ReLU(inplace=True),
            nn.Conv1d(hidden_dim, out_dim, 1, bias=False),
        )
        for conv in (self[0], self[3]):
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")


def sine_positions(height: int, width: int, dim: int, device: torch.device | None = None) -> torch.Tensor:
    """DETR's normalised sine positions (temperature 1e4, scale 2π) -> ``[h·w, dim]`` row-major.

    The first ``dim / 2`` channels encode the row, the rest the column; within each half, interleaved
    sin / cos of the coordinate ``(i + 1) / n · 2π`` over frequencies ``1e4^(2⌊j/2⌋ / (dim/2))``.
    """
    half = dim // 2
    freq = 10000.0 ** (2 * (torch.arange(half, device=device) // 2) / half)

    def encode(n: int) -> torch.Tensor:
        angle = (torch.arange(1, n + 1, device=device) / (n + 1e-6) * 2 * math.pi)[:, None] / freq  # [n, half]
        return torch.stack([angle[:, 0::2].sin(), angle[:, 1::2].cos()], dim=2).flatten(1)

    rows = encode(height)[:, None].expand(height, width, half)
    cols = encode(width)[None].expand(height, width, half)
    return torch.cat([rows, cols], dim=-1).reshape(height * width, dim)


class DecoderLayer(nn.Module):
    """DETR's post-norm decoder layer: self-attention, cross-attention to the feature map, ReLU FFN.

    Positions are added to queries and keys, not values. tgt, query_pos ``[B, Q, D]``; memory ``[B, N, D]``;
    pos ``[N, D]`` -> ``[B, Q, D]``.
    """

    def __init__(self, dim: int, heads: int, ffn_dim: int, dropout: float) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.cross_attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_dim), nn.ReLU(), nn.Dropout(dropout), nn.Linear(ffn_dim, dim))
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.drop = nn.Dropout(dropout)

    def forward(
        self, tgt: torch.Tensor, query_pos: torch.Tensor, memory: torch.Tensor, pos: torch.Tensor
    ) -> torch.Tensor:
        q = tgt + query_pos
        tgt = self.norm1(tgt + self.drop(self.self_attn(q, q, tgt, need_weights=False)[0]))
        attended = self.cross_attn(tgt + query_pos, memory + pos, memory, need_weights=False)[0]
        tgt = self.norm2(tgt + self.drop(attended))
        return self.norm3(tgt + self.drop(self.ffn(tgt)))


class MaskEmbedPredictor(nn.Module):
    """FRA's ``proj_attn``: MaskFormer's transformer predictor without encoder layers or classifier.

    x ``[B, C, h, w]`` -> 1×1 conv to ``dim`` (+ sine positions) -> ``depth`` post-norm decoder layers on
    ``num_queries`` learnable queries (zero targets, query embeddings as positions) -> LayerNorm ->
    3-layer MLP -> mask embeddings ``[B, num_queries, dim]``. Init as released: Xavier-uniform decoder
    weights, ``kaiming_uniform(a=1)`` input projection with zero bias, N(0, 1) queries.
    """

    def __init__(
        self, in_dim: int, dim: int = 256, num_queries: int = 8, heads: int = 8, ffn_dim: int = 256, depth: int = 2,
        dropout: float = 0.1,
    ) -> None:  # fmt: skip
        super().__init__()
        self.input_proj = nn.Conv2d(in_dim, dim, 1)
        self.query_embed = nn.Embedding(num_queries, dim)
        self.layers = nn.ModuleList(DecoderLayer(dim, heads, ffn_dim, dropout) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.mask_embed = MLPHead(dim, dim, dim, num_layers=3, norm="none", bias=True)
        for p in self.layers.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        nn.init.kaiming_uniform_(self.input_proj.weight, a=1)
        nn.init.zeros_(self.input_proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        memory = self.input_proj(x).flatten(2).transpose(1, 2)  # [B, h·w, dim]
        pos = sine_positions(h, w, memory.shape[-1], x.device).to(memory.dtype)
        query_pos = self.query_embed.weight.unsqueeze(0).expand(b, -1, -1)
        tgt = torch.zeros_like(query_pos)
        for layer in self.layers:
            tgt = layer(tgt, query_pos, memory, pos)
        return self.mask_embed(self.norm(tgt))


@dataclass
class NeckOutput:
    """What :class:`RegionNeck` returns for one view: z_g ``[B, D]``; regions ``[B, K, D]``; dots and
    heatmaps ``[B, K, h, w]`` (float32); mask_embed ``[B, K, D]`` (per-image embeddings)."""

    z_g: torch.Tensor
    regions: torch.Tensor
    dots: torch.Tensor
    heatmaps: torch.Tensor
    mask_embed: torch.Tensor


class RegionNeck(nn.Module):
    """FRA's ``ObjectNeck`` (``mask_type="attn"``): global projection, K region features, their heatmaps.

    ``proto [K, D]`` (buffer, N(0, 1) at init) is the EMA of the batch-mean mask embeddings used for
    evaluation heatmaps (:meth:`proto_heatmaps`); :meth:`update_proto` moves it.
    """

    def __init__(
        self, in_dim: int, hidden_dim: int = 4096, dim: int = 256, num_regions: int = 8, scale: float = 1.0,
        proto_momentum: float = 0.9, attn_heads: int = 8, attn_depth: int = 2, attn_dropout: float = 0.1,
    ) -> None:  # fmt: skip
        super().__init__()
        self.scale, self.proto_momentum = scale, proto_momentum
        self.proj = MLP1D(in_dim, hidden_dim, dim)
        self.proj_pixel = MLP1D(in_dim, hidden_dim, dim)
        self.proj_obj = MLP1D(in_dim, hidden_dim, dim)
        self.proj_attn = MaskEmbedPredictor(in_dim, dim, num_regions, attn_heads, dim, attn_depth, attn_dropout)
        self.register_buffer("proto", torch.randn(num_regions, dim))

    def forward(self, x: torch.Tensor) -> NeckOutput:
        """x: trunk features ``[B, C, h, w]``; heatmaps from this batch's mean embeddings (training)."""
        b, _, h, w = x.shape
        z_g = self.proj(x.mean(dim=(2, 3)).unsqueeze(-1)).squeeze(-1)
        pixels = self.proj_pixel(x.flatten(2)).view(b, -1, h, w)
        mask_embed = self.proj_attn(x)
        with torch.autocast(x.device.type, enabled=False):
            dots, heatmaps = region_heatmaps(global_mean(mask_embed.float()), pixels, self.scale)
            weights = heatmaps / heatmaps.sum(dim=(2, 3), keepdim=True)
            pooled = torch.einsum("bchw,bkhw->bck", x.float(), weights)  # [B, C, K]
        regions = self.proj_obj(pooled).transpose(1, 2)
        return NeckOutput(z_g, regions, dots, heatmaps, mask_embed)

    def proto_heatmaps(self, x: torch.Tensor) -> torch.Tensor:
        """x ``[B, C, h, w]`` -> evaluation heatmaps ``[B, K, h, w]`` from ``proto``."""
        b, _, h, w = x.shape
        pixels = self.proj_pixel(x.flatten(2)).view(b, -1, h, w)
        with torch.autocast(x.device.type, enabled=False):
            return region_heatmaps(self.proto, pixels, self.scale)[1]

    @torch.no_grad()
    def update_proto(self, mask_embed: torch.Tensor) -> None:
        """``proto <- m·proto + (1 − m)·mean(mask_embed [B, K, D])`` (mean over the batch and processes)."""
        center = distributed.all_reduce_mean(mask_embed.float().mean(0))
        self.proto.mul_(self.proto_momentum).add_(center, alpha=1 - self.proto_momentum)


# ---------------------------------------------------------------- the method


@METHODS.register("fra")
class FRA(Method):
    """Facial Region Awareness; see the module docstring.

    backbone / backbone_kwargs: a ResNet trunk of :data:`facekit.nn.backbones.BACKBONES` (``resnet18/34/50``)
    and timm ``ResNet`` overrides.
    dim 256, hidden_dim 4096 (MLP1D necks and predictors); num_regions K = 8; scale 1 (heatmap softmax);
    proto_momentum 0.9; attn_heads 8, attn_depth 2, attn_dropout 0.1 (the mask-embedding transformer,
    FFN width ``dim``); inst_weight 0.5 (region part: 1 − inst_weight);
    neg_weight 0.02; cluster_weight 0.1; student_temp 0.1, teacher_temp 0.04, sinkhorn_iters 3;
    image_size: side of the views (224; maps are ``ceil(S / 32)`` wide); normalize: whether the
    views are normalised in the workers (else uint8 views are normalised here, on the device).
    """

    mean, std = VGGFACE2_MEAN, VGGFACE2_STD
    recipe: ClassVar[dict[str, Any]] = {
        "batch_size": 512, "epochs": 50, "warmup_epochs": 10, "optimizer": "lars", "lr": 0.9, "momentum": 0.9,
        "weight_decay": 1e-6, "amp": True, "sync_batchnorm": True, "ema_momentum": 0.996,
    }  # fmt: skip

    def __init__(
        self, backbone: str = "resnet50", backbone_kwargs: dict[str, Any] | None = None, *, dim: int = 256,
        hidden_dim: int = 4096, num_regions: int = 8, scale: float = 1.0, proto_momentum: float = 0.9,
        attn_heads: int = 8, attn_depth: int = 2, attn_dropout: float = 0.1, inst_weight: float = 0.5,
        neg_weight: float = 0.02, cluster_weight: float = 0.1, student_temp: float = 0.1, teacher_temp: float = 0.04,
        sinkhorn_iters: int = 3, image_size: int = 224, normalize: bool = True,
    ) -> None:  # fmt: skip
        super().__init__()
        self.backbone: ResNetTrunk = BACKBONES.create(backbone, **(backbone_kwargs or {}))
        if not isinstance(self.backbone, ResNetTrunk):
            raise ValueError(f"FRA needs a ResNet trunk (resnet18, resnet34, resnet50), got backbone {backbone!r}")
        self.neck = RegionNeck(
            self.backbone.num_features, hidden_dim, dim, num_regions, scale, proto_momentum,
            attn_heads, attn_depth, attn_dropout,
        )  # fmt: skip
        self.predictor = MLP1D(dim, hidden_dim, dim)
        self.predictor_obj = MLP1D(dim, hidden_dim, dim)
        self.target_backbone = copy_as_target(self.backbone)
        self.target_neck = copy_as_target(self.neck)
        self.inst_weight, self.neg_weight = inst_weight, neg_weight
        self.cluster_weight, self.sinkhorn_iters = cluster_weight, sinkhorn_iters
        self.student_temp, self.teacher_temp = student_temp, teacher_temp
        self.image_size, self.normalize = image_size, normalize

    def views(self) -> TwoViews:
        """Released VGGFace2 views: RandomResizedCrop(S, 0.2–1, bilinear), flip, jitter (0.4, 0.4, 0.2, 0.1)
        p=0.8, grayscale 0.2; view 1 blur p=1; view 2 blur 0.1, solarize 0.2; VGGFace2 mean / std."""
        common: dict[str, Any] = dict(
            size=self.image_size, scale=(0.2, 1.0), interpolation="bilinear", jitter_p=0.8, gray_p=0.2,
            mean=self.mean, std=self.std, normalize=self.normalize,
        )  # fmt: skip
        return TwoViews(ViewRecipe(blur_p=1.0, **common), ViewRecipe(blur_p=0.1, solarize_p=0.2, **common))

    def export_backbone(self) -> ResNetTrunk:
        return self.backbone

    def forward(self, batch: dict[str, Any], hp: StepValues) -> dict[str, torch.Tensor | float]:
        """batch: ``view1``, ``view2`` ``[B, 3, S, S]``; returns ``loss`` and its detached parts."""
        if "view1" not in batch or "view2" not in batch:
            raise ValueError(f"FRA needs batch keys 'view1' and 'view2' (from FRA.views()), got {sorted(batch)}")
        x1, x2 = self._input(batch["view1"]), self._input(batch["view2"])
        online1, online2 = self._online(x1), self._online(x2)
        with torch.no_grad():
            target1 = self.target_neck(self.target_backbone.forward_features(x1))
            target2 = self.target_neck(self.target_backbone.forward_features(x2))
        inst1, obj1 = self._pair_losses(online1, target2)
        inst2, obj2 = self._pair_losses(online2, target1)
        inst = self.inst_weight * (inst1 + inst2)
        obj = (1 - self.inst_weight) * (obj1 + obj2)
        cluster = 0.5 * (self._cluster(online1, target1) + self._cluster(online2, target2))
        loss = inst + obj + self.cluster_weight * cluster
        parts = {"inst": inst, "obj": obj, "cluster": cluster, "region_cos": region_cosine(online1.mask_embed)}
        return {"loss": loss, **{k: v.detach() for k, v in parts.items()}, "momentum": hp.momentum}

    def after_step(self, hp: StepValues) -> None:
        """EMA of the online backbone and neck into the target with the loop's ``hp.momentum``."""
        ema_update(self.target_backbone, self.backbone, hp.momentum)
        ema_update(self.target_neck, self.neck, hp.momentum)

    @torch.no_grad()
    def heatmaps(self, images: torch.Tensor) -> torch.Tensor:
        """images ``[B, 3, S, S]`` (normalised float or uint8) -> region heatmaps ``[B, K, h, w]`` (h = ⌈S/32⌉)
        from ``proto`` (online network, in its current train / eval mode)."""
        return self.neck.proto_heatmaps(self.backbone.forward_features(self._input(images)))

    def _input(self, x: torch.Tensor) -> torch.Tensor:
        return normalize_batch(x, self.mean, self.std) if x.dtype == torch.uint8 else x

    def _online(self, x: torch.Tensor) -> NeckOutput:
        out = self.neck(self.backbone.forward_features(x))
        if self.training:
            self.neck.update_proto(out.mask_embed)
        return out

    def _pair_losses(self, online: NeckOutput, target: NeckOutput) -> tuple[torch.Tensor, torch.Tensor]:
        """(instance loss, region loss) of the online predictions of one view against the other view's target."""
        pred = self.predictor(online.z_g.unsqueeze(-1)).squeeze(-1)
        pred_obj = self.predictor_obj(online.regions.transpose(1, 2)).transpose(1, 2)
        return byol_loss(pred, target.z_g), region_loss(pred_obj, target.regions, self.neg_weight)

    def _cluster(self, online: NeckOutput, target: NeckOutput) -> torch.Tensor:
        k = online.dots.shape[1]
        student = online.dots.permute(0, 2, 3, 1).reshape(-1, k)
        teacher = target.dots.permute(0, 2, 3, 1).reshape(-1, k)
        return cluster_loss(student, teacher, self.student_temp, self.teacher_temp, self.sinkhorn_iters)


def save_heatmap_figure(image_rgb: np.ndarray, heatmaps: torch.Tensor | np.ndarray, path: str | Path) -> Path:
    """Write a PNG of the face, its partition into regions (per-pixel argmax, tab10 colours) and each region's
    heatmap over it (bilinearly upsampled, alpha 0.5, jet over the maps' common range, which the partition's
    title gives: FRA's softmax at scale 1 keeps weights far below 1, so a fixed 0-1 scale looks flat). Returns
    the path.

    image_rgb: uint8 ``[H, W, 3]``; heatmaps: ``[K, h, w]`` (one image's :meth:`FRA.heatmaps`), K ≤ 10.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    maps = heatmaps.detach().float().cpu().numpy() if isinstance(heatmaps, torch.Tensor) else np.asarray(heatmaps)
    if image_rgb.ndim != 3 or image_rgb.shape[2] != 3 or maps.ndim != 3 or len(maps) > 10:
        raise ValueError(f"need image [H, W, 3] and heatmaps [K ≤ 10, h, w], got {image_rgb.shape} and {maps.shape}")
    up = F.interpolate(torch.from_numpy(maps)[None].float(), image_rgb.shape[:2], mode="bilinear")[0].numpy()
    panels = len(maps) + 2
    cols = math.ceil(math.sqrt(panels))
    fig = Figure(figsize=(2.2 * cols, 2.2 * math.ceil(panels / cols)))
    FigureCanvasAgg(fig)
    axes = fig.subplots(math.ceil(panels / cols), cols, squeeze=False).ravel()
    for ax in axes[:panels]:
        ax.imshow(image_rgb)
    axes[0].set_title("face", fontsize=9)
    axes[1].imshow(up.argmax(0), cmap="tab10", vmin=0, vmax=9, alpha=0.5, interpolation="nearest")
    low, high = float(up.min()), float(up.max())
    axes[1].set_title(f"regions (argmax)\nweights {low:.3f}-{high:.3f}", fontsize=9)
    for k, heat in enumerate(up):
        axes[k + 2].imshow(heat, cmap="jet", alpha=0.5, vmin=low, vmax=max(high, low + 1e-6))
        axes[k + 2].set_title(f"region {k} (max {heat.max():.2f})", fontsize=9)
    for ax in axes:
        ax.axis("off")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path
