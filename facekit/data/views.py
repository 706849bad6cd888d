"""The views each pre-training method asks of an aligned face: picklable transforms rgb -> dict of tensors.

A :class:`ViewRecipe` is one random view (RandomResizedCrop, flip, colour jitter, grayscale, blur,
solarize, normalise) built from the fast ops of :mod:`facekit.data.augment`; the view classes combine
recipes into what :meth:`facekit.methods.base.Method.views` returns:

============================  ===========================================================================
``MAEView``                   MAE (official pipeline): RandomResizedCrop bicubic, hflip -> ``image``
``ResizeFlipView``            MCF: resize to ``S x S``, hflip, no crop -> ``image``
``TwoViews``                  CAMD, FRA: ``view1``, ``view2`` and their crop boxes
``MultiCropView``             DINO / LAFS: ``global_<i>``, ``local_<i>`` and their crop boxes
============================  ===========================================================================

Every view is a float32 ``[3, S, S]`` tensor normalised with the recipe's mean/std, or, with
``normalize=False``, a uint8 ``[3, S, S]`` tensor for the method to normalise on the accelerator with
:func:`facekit.data.augment.normalize_batch` (4x less to copy to the device). A box is float32 ``[5]``:
``(top, left, height, width)`` of the crop as fractions of the (unflipped) source image, then ``flipped``
(0/1): the view is that crop resized, mirrored when ``flipped`` is 1.
Randomness comes only from the global ``np.random`` state.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from facekit.data.augment import (
    Interpolation,
    color_jitter,
    gaussian_blur,
    hflip,
    normalize_to_tensor,
    resized_crop,
    sample_resized_crop,
    solarize,
    to_grayscale,
    to_uint8_tensor,
)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: VGGFace2 statistics, as used by CAMD.
VGGFACE2_MEAN = (0.5231, 0.4044, 0.3489)
VGGFACE2_STD = (0.2536, 0.2194, 0.2070)


@dataclass(frozen=True)
class ViewRecipe:
    """One random view of a face, in the order RandomResizedCrop -> flip -> jitter -> gray -> blur -> solarize.

    size:          output side ``S``; scale / ratio: RandomResizedCrop's area fraction and aspect bounds
                   (``scale=(1, 1)`` with the default ratio keeps a square image whole).
    interpolation: resize filter (see :func:`facekit.data.augment.resized_crop`).
    hflip_p:       probability of a horizontal flip.
    jitter:        ColorJitter (brightness, contrast, saturation, hue), applied with probability ``jitter_p``.
    gray_p:        probability of grayscale; blur_p: of a Gaussian blur with sigma uniform in ``blur_sigma``;
    solarize_p:    of solarising at 128.
    mean, std:     normalisation; normalize=False returns uint8 and leaves it to the accelerator.
    """

    size: int
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    interpolation: Interpolation = "bicubic"
    hflip_p: float = 0.5
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.2, 0.1)
    jitter_p: float = 0.0
    gray_p: float = 0.0
    blur_p: float = 0.0
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    solarize_p: float = 0.0
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    normalize: bool = True

    def apply(self, rgb: np.ndarray) -> tuple[torch.Tensor, np.ndarray]:
        """``rgb [H, W, 3]`` uint8 -> (view ``[3, S, S]`` float32 (uint8 if not ``normalize``), box float32 [5])."""
        img, box = self.augment(rgb)
        tensor = normalize_to_tensor(img, self.mean, self.std) if self.normalize else to_uint8_tensor(img)
        return tensor, box

    def augment(self, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The view before normalisation: (uint8 ``[S, S, 3]``, box float32 [5])."""
        h, w = rgb.shape[:2]
        top, left, height, width = sample_resized_crop(h, w, self.scale, self.ratio)
        img = resized_crop(rgb, (top, left, height, width), self.size, self.interpolation)
        flipped = self.hflip_p > 0 and np.random.random() < self.hflip_p
        if flipped:
            img = hflip(img)
        if self.jitter_p > 0 and np.random.random() < self.jitter_p:
            img = color_jitter(img, *self.jitter)
        if self.gray_p > 0 and np.random.random() < self.gray_p:
            img = to_grayscale(img)
        if self.blur_p > 0 and np.random.random() < self.blur_p:
            img = gaussian_blur(img, np.random.uniform(*self.blur_sigma))
        if self.solarize_p > 0 and np.random.random() < self.solarize_p:
            img = solarize(img)
        box = np.array([top / h, left / w, height / h, width / w, float(flipped)], dtype=np.float32)
        return img, box


