"""facekit.data.augment ops against torchvision's functional ops, and the views built from them."""

from __future__ import annotations

import math
import pickle
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as nnf
from torchvision import transforms
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as F

from facekit.data import augment as A
from facekit.data.images import decode_jpeg_rgb
from facekit.data.views import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    VGGFACE2_MEAN,
    VGGFACE2_STD,
    MAEView,
    MultiCropView,
    ResizeFlipView,
    TwoViews,
    ViewRecipe,
    crop_views,
)


@pytest.fixture(scope="module")
def face() -> np.ndarray:
    """A 112 x 112 RGB image with smooth regions and sharp edges (values span 0..255)."""
    rng = np.random.RandomState(0)
    img = cv2.resize(rng.randint(0, 256, (14, 14, 3), dtype=np.uint8), (112, 112), interpolation=cv2.INTER_CUBIC)
    img[40:70, 30:35] = (255, 0, 0)
    img[80:90, 60:100] = (10, 200, 30)
    return img


def chw(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(img).permute(2, 0, 1).contiguous()


def hwc(t: torch.Tensor) -> np.ndarray:
    return t.permute(1, 2, 0).numpy()


def diff(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.abs(a.astype(np.int32) - b.astype(np.int32))


@pytest.mark.parametrize("box", [(10, 5, 80, 90), (0, 0, 112, 112), (30, 40, 23, 61)])
@pytest.mark.parametrize("size", [112, 224])
def test_resized_crop_upscale_matches_torchvision(face: np.ndarray, box: tuple, size: int) -> None:
    ours = A.resized_crop(face, box, size, "bicubic")
    assert ours.shape == (size, size, 3) and ours.dtype == np.uint8
    # OpenCV's cubic kernel (a = -0.75) is torch's without antialias; PIL's / antialias=True uses a = -0.5.
    ref = hwc(F.resized_crop(chw(face), *box, [size, size], InterpolationMode.BICUBIC, antialias=False))
    assert diff(ours, ref).mean() < 0.5 and np.percentile(diff(ours, ref), 99) <= 2
    pil_like = hwc(F.resized_crop(chw(face), *box, [size, size], InterpolationMode.BICUBIC, antialias=True))
    assert diff(ours, pil_like).mean() < 1.5
    bilinear = A.resized_crop(face, box, size, "bilinear")
    ref = hwc(F.resized_crop(chw(face), *box, [size, size], InterpolationMode.BILINEAR, antialias=True))
    assert diff(bilinear, ref).max() <= 1


def test_resized_crop_downscale_is_antialiased(face: np.ndarray) -> None:
    ours = A.resized_crop(face, (3, 7, 100, 96), (60, 48), "bicubic")
    assert ours.shape == (60, 48, 3)
    ref = hwc(F.resized_crop(chw(face), 3, 7, 100, 96, [60, 48], InterpolationMode.BICUBIC, antialias=True))
    assert diff(ours, ref).mean() < 1.5
    striped = face.copy()
    striped[::2] //= 3  # detail finer than the output grid: aliasing shows
    ours = A.resized_crop(striped, (3, 7, 100, 96), (60, 48), "bicubic")
    ref = hwc(F.resized_crop(chw(striped), 3, 7, 100, 96, [60, 48], InterpolationMode.BICUBIC, antialias=True))
    aliased = hwc(F.resized_crop(chw(striped), 3, 7, 100, 96, [60, 48], InterpolationMode.BICUBIC, antialias=False))
    assert diff(ours, ref).mean() < 0.5 * diff(ours, aliased).mean()
    area = A.resized_crop(face, (0, 0, 112, 112), 56, "area")
    ref = nnf.interpolate(chw(face)[None].float(), size=(56, 56), mode="area")[0]
    assert diff(area, hwc(ref.round().to(torch.uint8))).max() <= 1


def test_flip_grayscale_solarize(face: np.ndarray) -> None:
    assert np.array_equal(A.hflip(face), hwc(F.horizontal_flip(chw(face))))
    gray = A.to_grayscale(face)
    assert gray.shape == face.shape and np.array_equal(gray[..., 0], gray[..., 2])
    assert diff(gray, hwc(F.rgb_to_grayscale(chw(face), num_output_channels=3))).max() <= 1
    for channel, weight in enumerate((0.299, 0.587, 0.114)):
        pure = np.zeros((4, 4, 3), np.uint8)
        pure[..., channel] = 255
        assert abs(int(A.to_grayscale(pure)[0, 0, 0]) - 255 * weight) <= 1
    for threshold in (0, 128, 200):
        assert np.array_equal(A.solarize(face, threshold), hwc(F.solarize(chw(face), threshold)))


@pytest.mark.parametrize("factor", [0.6, 1.0, 1.4])
def test_colour_adjustments_match_torchvision(face: np.ndarray, factor: float) -> None:
    t = chw(face)
    assert np.array_equal(A.adjust_brightness(face, factor), hwc(F.adjust_brightness(t, factor)))
    assert diff(A.adjust_contrast(face, factor), hwc(F.adjust_contrast(t, factor))).max() <= 1
    assert diff(A.adjust_saturation(face, factor), hwc(F.adjust_saturation(t, factor))).max() <= 1
    hue = (factor - 1.0) / 2  # -0.2, 0, 0.2
    hue_diff = diff(A.adjust_hue(face, hue), hwc(F.adjust_hue(t, hue)))
    assert hue_diff.max() <= 1 and hue_diff.mean() < 0.01


@pytest.mark.parametrize("sigma", [0.1, 1.0, 2.0])
def test_gaussian_blur_matches_torchvision(face: np.ndarray, sigma: float) -> None:
    k = 2 * math.ceil(3 * sigma) + 1
    ours = A.gaussian_blur(face, sigma)
    assert diff(ours, hwc(F.gaussian_blur(chw(face), [k, k], [sigma, sigma]))).max() <= 1
    assert diff(A.gaussian_blur(face, sigma, 5), hwc(F.gaussian_blur(chw(face), [5, 5], [sigma, sigma]))).max() <= 1


def test_narrow_and_anisotropic_blurs(face: np.ndarray) -> None:
    edges = face.copy()
    edges[::2] = 0  # the sharpest edges uint8 allows
    edges[:, ::3] = 255
    for sigma in (0.1, 0.25):  # skipped: the filter itself would give every pixel back
        kernel = cv2.getGaussianKernel(3, sigma, cv2.CV_32F)
        full = cv2.sepFilter2D(edges, -1, kernel, kernel, borderType=cv2.BORDER_REFLECT_101)
        assert np.array_equal(A.gaussian_blur(edges, sigma), full) and np.array_equal(full, edges)
    assert not np.array_equal(A.gaussian_blur(edges, 0.3), edges)
    ref = hwc(F.gaussian_blur(chw(face), [7, 13], [1.0, 2.0]))  # torchvision: kernel and sigma (x, y)
    assert diff(A.gaussian_blur(face, (1.0, 2.0)), ref).max() <= 1


def test_color_jitter_factors_stay_in_range() -> None:
    grey = np.full((8, 8, 3), 100, np.uint8)
    np.random.seed(0)
    ratios = [A.color_jitter(grey, 0.4, 0, 0, 0)[0, 0, 0] / 100 for _ in range(300)]
    assert 0.6 - 0.01 <= min(ratios) < 0.65 and 1.35 < max(ratios) <= 1.4
    assert abs(np.mean(ratios) - 1.0) < 0.03
    assert np.array_equal(A.color_jitter(grey, 0, 0, 0, 0), grey)
    jittered = A.color_jitter(grey, 0.4, 0.4, 0.2, 0.1)
    assert np.array_equal(jittered[..., 0], jittered[..., 1]), "a grey image must stay grey"


def test_normalisation_is_exact(face: np.ndarray) -> None:
    ref = transforms.Normalize(VGGFACE2_MEAN, VGGFACE2_STD)(transforms.ToTensor()(face))
    ours = A.normalize_to_tensor(face, VGGFACE2_MEAN, VGGFACE2_STD)
    assert ours.dtype == torch.float32 and ours.shape == (3, 112, 112)
    assert torch.equal(ours, ref)
    u8 = A.to_uint8_tensor(face)
    assert u8.dtype == torch.uint8 and torch.equal(u8, chw(face))
    assert torch.equal(A.normalize_batch(torch.stack([u8, u8]), VGGFACE2_MEAN, VGGFACE2_STD), torch.stack([ref, ref]))


def test_sample_resized_crop_statistics() -> None:
    np.random.seed(1)
    torch.manual_seed(1)
    boxes = np.array([A.sample_resized_crop(112, 96, (0.2, 1.0)) for _ in range(2000)])
    top, left, h, w = boxes.T
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= 112).all() and (left + w <= 96).all()
    area, aspect = h * w / (112 * 96), w / h
    assert area.min() > 0.19 and area.min() < 0.22 and area.max() <= 1.0 and area.max() > 0.9
    assert aspect.min() > 0.75 - 0.02 and aspect.max() < 4 / 3 + 0.02
    ref = np.array([transforms.RandomResizedCrop.get_params(torch.zeros(1, 112, 96), [0.2, 1.0], [3 / 4, 4 / 3])
                    for _ in range(2000)])  # fmt: skip
    ref_area = ref[:, 2] * ref[:, 3] / (112 * 96)
    assert abs(area.mean() - ref_area.mean()) < 0.02
    assert abs(np.log(aspect).mean() - np.log(ref[:, 3] / ref[:, 2]).mean()) < 0.02
    assert abs((top + h / 2).mean() - (ref[:, 0] + ref[:, 2] / 2).mean()) < 1.5
    # The fallback (nothing fits): the largest centred crop with its aspect clamped, as torchvision.
    for shape in ((100, 10), (10, 100)):
        ref_box = transforms.RandomResizedCrop.get_params(torch.zeros(1, *shape), [0.9, 1.0], [3 / 4, 4 / 3])
        assert A.sample_resized_crop(*shape, (0.9, 1.0)) == tuple(ref_box)


def test_recipe_box_describes_the_crop(face: np.ndarray) -> None:
    recipe = ViewRecipe(64, scale=(0.1, 1.0))
    flips = []
    for seed in range(40):
        np.random.seed(seed)
        img, box = recipe.augment(face)
        assert box.dtype == np.float32 and box.shape == (5,)
        top, left, h, w = (round(float(f) * 112) for f in box[:4])
        expected = A.resized_crop(face, (top, left, h, w), 64, "bicubic")
        assert np.array_equal(img, A.hflip(expected) if box[4] else expected)
        np.random.seed(seed)
        tensor, box2 = recipe.apply(face)
        assert torch.equal(tensor, A.normalize_to_tensor(img, recipe.mean, recipe.std)) and np.array_equal(box, box2)
        flips.append(box[4])
    assert 0.2 < np.mean(flips) < 0.8


def test_recipe_probabilities() -> None:
    img = np.zeros((32, 32, 3), np.uint8)
    img[..., 0] = 200
    recipe = ViewRecipe(32, scale=(1, 1), hflip_p=0.0, gray_p=0.3, solarize_p=0.6)
    np.random.seed(3)
    outs = [recipe.augment(img)[0] for _ in range(1000)]
    # red (200, 0, 0): gray -> (60, 60, 60), which solarize leaves alone; solarized red -> (55, 0, 0).
    gray = np.mean([o[0, 0, 0] == o[0, 0, 1] for o in outs])
    solarized = np.mean([o[0, 0, 0] == 55 for o in outs])
    assert 0.25 < gray < 0.35 and 0.7 * 0.6 - 0.05 < solarized < 0.7 * 0.6 + 0.05


def full_recipe(size: int, scale: tuple[float, float]) -> ViewRecipe:
    return ViewRecipe(size, scale=scale, jitter_p=0.8, gray_p=0.2, blur_p=0.5, solarize_p=0.2,
                      mean=VGGFACE2_MEAN, std=VGGFACE2_STD)  # fmt: skip


VIEWS = {
    "mae": (MAEView(224), {"image": (3, 224, 224)}),
    "resize_flip": (ResizeFlipView(224, normalize=False), {"image": (3, 224, 224)}),
    "two": (
        TwoViews(full_recipe(224, (0.08, 0.6)), full_recipe(224, (1.0, 1.0))),
        {"view1": (3, 224, 224), "view2": (3, 224, 224), "view1_box": (5,), "view2_box": (5,)},
    ),
    "multi": (
        MultiCropView(full_recipe(112, (0.4, 1.0)), full_recipe(48, (0.05, 0.4)), n_global=2, n_local=3),
        {
            **{f"global_{i}": (3, 112, 112) for i in range(2)},
            **{f"local_{i}": (3, 48, 48) for i in range(3)},
            **{f"global_{i}_box": (5,) for i in range(2)},
            **{f"local_{i}_box": (5,) for i in range(3)},
        },
    ),
}


@pytest.mark.parametrize("name", sorted(VIEWS))
def test_views_keys_shapes_pickle_determinism(face: np.ndarray, name: str) -> None:
    view, shapes = VIEWS[name]
    clone = pickle.loads(pickle.dumps(view))
    np.random.seed(7)
    out = view(face)
    np.random.seed(7)
    again = clone(face)
    assert set(out) == set(shapes) == set(again)
    for key, shape in shapes.items():
        assert tuple(out[key].shape) == shape, key
        expected = torch.uint8 if name == "resize_flip" and key == "image" else torch.float32
        assert out[key].dtype == expected, key
        assert torch.equal(out[key], again[key]), key
    np.random.seed(8)
    assert any(not torch.equal(out[k], v) for k, v in view(face).items()), "views ignore the seed"


def test_mae_view_matches_its_recipe(face: np.ndarray) -> None:
    np.random.seed(5)
    image = MAEView(112, mean=IMAGENET_MEAN, std=IMAGENET_STD)(face)["image"]
    np.random.seed(5)
    expected, _ = ViewRecipe(112, scale=(0.2, 1.0), mean=IMAGENET_MEAN, std=IMAGENET_STD).apply(face)
    assert torch.equal(image, expected)
    np.random.seed(5)
    raw = MAEView(112, normalize=False)(face)["image"]
    assert torch.equal(A.normalize_batch(raw[None], IMAGENET_MEAN, IMAGENET_STD)[0], expected)


# ---------------------------------------------------------------- the multi-crop fast path


@pytest.fixture(scope="module")
def photo(assets: Path) -> np.ndarray:
    """A real photo, centre-cropped and resized to 112 x 112 RGB."""
    rgb = decode_jpeg_rgb((assets / "faces/deepface/img1.jpg").read_bytes())
    side = min(rgb.shape[:2])
    top, left = (rgb.shape[0] - side) // 2, (rgb.shape[1] - side) // 2
    return cv2.resize(rgb[top : top + side, left : left + side], (112, 112), interpolation=cv2.INTER_AREA)


def test_photometry_before_an_upscale_moves_the_view_by_under_a_grey_level(photo: np.ndarray) -> None:
    """``augment`` jitters and blurs an upscaled crop before resizing it; the same draws applied after the
    resize (``geometric`` then ``photometric``) give the same view to well under a grey level on average."""
    recipe = full_recipe(112, (0.3, 0.8))
    means, upscaled = [], 0
    for seed in range(30):
        np.random.seed(seed)
        fast, box = recipe.augment(photo)
        np.random.seed(seed)
        crop, box2 = recipe.geometric(photo)
        reference = recipe.photometric(crop)
        assert np.array_equal(box, box2) and fast.shape == reference.shape == (112, 112, 3)
        upscaled += int(box[2] * box[3] < 1)
        means.append(diff(fast, reference).mean())
    assert upscaled == 30 and np.mean(means) < 0.7 and max(means) < 2.0, (np.mean(means), max(means))


def test_a_grayscale_view_is_blurred_and_solarised_on_one_plane_exactly(face: np.ndarray) -> None:
    recipe = ViewRecipe(112, gray_p=1.0, blur_p=1.0, solarize_p=1.0)
    np.random.seed(11)
    out = recipe.photometric(face)
    np.random.seed(11)
    sigma = 0.1 + 1.9 * np.random.random(13)[3]  # the recipe's draw: jitter, gray, blur, sigma, ...
    assert np.array_equal(out, A.solarize(A.gaussian_blur(A.to_grayscale(face), sigma)))


def test_mild_shrinks_resize_directly_and_strong_ones_antialias(face: np.ndarray) -> None:
    mild = A.resized_crop(face, (5, 5, 70, 70), 48, "bicubic")  # 1.46x
    assert np.array_equal(mild, cv2.resize(face[5:75, 5:75], (48, 48), interpolation=cv2.INTER_CUBIC))
    strong = A.resized_crop(face, (0, 0, 112, 112), 48, "bicubic")  # 2.33x: cubic to 144, then 3 x 3 area
    two_step = cv2.resize(
        cv2.resize(face, (144, 144), interpolation=cv2.INTER_CUBIC), (48, 48), interpolation=cv2.INTER_AREA
    )
    assert np.array_equal(strong, two_step)


def test_stack_to_tensor_and_crop_views(face: np.ndarray) -> None:
    images = [A.resized_crop(face, (i, 2 * i, 40, 40), 48, "bicubic") for i in range(5)]
    u8 = A.stack_to_tensor(images, False, IMAGENET_MEAN, IMAGENET_STD)
    assert u8.dtype == torch.uint8 and torch.equal(u8, torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2))
    f32 = A.stack_to_tensor(images, True, IMAGENET_MEAN, IMAGENET_STD)
    assert torch.equal(f32, torch.stack([A.normalize_to_tensor(img, IMAGENET_MEAN, IMAGENET_STD) for img in images]))
    local = full_recipe(48, (0.05, 0.4))
    views, boxes = crop_views(face, [replace(local, normalize=False)] * 4)
    assert views.shape == (4, 3, 48, 48) and views.dtype == torch.uint8 and boxes.shape == (4, 5)
    assert len({v.sum().item() for v in views}) == 4  # independent draws per view
    with pytest.raises(ValueError, match="share size"):
        crop_views(face, [local, replace(local, size=32)])


