"""LAFS: Landmark-based Facial Self-supervised learning (Sun et al., CVPR 2024) — DINO on landmark patches.

Reading order: :class:`LAFSViews` (crops, their clean/augmented versions, mesh landmarks in view pixels),
:meth:`LAFS.view_patches` (landmarks → jitter / subset → 8×8 patches), :class:`LAFS` (the Method; the loss,
centre, schedules and EMA teacher are :class:`~facekit.methods.dino.DINO`'s).

Per face, 2 global and L local crops (all RandomResizedCrop(112, 0.4–1) + flip, as released); for each crop::

    landmarks [B, 196, 2] (view pixels) --jitter N(0, σ²)--> (locals: 36 drawn with replacement)
      --landmark_patches on the photometrically augmented crop--> [B, 196 | 36, 192]
      --Linear(192 → D) + positions 1..196 | 1..36, cls at 0--> ViT --> DINO head

Landmarks come from one of two sources (``landmarks=``):

- ``"mesh"`` (default): the shards' MediaPipe mesh (``extra["dense_landmarks"]``, 468 points) reduced to
  :data:`~facekit.data.ops.landmarks.MESH_196` (14 × 14 raster order) and mapped into each crop with its
  box and flip (:func:`~facekit.nn.landmark_patches.landmarks_in_view`) in the DataLoader workers. Points
  are fixed anatomical vertices, so token i is the same facial point in every view (mirrored with a
  flipped crop). Points cropped out of a view give zero patches; local subsets are drawn only from the
  points inside the view. Use it whenever the shards went through the ``landmarks`` stage: no extra
  network, no pre-training stage, landmarks of known quality.
- ``"learned"``: the released design. A :class:`~facekit.nn.landmark_patches.LandmarkCNN` predicts 196
  points on the *clean* crop (min-max spread over the crop); patches are cut from the augmented copy.
  As released it is frozen (eval mode, no gradient) and loaded from ``landmark_weights`` (a safetensors
  state dict, e.g. from a supervised Part-fViT-style run); ``train_landmark_head=True`` instead trains it
  from scratch with the student through ``grid_sample``'s gradient w.r.t. the coordinates (Part fViT's
  end-to-end scheme, here driven by the DINO loss: experimental). Use it for shards without mesh
  landmarks, or to reproduce the paper's pipeline with a landmark network of your own.

Fine-tuning and testing keep the landmark path, as the released code does (``with_land=True`` in
``train_largescale.py`` and ``IJB_evaluation.py``): :meth:`LAFS.export_backbone` is a
:class:`~facekit.nn.landmark_vit.LandmarkViT` (``backbone.json``: ``landmark_vit`` with the source), the
teacher's ViT over the patches at all 196 landmarks, unjittered. With ``"learned"`` it holds the landmark
network, which predicts the points on the face it embeds (fine-tuning trains it with the rest, as released:
``freeze=False``, in the stem's layer-decay group), so it and its ONNX export embed a bare aligned face. With
``"mesh"`` (deviation: the released network always predicts its points) it takes the face's MESH_196
points as a second input: fine-tuning maps them through its crop, kNN reads them from the shards,
verification from the ``.landmarks.npy`` the ``eval_sets`` stage writes beside each set, and the ONNX file
has a ``landmarks`` input; a forward without them is an error. Released-code details not kept: the landmark
network's own weight decay in fine-tuning (5e-2 against 1e-1; facekit: the run's one), and the test scripts'
input scaling ``x / 255 − 0.5`` (half the training range; facekit tests with the training normalisation).

Released-code facts kept as defaults: σ = 5 px jitter on every view, 36-landmark subsets on local views only,
teacher temperature 0.07 → 0.04 over 30 epochs, head 2048 → 256 → 100,000, (0.5, 0.5) normalisation, global
crop 0 blurred (p 1.0), global 1 blurred p 0.1 + solarised p 0.2, locals blurred p 0.5, all jittered p 0.8 and
grayed p 0.2. Not reproducible with facekit's ViT (documented deviations): 11 heads × 64 at width 768 (facekit:
12 × 64), attention scale D^−½ (facekit: head width^−½), LayerNorm eps 1e-5 (facekit: 1e-6), dropout 0.1 /
embedding dropout 0.1 (facekit: drop-path only), drop-path 0.1 in every block of student and teacher
(facekit: 0 → 0.1 over the student's blocks, none in the teacher, as DINO).

Released recipe (:attr:`LAFS.recipe`, ``lafs_train.py`` defaults run on 2 GPUs as its README says): batch 164
(82 per GPU), 41 epochs, AdamW, lr 5e-4 per 256 images, 10 warm-up epochs, cosine to 1e-6, weight decay
cosine 0.04 → 0.4 (DINO's groups: cls token and positions decayed), every student gradient clipped to norm 3.0
on its own (``clip_mode="per_parameter"``), teacher momentum cosine 0.996 → 1, last layer frozen for 1 epoch.
The lr warm-up is the loop's ``base · i / W``, one step behind LAFS's ``np.linspace`` (as for
:class:`~facekit.methods.dino.DINO`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from safetensors.torch import load_file

from facekit.data.augment import normalize_batch, stack_to_tensor
from facekit.data.ops.landmarks import MESH_196, mesh_196
from facekit.data.record import FaceRecord
from facekit.data.views import ViewRecipe, crop_views
from facekit.methods.base import METHODS
from facekit.methods.dino import DINO, Photometric
from facekit.nn.backbones import BACKBONES
from facekit.nn.landmark_patches import (
    LandmarkCNN,
    inside_view,
    jitter_landmarks,
    landmark_patches,
    landmarks_in_view,
    sample_landmarks,
)
from facekit.nn.landmark_vit import LandmarkSource, LandmarkViT
from facekit.nn.vit import LinearPatchEmbed

#: LAFS's ViT in facekit's terms: 112 px, 196 tokens of 8 × 8 × 3 embedded by Linear(192 → 768), learned
#: positions ~ N(0, 1) (truncated at ±2), cls token, 12 pre-norm blocks, MLP 2048, no qkv bias,
#: drop-path 0.1 (student).
LAFS_BACKBONE: dict[str, Any] = {
    "img_size": 112,
    "patch_size": 8,
    "embed_dim": 768,
    "depth": 12,
    "num_heads": 12,
    "mlp_ratio": 2048 / 768,
    "qkv_bias": False,
    "patch_embed": "linear",
    "pos_embed": "learned",
    "pos_embed_std": 1.0,
    "drop_path_rate": 0.1,
}


class LAFSViews:
    """Per face: ``global_<i>`` (i < 2) and ``local_<i>`` (i < n_local) crops, each one RandomResizedCrop +
    flip (``crop``) followed by its photometric recipe on that crop.

    Per view ``v``: ``v`` (augmented crop, ``[3, S, S]``, float32 or uint8 as the photometric recipes
    normalise or not), ``v_box`` ([5]) and, with ``landmarks == "mesh"``, ``v_landmarks`` (float32
    ``[196, 2]``, :data:`MESH_196` in the crop's pixels), else ``v_clean`` (the crop before photometric
    changes, for the landmark network). ``photometric_on_device=True``: the photometric recipes are left to
    the method (the views are the clean uint8 crops, no ``v_clean`` copies). With mesh landmarks
    ``takes_record`` is true, so :class:`~facekit.data.dataset.FaceShardDataset` calls ``views(rgb, record)``
    and the mesh comes from ``record.extra["dense_landmarks"]`` ([468, 2] crop pixels).
    """

    def __init__(
        self,
        crop: ViewRecipe,
        global_photometric: Sequence[ViewRecipe],
        local_photometric: ViewRecipe,
        n_local: int,
        landmarks: LandmarkSource,
        photometric_on_device: bool = False,
    ) -> None:
        self.crop, self.global_photometric, self.local_photometric = crop, tuple(global_photometric), local_photometric
        self.n_local, self.landmarks, self.photometric_on_device = n_local, landmarks, photometric_on_device
        self.takes_record = landmarks == "mesh"
        self.recipes = [*self.global_photometric, *[self.local_photometric] * n_local]
        self.names = [f"global_{i}" for i in range(len(self.global_photometric))]
        self.names += [f"local_{i}" for i in range(n_local)]

    def __call__(self, rgb: np.ndarray, record: FaceRecord | None = None) -> dict[str, torch.Tensor]:
        mesh = mesh_196(record) if self.takes_record else None
        recipes, names = self.recipes, self.names
        normalize, mean, std = recipes[0].normalize, recipes[0].mean, recipes[0].std
        if self.photometric_on_device:
            clean, boxes = zip(*(self.crop.geometric(rgb) for _ in recipes), strict=True)
            views, box_array = stack_to_tensor(clean, False, mean, std), np.stack(boxes)
        elif mesh is not None:  # no clean copies needed: crop and photometry in one pass
            views, box_tensor = crop_views(rgb, [self.crop] * len(recipes), recipes)
            box_array = box_tensor.numpy()
        else:
            clean, boxes = zip(*(self.crop.geometric(rgb) for _ in recipes), strict=True)
            augmented = [recipe.photometric(img) for recipe, img in zip(recipes, clean, strict=True)]
            views, box_array = stack_to_tensor(augmented, normalize, mean, std), np.stack(boxes)
        out: dict[str, torch.Tensor] = {}
        for name, view, box in zip(names, views.unbind(), torch.from_numpy(box_array).unbind(), strict=True):
            out[name], out[f"{name}_box"] = view, box
        if mesh is not None:
            points = torch.from_numpy(landmarks_in_view(mesh, box_array, rgb.shape[:2], self.crop.size)).unbind()
            out.update({f"{name}_landmarks": p for name, p in zip(names, points, strict=True)})
        elif not self.photometric_on_device:
            cleans = stack_to_tensor(clean, normalize, mean, std).unbind()
            out.update({f"{name}_clean": view for name, view in zip(names, cleans, strict=True)})
        return out


def photometric_recipes(
    size: int, mean: tuple[float, float, float], std: tuple[float, float, float]
) -> tuple[tuple[ViewRecipe, ViewRecipe], ViewRecipe]:
    """LAFS's photometric steps on a finished crop (no crop, no flip): jitter p 0.8, gray p 0.2, then blur
    p 1.0 (global 0) / blur p 0.1 + solarise p 0.2 (global 1) / blur p 0.5 (locals); normalise."""
    common = {"scale": (1.0, 1.0), "ratio": (1.0, 1.0), "hflip_p": 0.0, "jitter_p": 0.8, "gray_p": 0.2}
    global_0 = ViewRecipe(size, blur_p=1.0, mean=mean, std=std, **common)
    global_1 = ViewRecipe(size, blur_p=0.1, solarize_p=0.2, mean=mean, std=std, **common)
    local = ViewRecipe(size, blur_p=0.5, mean=mean, std=std, **common)
    return (global_0, global_1), local


@METHODS.register("lafs")
class LAFS(DINO):
    """LAFS pre-training: :class:`~facekit.methods.dino.DINO` whose tokens are 8 × 8 patches at facial landmarks.

    Global views give 196 tokens (positions 1..196, 14 × 14 raster order for the mesh); local views 36 tokens
    drawn with replacement (positions 1..36: for random subsets a position does not name a landmark, as
    released). ``backbone_kwargs`` are merged over :data:`LAFS_BACKBONE` (a Linear patch embedding of
    ``patch_size² · 3`` values and at least 196 positions are required). See the module docstring for the
    two landmark sources and what differs from the released code. ``normalize`` and ``photometric`` are
    :class:`~facekit.methods.dino.DINO`'s: with ``photometric="device"`` the workers only crop and flip, and
    the landmark network (``"learned"``) sees the uint8 crops themselves as its clean views.
    """

    num_landmarks = len(MESH_196)
    recipe: ClassVar[dict[str, Any]] = {**DINO.recipe, "batch_size": 164, "epochs": 41}  # else DINO's

    def __init__(
        self,
        backbone: str = "vit_base_patch16_224",
        backbone_kwargs: dict[str, Any] | None = None,
        landmarks: LandmarkSource = "mesh",
        landmark_weights: str | Path | None = None,
        train_landmark_head: bool = False,
        landmark_jitter: float = 5.0,
        num_local_landmarks: int = 36,
        out_dim: int = 100_000,
        head_hidden_dim: int = 2048,
        head_bottleneck_dim: int = 256,
        head_layers: int = 3,
        norm_last_layer: bool = True,
        n_local: int = 8,
        crop_scale: tuple[float, float] = (0.4, 1.0),
        student_temp: float = 0.1,
        teacher_temp: float = 0.04,
        warmup_teacher_temp: float = 0.07,
        warmup_teacher_temp_epochs: int = 30,
        center_momentum: float = 0.9,
        freeze_last_layer: int = 1,
        mean: tuple[float, float, float] = (0.5, 0.5, 0.5),
        std: tuple[float, float, float] = (0.5, 0.5, 0.5),
        normalize: bool = True,
        photometric: Photometric = "workers",
    ) -> None:
        if landmarks not in ("mesh", "learned"):
            raise ValueError(f"landmarks must be 'mesh' or 'learned', got {landmarks!r}")
        if landmarks == "learned" and landmark_weights is None and not train_landmark_head:
            raise ValueError(
                "landmarks='learned' needs landmark_weights (a trained LandmarkCNN) or train_landmark_head=True"
            )
        kwargs = {**LAFS_BACKBONE, **(backbone_kwargs or {})}
        super().__init__(
            backbone,
            kwargs,
            out_dim=out_dim,
            head_hidden_dim=head_hidden_dim,
            head_bottleneck_dim=head_bottleneck_dim,
            head_layers=head_layers,
            norm_last_layer=norm_last_layer,
            n_local=n_local,
            local_size=kwargs["img_size"],
            global_scale=crop_scale,
            local_scale=crop_scale,
            student_temp=student_temp,
            teacher_temp=teacher_temp,
            warmup_teacher_temp=warmup_teacher_temp,
            warmup_teacher_temp_epochs=warmup_teacher_temp_epochs,
            center_momentum=center_momentum,
            freeze_last_layer=freeze_last_layer,
            mean=mean,
            std=std,
            normalize=normalize,
            photometric=photometric,
        )
        vit = self.student.backbone
        if not isinstance(vit.patch_embed, LinearPatchEmbed) or vit.num_patches < self.num_landmarks:
            raise ValueError(
                f"LAFS needs backbone_kwargs with patch_embed='linear' and >= {self.num_landmarks} patches "
                f"(got {type(vit.patch_embed).__name__}, {vit.num_patches} patches)"
            )
        if not 0 < num_local_landmarks <= self.num_landmarks:
            raise ValueError(f"num_local_landmarks must be in 1..{self.num_landmarks}, got {num_local_landmarks}")
        self.landmarks, self.landmark_jitter, self.num_local_landmarks = landmarks, landmark_jitter, num_local_landmarks
        self.train_landmark_head = train_landmark_head
        self.landmark_head = LandmarkCNN(self.num_landmarks) if landmarks == "learned" else None
        if self.landmark_head is not None:
            if landmark_weights is not None:
                self.landmark_head.load_state_dict(_landmark_state(Path(landmark_weights)))
            if not train_landmark_head:
                self.landmark_head.requires_grad_(False).eval()

    def train(self, mode: bool = True) -> LAFS:
        """A frozen landmark network stays in eval mode (BatchNorm statistics, no dropout), as released."""
        super().train(mode)
        if self.landmark_head is not None and not self.train_landmark_head:
            self.landmark_head.eval()
        return self

    def recipes(self) -> tuple[tuple[ViewRecipe, ...], ViewRecipe]:
        """(global, local) photometric recipes: :func:`photometric_recipes` at the backbone's size."""
        return photometric_recipes(self.student.backbone.img_size, self.mean, self.std)

    def views(self) -> Callable[..., dict[str, torch.Tensor]]:
        """:class:`LAFSViews`: RandomResizedCrop(S, ``crop_scale``, bicubic) + flip, then
        :func:`photometric_recipes` (in the workers, or on the device with ``photometric="device"``); S is
        the backbone's size (112)."""
        size = self.student.backbone.img_size
        crop = ViewRecipe(size, scale=self.global_scale, mean=self.mean, std=self.std, normalize=False)
        global_photometric, local_photometric = self.worker_recipes()
        on_device = self.photometric == "device"
        return LAFSViews(crop, global_photometric, local_photometric, self.n_local, self.landmarks, on_device)

    def view_images(self, batch: dict[str, Any], names: Sequence[str], recipes: Sequence[ViewRecipe]) -> torch.Tensor:
        """The named views ``[len(names)·B, 3, S, S]`` (view-major), ready for the network: consecutive views
        of one recipe go through :meth:`network_input` together."""
        groups: list[tuple[ViewRecipe, list[torch.Tensor]]] = []
        for name, recipe in zip(names, recipes, strict=True):
            if groups and groups[-1][0] == recipe:
                groups[-1][1].append(batch[name])
            else:
                groups.append((recipe, [batch[name]]))
        return torch.cat([self.network_input(torch.cat(views), recipe) for recipe, views in groups])

    def view_landmarks(self, batch: dict[str, Any], names: Sequence[str]) -> torch.Tensor:
        """Landmarks ``[len(names)·B, 196, 2]`` of the named views (view-major): the mesh's, or the landmark
        network's on the clean crops (the views themselves with ``photometric="device"``)."""
        if self.landmark_head is None:
            return torch.cat([batch[f"{name}_landmarks"] for name in names]).float()
        suffix = "" if self.photometric == "device" else "_clean"
        clean = torch.cat([batch[f"{name}{suffix}"] for name in names])
        if clean.dtype == torch.uint8:
            clean = normalize_batch(clean, self.mean, self.std)
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.train_landmark_head):
            return self.landmark_head(clean).float()

    def view_patches(self, images: torch.Tensor, points: torch.Tensor, subset: int | None = None) -> torch.Tensor:
        """images ``[B, 3, S, S]``, points ``[B, n, 2]`` → tokens ``[B, n | subset, p·p·3]``: every point
        jittered by ``landmark_jitter`` px, then ``subset`` of them drawn with replacement from those whose
        unjittered point lies inside the view (None keeps all, in order; a point drawn twice keeps its one
        jitter, as released), then cut by :func:`landmark_patches`."""
        jittered = jitter_landmarks(points, self.landmark_jitter)
        if subset is not None:
            inside = inside_view(points, images.shape[-2], images.shape[-1])
            jittered = sample_landmarks(jittered, subset, weights=inside.float())
        return landmark_patches(images, jittered, self.student.backbone.patch_size)

    def logits(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """(student ``[G + L, B, K]``, teacher ``[G, B, K]``); the teacher sees the student's global tokens."""
        global_names = [f"global_{i}" for i in range(self.n_global)]
        local_names = [f"local_{i}" for i in range(self.n_local)]
        global_recipes, local_recipe = self.recipes()
        images = self.view_images(batch, global_names, global_recipes)
        globals_ = self.view_patches(images, self.view_landmarks(batch, global_names))
        locals_ = None
        if local_names:
            images = self.view_images(batch, local_names, [local_recipe] * self.n_local)
            points = self.view_landmarks(batch, local_names)
            locals_ = self.view_patches(images, points, self.num_local_landmarks)
        return self.crop_logits(globals_, locals_)

    def export_backbone(self) -> LandmarkViT:
        """The network fine-tuning and testing use: a :class:`~facekit.nn.landmark_vit.LandmarkViT` around the
        teacher's ViT (and, for ``"learned"``, this method's landmark network), sharing their tensors; built on
        the meta device, so exporting draws nothing from the RNG."""
        teacher = self.teacher.backbone
        made = teacher.registry_spec
        with torch.device("meta"):
            network = BACKBONES.create("landmark_vit", base=made.name, landmarks=self.landmarks, **made.kwargs)
        state = {f"vit.{k}": v for k, v in teacher.state_dict().items()}
        if self.landmark_head is not None:
            state |= {f"landmark_head.{k}": v for k, v in self.landmark_head.state_dict().items()}
        network.load_state_dict(state, assign=True)
        return network


def _landmark_state(path: Path) -> dict[str, torch.Tensor]:
    """A :class:`LandmarkCNN` state dict from a safetensors file, with errors that name the file."""
    if not path.is_file():
        raise FileNotFoundError(f"landmark_weights: {path} does not exist")
    state = load_file(path)
    expected = set(LandmarkCNN(LAFS.num_landmarks).state_dict())
    if set(state) != expected:
        missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
        raise ValueError(f"{path}: not a LandmarkCNN state dict (missing {missing[:3]}, unexpected {unexpected[:3]})")
    return state