class MAEView:
    """The official MAE pipeline: RandomResizedCrop(size, scale, bicubic) + hflip + normalise -> ``{"image"}``.

    ``image``: float32 ``[3, size, size]`` (uint8 with ``normalize=False``).
    """

    def __init__(
        self,
        size: int = 224,
        scale: tuple[float, float] = (0.2, 1.0),
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
        normalize: bool = True,
    ) -> None:
        self.recipe = ViewRecipe(size, scale=scale, mean=mean, std=std, normalize=normalize)

    def __call__(self, rgb: np.ndarray) -> dict[str, torch.Tensor]:
        return {"image": self.recipe.apply(rgb)[0]}


class ResizeFlipView:
    """MCF's pipeline: resize the whole face to ``size x size`` (bicubic), random hflip, normalise -> ``{"image"}``.

    MCF's ``Resize(224)`` scales the short side; aligned faces are square, so this is the same image
    (a non-square input is stretched here, keeping batches stackable).
    """

    def __init__(
        self,
        size: int = 224,
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
        normalize: bool = True,
    ) -> None:
        self.size, self.mean, self.std, self.normalize = size, mean, std, normalize

    def __call__(self, rgb: np.ndarray) -> dict[str, torch.Tensor]:
        h, w = rgb.shape[:2]
        img = resized_crop(rgb, (0, 0, h, w), self.size, "bicubic")
        if np.random.random() < 0.5:
            img = hflip(img)
        tensor = normalize_to_tensor(img, self.mean, self.std) if self.normalize else to_uint8_tensor(img)
        return {"image": tensor}


class TwoViews:
    """Two independent views (CAMD, FRA) -> ``view1``, ``view2`` ``[3, S, S]`` and ``view1_box``, ``view2_box`` [5]."""

    def __init__(self, recipe1: ViewRecipe, recipe2: ViewRecipe) -> None:
        self.recipe1, self.recipe2 = recipe1, recipe2

    def __call__(self, rgb: np.ndarray) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for name, recipe in (("view1", self.recipe1), ("view2", self.recipe2)):
            view, box = recipe.apply(rgb)
            out[name], out[f"{name}_box"] = view, torch.from_numpy(box)
        return out


class MultiCropView:
    """DINO-style multi-crop: ``global_0..`` from ``global_recipe``, ``local_0..`` from ``local_recipe``.

    Each view ``<name>`` comes with ``<name>_box`` (float32 [5]). Shapes: globals ``[3, Sg, Sg]``, locals
    ``[3, Sl, Sl]``.
    """

    def __init__(
        self, global_recipe: ViewRecipe, local_recipe: ViewRecipe, n_global: int = 2, n_local: int = 8
    ) -> None:
        self.global_recipe, self.local_recipe = global_recipe, local_recipe
        self.n_global, self.n_local = n_global, n_local

    def __call__(self, rgb: np.ndarray) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        crops = [("global", self.global_recipe, self.n_global), ("local", self.local_recipe, self.n_local)]
        for kind, recipe, count in crops:
            for i in range(count):
                view, box = recipe.apply(rgb)
                out[f"{kind}_{i}"], out[f"{kind}_{i}_box"] = view, torch.from_numpy(box)
        return out
