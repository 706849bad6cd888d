"""Supervised face-recognition fine-tuning: a backbone, a margin head over (Partial) FC, masked-face swaps.

Follows FaceT (Zhu et al., TIFS 2023; training code on insightface ``arcface_torch``) and LAFS's
fine-tuning (Sun et al., CVPR 2024)::

    record --FaceRecognitionView--> image [3, 112, 112] in [−1, 1], ismask (1 = the masked twin was used)
      [, mesh_landmarks [196, 2]: the mesh's MESH_196 through the view's crop and flip]
      --backbone (FaceT-B: prompts chosen by ismask; IR-50/100; LAFS: patches at the landmarks)--> emb [B, 512]
      --PartialFC(margin head)--> {"loss": CE (+ MagFace's g), "ce", ...}

A LAFS pre-training export is a :class:`~facekit.nn.landmark_vit.LandmarkViT`: it is fine-tuned over the
same landmark patches it was pre-trained on, its landmarks predicted by its own landmark network
(``"learned"``) or, for ``"mesh"``, read from the record's dense landmarks by the view.

The backbone is built by name from :data:`~facekit.nn.backbones.BACKBONES` (ViTs, FaceT-B, ``ir50``/``ir100``,
ResNet trunks), or from a run folder's exported backbone (``backbone.json`` + ``backbone.safetensors``, see
:mod:`facekit.nn.backbones`), or from any state dict with a key-prefix map; the load report (missing /
unexpected / mismatched keys; the tensors a run folder's export lacks because ``backbone_kwargs`` add them are counted,
not listed) is printed and kept in :attr:`FineTune.load_report`.
:data:`FINETUNE_RECIPES` holds FaceT's two recipes in the pretrain-run format. As FaceT's trainer: layer-wise lr
decay (block i of L at ``decay^(L − i)``), no weight decay on the backbone's learned positions, gradient
clipping of the backbone only. Deviation: FaceT warms the lr up with ``np.linspace(0, lr, W)``, one step ahead
of the loop's ``lr · i / W`` (:mod:`facekit.train.schedules`; at most ``lr / W`` lower per warm-up step).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from facekit import distributed
from facekit.data.images import ImageError, decode_crop_rgb
from facekit.data.ops.landmarks import mesh_196
from facekit.data.record import FaceRecord
from facekit.data.views import ViewRecipe
from facekit.methods.base import METHODS, Method, StepValues
from facekit.nn import backbones
from facekit.nn.backbones import BACKBONES, LoadReport
from facekit.nn.landmark_patches import landmarks_in_view
from facekit.nn.landmark_vit import LandmarkViT, needs_landmarks
from facekit.nn.margins import MARGINS
from facekit.nn.partial_fc import PartialFC
from facekit.nn.vit import ViT


class FaceRecognitionView:
    """FaceT's training view: [masked-twin swap] -> [RandomResizedCrop] -> hflip 0.5 -> normalise.

    With probability ``masked_faces`` the record's synthetic masked twin (``record.masked_image``, same
    geometry) replaces the face and ``ismask`` is 1; a record without a twin stays holistic. The random
    draw happens for every sample, so the stream of draws does not depend on which records have twins.
    crop_scale: RandomResizedCrop's area range (LAFS: (0.9, 1)); None keeps the whole face (FaceT).
    Returns ``{"image": float32 [3, size, size], "ismask": long scalar}``, with ``mesh_landmarks=True``
    also ``"mesh_landmarks"``: float32 ``[196, 2]``, the record's MESH_196 points in the view's pixels (the masked
    twin shares its face's geometry). Called with the record by :class:`~facekit.data.dataset.FaceShardDataset`
    (``takes_record``); with ``rgb`` only, no swap (and no landmarks: an error with ``mesh_landmarks``).
    """

    takes_record = True

    def __init__(
        self,
        size: int = 112,
        crop_scale: tuple[float, float] | None = None,
        masked_faces: float = 0.0,
        mean: tuple[float, float, float] = (0.5, 0.5, 0.5),
        std: tuple[float, float, float] = (0.5, 0.5, 0.5),
        mesh_landmarks: bool = False,
    ) -> None:
        if not 0.0 <= masked_faces <= 1.0:
            raise ValueError(f"masked_faces must be a probability in [0, 1], got {masked_faces}")
        self.masked_faces, self.mesh_landmarks = masked_faces, mesh_landmarks
        self.recipe = ViewRecipe(size, scale=tuple(crop_scale or (1.0, 1.0)), mean=mean, std=std)

    def __call__(self, rgb: np.ndarray, record: FaceRecord | None = None) -> dict[str, torch.Tensor]:
        mesh = mesh_196(record) if self.mesh_landmarks else None
        source_hw = rgb.shape[:2]
        ismask = 0
        swap = self.masked_faces > 0 and np.random.random() < self.masked_faces
        if swap and record is not None and record.masked_image is not None:
            try:
                rgb = decode_crop_rgb(record.masked_image)
            except ImageError as e:
                raise ValueError(f"record {record.key}: masked_image cannot be decoded: {e}") from None
            ismask = 1
        image, box = self.recipe.apply(rgb)
        out = {"image": image, "ismask": torch.tensor(ismask, dtype=torch.long)}
        if mesh is not None:
            out["mesh_landmarks"] = torch.from_numpy(landmarks_in_view(mesh, box, source_hw, self.recipe.size))
        return out


def build_backbone(
    name: str | None,
    kwargs: dict[str, Any] | None = None,
    init_from: Path | str | None = None,
    prefix_map: dict[str, str] | None = None,
) -> tuple[nn.Module, LoadReport | None]:
    """Build a backbone and optionally load weights into it; returns (backbone, load report or None).

    init_from: a run folder with an exported backbone (its ``backbone.json`` names the backbone and its
    kwargs, which ``kwargs`` update, e.g. FaceT's prompts and 512-d head absent at pre-training), or any
    weights file readable by :func:`~facekit.nn.backbones.load_weights` (then ``name`` is required).
    ``prefix_map`` renames keys by prefix (``{"encoder.": ""}``); loading is non-strict.
    """
    kwargs = dict(kwargs or {})
    weights, overrides = None, None
    if init_from is not None:
        init_from = Path(init_from)
        if not init_from.exists():
            raise FileNotFoundError(f"init_from: {init_from} does not exist")
        weights = init_from
        if (init_from / backbones.SPEC_FILE).is_file():
            spec = backbones.read(init_from)
            if name is not None and name != spec.name:
                raise ValueError(f"backbone {name!r} differs from {spec.name!r} exported in {init_from}")
            overrides = {k: v for k, v in kwargs.items() if spec.kwargs.get(k) != v}
            name, kwargs = spec.name, {**spec.kwargs, **kwargs}
            weights = backbones.weights_file(init_from)
    if name is None:
        raise ValueError("give a backbone name (or init_from a run folder with backbone.json)")
    backbone = BACKBONES.create(name, **kwargs)
    if weights is None:
        return backbone, None
    report = backbones.load_weights(weights, backbone, prefix_map)
    if distributed.is_main():
        print(_load_summary(report, weights, overrides))
    return backbone, report


def _load_summary(report: LoadReport, weights: Path, overrides: dict[str, Any] | None) -> str:
    """One line on how the initialisation loaded. ``overrides``: the backbone kwargs that differ from those of
    the run folder's export (``None`` for a bare weights file); an export holds every tensor of its own
    architecture, so its missing tensors are the parts those overrides add and are counted, not listed."""
    line = f"finetune: {len(report.loaded)} tensors loaded from {weights}"
    if report.missing and overrides is not None:
        parts = sorted({key.split(".")[0] for key in report.missing})
        line += f"; {len(report.missing)} new tensors ({', '.join(parts)}) added by backbone_kwargs {overrides}"
    elif report.missing:
        line += f"; missing {report.missing}"
    if report.unexpected:
        line += f"; unexpected {report.unexpected}"
    if report.mismatched:
        line += f"; shape mismatch {report.mismatched}"
    return line


@METHODS.register("finetune")
class FineTune(Method):
    """Margin-softmax fine-tuning of a face embedding network.

    num_classes: identities in the training set (``identity`` labels in [0, C)). backbone /
    backbone_kwargs / init_from / prefix_map: see :func:`build_backbone`. margin / margin_kwargs: a
    :data:`~facekit.nn.margins.MARGINS` head (``arcface``, ``cosface``, ``combined``, ``curricularface``,
    ``magface``). sample_rate: Partial FC's fraction of centres (1.0 = full FC). image_size: defaults to the
    backbone's ``img_size``. crop_scale, masked_faces: see :class:`FaceRecognitionView`. FaceT-B's prompts
    follow each sample's ``ismask``; IR nets ignore it. A LAFS backbone that takes mesh landmarks gets them
    from the views (``batch["mesh_landmarks"]``).

    Gradient clipping covers the backbone only (:meth:`clip_scope`). Under DDP the Partial FC shard is hidden
    from DDP's gradient averaging; the logged gradient norm sums every rank's shard, and each rank checkpoints
    its own shard (``rank<r>.pt``; resuming needs the same world size,
    :func:`~facekit.train.checkpoint.full_state_dict` joins the shards).
    """

    def __init__(
        self,
        num_classes: int,
        backbone: str | None = None,
        backbone_kwargs: dict[str, Any] | None = None,
        init_from: Path | str | None = None,
        prefix_map: dict[str, str] | None = None,
        margin: str = "arcface",
        margin_kwargs: dict[str, Any] | None = None,
        sample_rate: float = 1.0,
        image_size: int | None = None,
        crop_scale: tuple[float, float] | None = None,
        masked_faces: float = 0.0,
    ) -> None:
        super().__init__()
        self.backbone, self.load_report = build_backbone(backbone, backbone_kwargs, init_from, prefix_map)
        embedding_size = getattr(self.backbone, "out_dim", None)
        if embedding_size is None:
            raise ValueError(f"backbone {type(self.backbone).__name__} has no out_dim (embedding size)")
        margin_head = MARGINS.create(margin, **(margin_kwargs or {}))
        self.head = PartialFC(margin_head, num_classes, embedding_size, sample_rate)
        ignored = [f"head.{n}" for n in self.head.local_parameter_names()]
        if ignored:
            DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(self, ignored)
        self.image_size = image_size or self.backbone.img_size
        self.crop_scale = crop_scale
        self.masked_faces = masked_faces

    def views(self) -> Callable[..., dict[str, torch.Tensor]]:
        mesh = needs_landmarks(self.backbone)
        return FaceRecognitionView(self.image_size, self.crop_scale, self.masked_faces, mesh_landmarks=mesh)

    def embed(
        self, images: torch.Tensor, ismask: torch.Tensor | None = None, landmarks: torch.Tensor | None = None
    ) -> torch.Tensor:
        """images: [B, 3, S, S] in [−1, 1], ismask: [B] (ViT prompts; None = holistic), landmarks: [B, 196, 2]
        (a LAFS backbone's mesh points, view pixels) -> emb [B, D]."""
        if isinstance(self.backbone, LandmarkViT):
            return self.backbone(images, landmarks)
        if isinstance(self.backbone, ViT):
            return self.backbone(images, ismask=ismask)
        return self.backbone(images)

    def forward(self, batch: dict[str, Any], hp: StepValues) -> dict[str, torch.Tensor]:
        emb = self.embed(batch["image"], batch.get("ismask"), batch.get("mesh_landmarks"))
        return self.head(emb, batch["identity"])

    def clip_scope(self) -> nn.Module:
        """The backbone: FaceT's trainer and ``arcface_torch`` clip the backbone's gradients only, not the
        Partial FC centres' (whose norm is about 1.8× the backbone's at init)."""
        return self.backbone

    def no_weight_decay(self) -> set[str]:
        """The backbone's own ``no_weight_decay()`` (a ViT's learned positions and cls token), as FaceT's
        and MAE's fine-tuning exempt them; Partial FC's centres are decayed."""
        names = self.backbone.no_weight_decay() if hasattr(self.backbone, "no_weight_decay") else set()
        return {f"backbone.{name}" for name in names}

    def export_backbone(self) -> nn.Module:
        """The embedding network: [B, 3, 112, 112] in [−1, 1] -> [B, 512] (L2-normalise for matching)."""
        return self.backbone


#: FaceT's fine-tuning recipes (the README's commands) as pretrain-style runs: ``{"method": "finetune",
#: <FineTune kwargs>, "train": <TrainConfig kwargs>}``; add ``num_classes`` (and ``init_from``). ``blr`` is
#: FaceT's lr per 256 images (WebFace42M used 0.00075 for FaceT-B). Both use ``--head magface`` and a 1-epoch
#: warm-up. FaceT-B clips the backbone's gradients to a global norm of 1.0 (:meth:`FineTune.clip_scope`: not
#: the centres); IR-100 does not clip and takes FaceT's step decay, lr ×0.1 at epochs 8, 12 and 16
#: (``lr_schedule: step``). ``batch_size`` is per process: FaceT used 256 per GPU for FaceT-B and a batch of
#: 768 for IR-100.
FINETUNE_RECIPES: dict[str, dict[str, Any]] = {
    "facet_base": {
        "method": "finetune",
        "backbone": "facet_base",
        "backbone_kwargs": {"drop_path_rate": 0.1, "num_prompts": 32, "head_dim": 512},
        "margin": "magface",
        "sample_rate": 0.1,
        "masked_faces": 0.1,
        "train": {
            "epochs": 10,
            "batch_size": 256,
            "optimizer": "adamw",
            "blr": 1e-3,
            "betas": (0.9, 0.999),
            "weight_decay": 0.05,
            "layer_decay": 0.75,
            "warmup_epochs": 1,
            "min_lr": 1e-5,
            "clip_grad": 1.0,
            "clip_mode": "global",
        },
    },
    "ir100": {
        "method": "finetune",
        "backbone": "ir100",
        "margin": "magface",
        "sample_rate": 0.1,
        "masked_faces": 0.1,
        "train": {
            "epochs": 20,
            "batch_size": 768,
            "optimizer": "sgd",  # timm's "sgd" is Nesterov
            "blr": 0.025,
            "warmup_epochs": 1,
            "lr_schedule": "step",
            "lr_milestones": (8, 12, 16),
            "lr_gamma": 0.1,
            "momentum": 0.9,
            "weight_decay": 5e-4,
        },
    },
}
