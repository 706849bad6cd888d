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
Randomness comes only from the global ``np.random`` state (one draw per view).

Multi-crop speed (:func:`crop_views`): the views of one size are made into one ``[N, 3, S, S]`` tensor
(each image split straight into its planes), a view's photometric steps run on whichever of crop and
view has fewer pixels (see :meth:`ViewRecipe.augment`), and a grayscale view stays one luma plane (blurred,
solarised, flipped there) until it is copied into its three planes.
Deliberate differences from the official PIL pipelines, each a grey level or two on average: OpenCV's
resampling and Gaussian kernels instead of PIL's (PIL's blur is three box passes), float HSV for the hue
(PIL: 8-bit), photometry before an upscale. ``benchmarks/augment.py`` measures the result against DINO's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import lru_cache

import cv2
import numpy as np
import torch

from facekit.data.augment import (
    Interpolation,
    ViewStack,
    apply_color_jitter,
    color_jitter_params,
    gaussian_blur,
    hflip,
    luma,
    normalize_to_tensor,
    resized_crop,
    sample_resized_crop,
    solarize,
    to_uint8_tensor,
)

#: Uniforms per view, one ``np.random`` call: box (area, aspect, top, left) + flip; then jitter, gray, blur,
#: sigma, solarize + 8 for ColorJitter.
_BOX_DRAWS, _PHOTOMETRIC_DRAWS = 5, 13

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

    :meth:`geometric` (crop, flip) and :meth:`photometric` (the rest) split the recipe where
    :mod:`facekit.data.augment_gpu` takes over when the photometric part runs on the device.
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

    def augment(
        self, rgb: np.ndarray, photometry: ViewRecipe | None = None, draws: list[float] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The view before normalisation: (uint8 ``[S, S, 3]``, box float32 [5]).

        This recipe's crop and flip, then the photometric steps of ``photometry`` (default: this recipe),
        from ``draws`` (``_BOX_DRAWS + _PHOTOMETRIC_DRAWS`` uniforms; default: one ``np.random`` draw).
        A crop with fewer pixels than the view (an upscale) gets its jitter, grayscale and blur before the
        resize, the blur's sigma scaled by crop / view per axis: the same view to half a grey level on
        average (less than bicubic vs bilinear), on fewer pixels. Solarize always runs on the view (its
        threshold would turn interpolation into jumps); the flip commutes with every step.
        """
        if draws is None:
            draws = np.random.random(_BOX_DRAWS + _PHOTOMETRIC_DRAWS).tolist()
        img, box = self._view(rgb, self if photometry is None else photometry, draws)
        return _three_channels(img), np.array(box, dtype=np.float32)

    def geometric(self, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """RandomResizedCrop + flip: (uint8 ``[S, S, 3]``, box float32 [5]). One ``np.random`` draw (box, flip)."""
        top, left, height, width, flipped, box = self._box(*rgb.shape[:2], np.random.random(_BOX_DRAWS).tolist())
        img = resized_crop(rgb, (top, left, height, width), self.size, self.interpolation)
        return (hflip(img) if flipped else img), np.array(box, dtype=np.float32)

    def photometric(self, img: np.ndarray) -> np.ndarray:
        """Jitter, grayscale, blur, solarize (each with its probability) of a uint8 ``[S, S, 3]`` crop."""
        u = np.random.random(_PHOTOMETRIC_DRAWS).tolist()
        img = self._colour(img, u)
        return _three_channels(solarize(img) if u[4] < self.solarize_p else img)

    def _view(self, rgb: np.ndarray, p: ViewRecipe, u: list[float]) -> tuple[np.ndarray, tuple[float, ...]]:
        """:meth:`augment` from its draws ``u``, with photometry ``p``: (uint8 view, box as 5 floats). A grayscale
        view stays one luma plane ``[S, S]`` (the other views are ``[S, S, 3]``)."""
        top, left, height, width, flipped, box = self._box(*rgb.shape[:2], u)
        size, photo = self.size, u[_BOX_DRAWS:]
        if height * width < size * size:
            crop = p._colour(rgb[top : top + height, left : left + width], photo, width / size, height / size)
            img = resized_crop(crop, (0, 0, height, width), size, self.interpolation)
        else:
            img = p._colour(resized_crop(rgb, (top, left, height, width), size, self.interpolation), photo)
        if photo[4] < p.solarize_p:
            img = solarize(img)
        return (hflip(img) if flipped else img), box

    def _box(self, h: int, w: int, u: list[float]) -> tuple[int, int, int, int, bool, tuple[float, ...]]:
        """The crop (top, left, height, width), the flip and the box's 5 values from ``u[:_BOX_DRAWS]``."""
        top, left, height, width = sample_resized_crop(h, w, self.scale, self.ratio, first_try=u[:4])
        flipped = u[4] < self.hflip_p
        return top, left, height, width, flipped, (top / h, left / w, height / h, width / w, float(flipped))

    def _colour(self, img: np.ndarray, u: list[float], blur_x: float = 1.0, blur_y: float = 1.0) -> np.ndarray:
        """Jitter, grayscale, blur (sigma times ``blur_x``, ``blur_y`` per axis) as drawn in ``u`` (jitter, gray,
        blur, sigma, solarize, then ColorJitter's 8 uniforms). A grayscale image comes back as its one luma plane
        ``[H, W]`` (blurred and solarised there: the same pixels as on three equal channels, a third of the
        work)."""
        if u[0] < self.jitter_p:
            img = apply_color_jitter(img, color_jitter_params(*self.jitter, u=u[5:]))
        if u[1] < self.gray_p:
            img = luma(img)
        if u[2] < self.blur_p:
            sigma = self.blur_sigma[0] + (self.blur_sigma[1] - self.blur_sigma[0]) * u[3]
            img = gaussian_blur(img, (sigma * blur_x, sigma * blur_y))
        return img

    def geometric_only(self) -> ViewRecipe:
        """This recipe without its photometric steps, returning uint8 (for photometry on the device)."""
        return replace(self, jitter_p=0.0, gray_p=0.0, blur_p=0.0, solarize_p=0.0, normalize=False)


def crop_views(
    rgb: np.ndarray, recipes: Sequence[ViewRecipe], photometry: Sequence[ViewRecipe] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """One view of ``rgb`` per recipe -> (views, boxes): ``recipes[i]``'s crop and flip, then the photometric
    steps and normalisation of ``photometry[i]`` (default: ``recipes[i]``), as :meth:`ViewRecipe.augment`.

    The recipes must share their size, the photometry recipes their normalisation. views: ``[N, 3, S, S]``
    float32 normalised (uint8 if the photometry recipes don't normalise), one tensor for all N
    (:class:`~facekit.data.augment.ViewStack`); boxes: float32 ``[N, 5]``. One ``np.random`` draw for all.
    """
    photometry = recipes if photometry is None else photometry
    first, look = recipes[0], photometry[0]
    norm = (look.normalize, look.mean, look.std)
    if len(photometry) != len(recipes) or any(
        r.size != first.size or (p.normalize, p.mean, p.std) != norm for r, p in zip(recipes, photometry, strict=False)
    ):
        raise ValueError("crop_views: the recipes must share size, normalize, mean and std")
    stack = ViewStack(len(recipes), first.size, first.size, *norm)
    boxes = np.empty((len(recipes), 5), dtype=np.float32)
    draws = np.random.random((len(recipes), _BOX_DRAWS + _PHOTOMETRIC_DRAWS)).tolist()
    for i, (recipe, p) in enumerate(zip(recipes, photometry, strict=True)):
        img, boxes[i] = recipe._view(rgb, p, draws[i])
        stack.put(i, img)
    return stack.tensor, torch.from_numpy(boxes)


def _three_channels(img: np.ndarray) -> np.ndarray:
    """A luma plane ``[H, W]`` repeated on 3 channels; an ``[H, W, 3]`` image as is."""
    return cv2.cvtColor(img, cv2.COLOR_GRAY2RGB) if img.ndim == 2 else img


def add_views(out: dict[str, torch.Tensor], kind: str, views: torch.Tensor, boxes: torch.Tensor) -> None:
    """``out[f"{kind}_{i}"] = views[i]`` and ``out[f"{kind}_{i}_box"] = boxes[i]`` for every i."""
    for (name, box_name), view, box in zip(_view_names(kind, len(views)), views.unbind(), boxes.unbind(), strict=True):
        out[name], out[box_name] = view, box


@lru_cache(maxsize=64)
def _view_names(kind: str, n: int) -> tuple[tuple[str, str], ...]:
    """``(f"{kind}_{i}", f"{kind}_{i}_box")`` for i < n."""
    return tuple((f"{kind}_{i}", f"{kind}_{i}_box") for i in range(n))


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
        crops = (("global", self.global_recipe, self.n_global), ("local", self.local_recipe, self.n_local))
        for kind, recipe, count in crops:
            if count:
                add_views(out, kind, *crop_views(rgb, [recipe] * count))
        return out