@pytest.mark.parametrize("normalize", [False, True])
def test_crop_views_with_separate_photometry_equal_augment_per_view(face: np.ndarray, normalize: bool) -> None:
    """LAFS's use: one crop recipe, a photometry recipe per view; grayscale views (written as one luma plane)
    included. Each view equals ``augment`` from the same draws, normalised by the photometry recipe."""
    crop = ViewRecipe(48, scale=(0.2, 1.0), normalize=not normalize)  # its normalisation is not used
    looks = [replace(full_recipe(48, (1.0, 1.0)), gray_p=g, normalize=normalize) for g in (0.0, 1.0, 0.5, 1.0)]
    np.random.seed(4)
    views, boxes = crop_views(face, [crop] * 4, looks)
    np.random.seed(4)
    draws = np.random.random((4, 18)).tolist()  # crop_views' one draw; crop retries draw after it, in order
    assert views.dtype == (torch.float32 if normalize else torch.uint8)
    for i, look in enumerate(looks):
        img, box = crop.augment(face, look, draws=draws[i])
        if normalize:
            expected = A.normalize_to_tensor(img, look.mean, look.std)
        else:
            expected = torch.from_numpy(img).permute(2, 0, 1)
            if look.gray_p == 1.0:  # three equal planes
                assert torch.equal(views[i][0], views[i][1]) and torch.equal(views[i][0], views[i][2])
        assert torch.equal(views[i], expected) and np.array_equal(boxes[i].numpy(), box)
    with pytest.raises(ValueError, match="share size"):
        crop_views(face, [crop] * 2, [looks[0], replace(looks[1], normalize=not normalize)])
