"""LAFS's embedding network: a ViT over 8 × 8 patches cut at 196 facial landmarks, as pre-trained.

LAFS (Sun et al., CVPR 2024) keeps its landmark path for fine-tuning and testing: the released
``ViT_face_landmark_patch8(with_land=True)`` predicts 196 points on the aligned face with its landmark
network, cuts an 8 × 8 patch at each (all 196, in order, no jitter) and runs the ViT on those tokens.
:class:`LandmarkViT` is that network around a facekit :class:`~facekit.nn.vit.ViT`::

    images [B, 3, S, S] --points: given ("mesh") or predicted by landmark_head ("learned")--> [B, 196, 2]
      --landmark_patches--> [B, 196, p·p·3] --Linear + positions 1..196, cls at 0--> blocks --> norm
      --> cls (or mean) --> head --> [B, out_dim]

This is exactly the token path of LAFS pre-training on a global view without jitter
(:meth:`facekit.methods.lafs.LAFS.view_patches`, then the ViT). The landmark source is the pre-training's:

- ``"mesh"``: the caller passes each face's 196 mesh points (:data:`~facekit.data.ops.landmarks.MESH_196`
  of the shards' dense landmarks, in the image's pixels; mirrored with a mirrored face, see
  :func:`~facekit.data.ops.landmarks.mirror_landmarks`). Without them the forward is a ValueError, never
  a fall back to grid patches.
- ``"learned"``: a :class:`~facekit.nn.landmark_patches.LandmarkCNN` inside the network predicts them from
  the image, so the network (and its ONNX export) embeds a bare aligned face, as the released one.

State-dict keys: ``vit.*`` (the ViT's) and ``landmark_head.*``. ``BACKBONES.create("landmark_vit", base=...,
landmarks=..., **vit_kwargs)`` (:mod:`facekit.nn.backbones`) builds it, so a run folder's ``backbone.json``
records the path and :func:`facekit.nn.backbones.load` rebuilds it.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import nn

from facekit.nn.landmark_patches import LandmarkCNN, landmark_patches
from facekit.nn.vit import LinearPatchEmbed, ViT

LandmarkSource = Literal["mesh", "learned"]
#: LAFS's landmark tokens: 14 × 14 (the mesh's MESH_196, or the landmark network's 196 points).
NUM_LANDMARKS = 196


class LandmarkViT(nn.Module):
    """A ViT embedding the patches at 196 landmarks: ``forward(images [B, 3, S, S], landmarks [B, 196, 2] |
    None) -> [B, out_dim]``.

    ``vit`` needs a Linear patch embedding, at least 196 patch positions and no prompts. ``landmarks``:
    ``"mesh"`` takes the points as an argument (required), ``"learned"`` predicts them with
    ``landmark_head`` (passing points is an error). ``img_size``, ``patch_size`` and ``out_dim`` are the ViT's.
    """

    def __init__(self, vit: ViT, landmarks: LandmarkSource = "mesh") -> None:
        super().__init__()
        if landmarks not in ("mesh", "learned"):
            raise ValueError(f"landmarks must be 'mesh' or 'learned', got {landmarks!r}")
        if not isinstance(vit.patch_embed, LinearPatchEmbed) or vit.num_patches < NUM_LANDMARKS or vit.num_prompts:
            raise ValueError(
                f"a landmark ViT needs patch_embed='linear', >= {NUM_LANDMARKS} patches and no prompts (got "
                f"{type(vit.patch_embed).__name__}, {vit.num_patches} patches, {vit.num_prompts} prompts)"
            )
        self.vit = vit
        self.landmarks = landmarks
        self.landmark_head = LandmarkCNN(NUM_LANDMARKS) if landmarks == "learned" else None
        self.img_size, self.patch_size, self.out_dim = vit.img_size, vit.patch_size, vit.out_dim

    @property
    def needs_landmarks(self) -> bool:
        """Whether ``forward`` must be given the points (the ``"mesh"`` source)."""
        return self.landmark_head is None

    def points(self, images: torch.Tensor, landmarks: torch.Tensor | None = None) -> torch.Tensor:
        """The ``[B, 196, 2]`` (x, y) pixel points the patches are cut at, in ``images``' dtype."""
        if self.landmark_head is not None:
            if landmarks is not None:
                raise ValueError("this LAFS backbone (landmarks='learned') predicts its own landmarks; pass none")
            return self.landmark_head(images).to(images.dtype)
        if landmarks is None:
            raise ValueError(
                f"this LAFS backbone (landmarks='mesh') embeds the patches at each face's {NUM_LANDMARKS} mesh "
                f"landmarks: pass landmarks [B, {NUM_LANDMARKS}, 2] (MESH_196 of the dense landmarks, image pixels)"
            )
        if landmarks.ndim != 3 or tuple(landmarks.shape[1:]) != (NUM_LANDMARKS, 2):
            raise ValueError(f"landmarks must be [B, {NUM_LANDMARKS}, 2], got {list(landmarks.shape)}")
        return landmarks.to(images.dtype)

    def forward(self, images: torch.Tensor, landmarks: torch.Tensor | None = None) -> torch.Tensor:
        patches = landmark_patches(images, self.points(images, landmarks), self.patch_size)  # [B, 196, p·p·3]
        return self.vit.encode_tokens(self.vit.embed_patches(patches))

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """The ViT's layer grouping (:meth:`ViT.group_matcher`) under ``vit.``; the landmark network joins
        the stem (layer 0), as the released fine-tuning's layer decay puts it."""
        return {
            "stem": r"^landmark_head|^vit\.cls_token|^vit\.pos_embed|^vit\.patch_embed",
            "blocks": [(r"^vit\.blocks\.(\d+)", None), (r"^vit\.norm", (99999,))],
        }


def needs_landmarks(module: nn.Module) -> bool:
    """Whether ``module`` is a :class:`LandmarkViT` that must be given each face's mesh landmarks."""
    return isinstance(module, LandmarkViT) and module.needs_landmarks
