"""Images/s on one core: facekit's augmentation pipelines against the official ones, in the same run.

Part 1, MAE: decode + RandomResizedCrop + flip + normalise. The JPEGs are the aligned faces of the LMDB
shards (112 x 112 as packed); the 224 px set is made here: each face decoded, upscaled to 224 x 224 with
bicubic ``cv2.resize`` and re-encoded like the shards (:func:`facekit.data.images.encode_jpeg`, quality 95,
4:2:0). Pipelines, measured interleaved in rounds (so a busy neighbour slows them alike), one thread for
torch and OpenCV:

- official: PIL decode + torchvision ``RandomResizedCrop(S, scale=(0.2, 1), BICUBIC)``,
  ``RandomHorizontalFlip``, ``ToTensor``, ``Normalize`` (MAE's ``main_pretrain.py`` transform);
- facekit:  ``decode_jpeg_rgb`` + :class:`facekit.data.views.MAEView` (float32, normalised);
- facekit uint8: the same with ``normalize=False`` (normalisation left to the accelerator);
- decode: ``decode_jpeg_rgb`` alone, the ceiling.

Then a per-stage breakdown of facekit's path (microseconds per image). Every CPU figure is per CPU-second of
this process (``time.process_time``, one thread): per core, and blind to the time slices a busy neighbour
takes (the machine's other load still shows through shared caches and SMT siblings).

Part 2, multi-crop: 2 global + 10 local crops per face, from the shards' 112 px JPEGs (decode included).

- official DINO: DINO's ``DataAugmentationDINO`` (PIL + torchvision v1: RandomResizedCrop bicubic, flip,
  ColorJitter(0.4, 0.4, 0.2, 0.1) p 0.8, grayscale p 0.2, PIL GaussianBlur radius U(0.1, 2) p 1.0 / 0.1 /
  0.5, solarize p 0.2 on global 2, ToTensor + Normalize) at DINO-face sizes: global 112 (scale 0.4-1),
  local 48 (0.05-0.4), ImageNet mean/std;
- facekit DINO: ``decode_jpeg_rgb`` + :class:`facekit.methods.dino.DINOViews` of ``dino_recipes`` with
  uint8 output (normalisation on the accelerator);
- facekit DINO crops only: the same with ``photometric="device"``'s worker recipes (crop + flip; the
  photometric steps run on the device);
- official LAFS: the same PIL pipeline at LAFS's crops (all 12 RandomResizedCrop(112, 0.4-1), (0.5, 0.5)
  normalisation; LAFS finds its landmarks with a network on the GPU);
- facekit LAFS: ``decode_jpeg_rgb`` + :class:`facekit.methods.lafs.LAFSViews` (mesh landmarks mapped
  into each crop, uint8 views).

Then facekit DINO's stages (microseconds per face) and the device path: the batched photometric steps of
all 12 views + normalisation (:class:`facekit.data.augment_gpu.BatchPhotometric`) and LAFS's landmark
patches (:func:`facekit.nn.landmark_patches.landmark_patches`, 2 x 196 + 10 x 36 per face), on CUDA when
available and on the CPU (torch, one thread) for information.

    python benchmarks/augment.py [--shards data/shards] [--parts mae,multicrop] [--rounds 7]

Prints ``MAE: speedup=<min over sizes of facekit / official> goal=3`` after part 1 (the last line when only
``--parts mae`` runs) and ends with ``speedup=<min of facekit / official for DINO and LAFS> goal=10``
(median ratios over rounds).
"""

from __future__ import annotations

import argparse
import io
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from PIL import Image, ImageFilter, ImageOps
from torchvision import transforms

from facekit.data.augment import (
    hflip,
    normalize_batch,
    normalize_to_tensor,
    resized_crop,
    sample_resized_crop,
    stack_to_tensor,
    to_uint8_tensor,
)
from facekit.data.augment_gpu import BatchPhotometric
from facekit.data.images import decode_jpeg_rgb, encode_jpeg
from facekit.data.record import FaceRecord
from facekit.data.shards import ShardReader, read_index
from facekit.data.views import IMAGENET_MEAN, IMAGENET_STD, MAEView, ViewRecipe
from facekit.methods.dino import DINOViews, dino_recipes
from facekit.methods.lafs import LAFSViews, photometric_recipes
from facekit.nn.landmark_patches import landmark_patches

GOAL, MULTICROP_GOAL = 3.0, 10.0
SCALE = (0.2, 1.0)


def shard_jpegs(shards: Path) -> list[bytes]:
    """The encoded aligned faces of every shard listed in ``shards/index.json``."""
    return [bytes(r.image) for e in read_index(shards)["shards"] for r in ShardReader(shards / e["name"])]


def upscaled_jpegs(jpegs: list[bytes], size: int) -> list[bytes]:
    """Each face decoded, resized to ``size x size`` (bicubic) and re-encoded (quality 95, 4:2:0)."""
    out = []
    for data in jpegs:
        rgb = decode_jpeg_rgb(data)
        big = cv2.resize(rgb, (size, size), interpolation=cv2.INTER_CUBIC)
        out.append(encode_jpeg(np.ascontiguousarray(big[:, :, ::-1])))
    return out


def official_mae(size: int) -> Callable[[bytes], torch.Tensor]:
    """MAE's PIL + torchvision transform, from JPEG bytes."""
    pipeline = transforms.Compose(
        [
            transforms.RandomResizedCrop(size, scale=SCALE, interpolation=transforms.InterpolationMode.BICUBIC),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )
    return lambda data: pipeline(Image.open(io.BytesIO(data)).convert("RGB"))


def facekit_mae(size: int, normalize: bool) -> Callable[[bytes], dict[str, torch.Tensor]]:
    """``decode_jpeg_rgb`` + :class:`MAEView`, from JPEG bytes."""
    view = MAEView(size, scale=SCALE, mean=IMAGENET_MEAN, std=IMAGENET_STD, normalize=normalize)
    return lambda data: view(decode_jpeg_rgb(data))


def rate(fn: Callable[[Any], object], items: list[Any], count: int) -> float:
    """Items/s of ``fn`` over ``count`` calls cycling through ``items``."""
    n = len(items)
    start = time.process_time()
    for i in range(count):
        fn(items[i % n])
    return count / (time.process_time() - start)


def stage_breakdown(jpegs: list[bytes], size: int, images: int) -> dict[str, float]:
    """Microseconds per image of each stage of facekit's MAE path, timed separately."""
    rgbs = [decode_jpeg_rgb(d) for d in jpegs]
    h, w = rgbs[0].shape[:2]
    boxes = [sample_resized_crop(h, w, SCALE) for _ in range(images)]
    crops = [resized_crop(rgbs[i % len(rgbs)], boxes[i], size, "bicubic") for i in range(len(rgbs))]
    stages: dict[str, Callable[[int], object]] = {
        "decode": lambda i: decode_jpeg_rgb(jpegs[i % len(jpegs)]),
        "sample_box": lambda i: sample_resized_crop(h, w, SCALE),
        "resized_crop": lambda i: resized_crop(rgbs[i % len(rgbs)], boxes[i], size, "bicubic"),
        "hflip": lambda i: hflip(crops[i % len(crops)]),
        "normalize": lambda i: normalize_to_tensor(crops[i % len(crops)], IMAGENET_MEAN, IMAGENET_STD),
        "uint8_tensor": lambda i: to_uint8_tensor(crops[i % len(crops)]),
    }
    result = {}
    for name, fn in stages.items():
        start = time.process_time()
        for i in range(images):
            fn(i)
        result[name] = (time.process_time() - start) / images * 1e6
    return result


def interleaved(
    pipelines: dict[str, Callable[[Any], object]], items: list[Any], counts: dict[str, int], rounds: int
) -> dict[str, list[float]]:
    """Items/s of each pipeline per round, the pipelines run one after another in every round."""
    for name, fn in pipelines.items():
        rate(fn, items, max(1, counts[name] // 10))  # warm-up
    rates: dict[str, list[float]] = {name: [] for name in pipelines}
    for _ in range(rounds):
        for name, fn in pipelines.items():
            rates[name].append(rate(fn, items, counts[name]))
    return rates


def median_ratio(fast: list[float], slow: list[float]) -> float:
    """Median over rounds of the per-round ratio ``fast / slow``."""
    return statistics.median(f / s for f, s in zip(fast, slow, strict=True))


# ---------------------------------------------------------------- multi-crop (DINO, LAFS)

N_LOCAL = 10
DINO_CROPS = {"global_size": 112, "local_size": 48, "global_scale": (0.4, 1.0), "local_scale": (0.05, 0.4)}
LAFS_CROPS = {"global_size": 112, "local_size": 112, "global_scale": (0.4, 1.0), "local_scale": (0.4, 1.0)}
LAFS_MEAN = (0.5, 0.5, 0.5)


def shard_records(shards: Path) -> list[FaceRecord]:
    """Every record (JPEG bytes + dense landmarks) of the shards listed in ``shards/index.json``."""
    return [r for e in read_index(shards)["shards"] for r in ShardReader(shards / e["name"])]


class PILGaussianBlur:
    """DINO's ``utils.GaussianBlur``: with probability ``p``, PIL's GaussianBlur of radius U(0.1, 2)."""

    def __init__(self, p: float) -> None:
        self.p = p

    def __call__(self, img: Image.Image) -> Image.Image:
        if random.random() <= self.p:
            return img.filter(ImageFilter.GaussianBlur(radius=random.uniform(0.1, 2.0)))
        return img


class PILSolarization:
    """DINO's ``utils.Solarization``: with probability ``p``, PIL's ``ImageOps.solarize`` (threshold 128)."""

    def __init__(self, p: float) -> None:
        self.p = p

    def __call__(self, img: Image.Image) -> Image.Image:
        return ImageOps.solarize(img) if random.random() < self.p else img


def official_multicrop(
    global_size: int,
    local_size: int,
    global_scale: tuple[float, float],
    local_scale: tuple[float, float],
    mean: tuple[float, float, float],
    std: tuple[float, float, float],
) -> Callable[[FaceRecord], list[torch.Tensor]]:
    """DINO's ``DataAugmentationDINO`` (PIL + torchvision v1), 2 global + ``N_LOCAL`` local crops, from JPEG bytes."""
    bicubic = transforms.InterpolationMode.BICUBIC
    flip_and_color_jitter = transforms.Compose(
        [
            transforms.RandomHorizontalFlip(p=0.5),
            transforms.RandomApply([transforms.ColorJitter(0.4, 0.4, 0.2, 0.1)], p=0.8),
            transforms.RandomGrayscale(p=0.2),
        ]
    )
    normalize = transforms.Compose([transforms.ToTensor(), transforms.Normalize(mean, std)])
    global_1 = transforms.Compose(
        [
            transforms.RandomResizedCrop(global_size, scale=global_scale, interpolation=bicubic),
            flip_and_color_jitter,
            PILGaussianBlur(1.0),
            normalize,
        ]
    )
    global_2 = transforms.Compose(
        [
            transforms.RandomResizedCrop(global_size, scale=global_scale, interpolation=bicubic),
            flip_and_color_jitter,
            PILGaussianBlur(0.1),
            PILSolarization(0.2),
            normalize,
        ]
    )
    local = transforms.Compose(
        [
            transforms.RandomResizedCrop(local_size, scale=local_scale, interpolation=bicubic),
            flip_and_color_jitter,
            PILGaussianBlur(0.5),
            normalize,
        ]
    )

    def run(record: FaceRecord) -> list[torch.Tensor]:
        img = Image.open(io.BytesIO(record.image)).convert("RGB")
        return [global_1(img), global_2(img)] + [local(img) for _ in range(N_LOCAL)]

    return run


def dino_views(device_photometric: bool) -> DINOViews:
    """:class:`DINOViews` as ``DINO(normalize=False)`` (or ``photometric="device"``) has its workers run them."""
    global_recipes, local_recipe = dino_recipes(**DINO_CROPS, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    if device_photometric:
        return DINOViews([r.geometric_only() for r in global_recipes], local_recipe.geometric_only(), N_LOCAL)
    return DINOViews(
        [replace(r, normalize=False) for r in global_recipes], replace(local_recipe, normalize=False), N_LOCAL
    )


def facekit_dino(device_photometric: bool) -> Callable[[FaceRecord], dict[str, torch.Tensor]]:
    views = dino_views(device_photometric)
    return lambda record: views(decode_jpeg_rgb(record.image))


def facekit_lafs() -> Callable[[FaceRecord], dict[str, torch.Tensor]]:
    """``decode_jpeg_rgb`` + :class:`LAFSViews` with mesh landmarks and uint8 views."""
    crop = ViewRecipe(112, scale=LAFS_CROPS["global_scale"], normalize=False)
    (g0, g1), local = photometric_recipes(112, LAFS_MEAN, LAFS_MEAN)
    g0, g1, local = (replace(r, normalize=False) for r in (g0, g1, local))
    views = LAFSViews(crop, [g0, g1], local, N_LOCAL, "mesh")
    return lambda record: views(decode_jpeg_rgb(record.image), record)


def multicrop_stages(records: list[FaceRecord], faces: int) -> dict[str, float]:
    """Microseconds per face of facekit DINO's stages, timed separately: decode, the 12 crops + flips, their
    photometric steps, the stacking into ``[N, 3, S, S]`` uint8 tensors."""
    views = dino_views(device_photometric=False)
    recipes = [*views.global_recipes, *[views.local_recipe] * N_LOCAL]
    rgbs = [decode_jpeg_rgb(r.image) for r in records]
    crops = [[recipe.geometric(rgb)[0] for recipe in recipes] for rgb in rgbs]
    n = len(records)

    def stacks(i: int) -> None:
        stack_to_tensor(crops[i % n][:2], False, IMAGENET_MEAN, IMAGENET_STD)
        stack_to_tensor(crops[i % n][2:], False, IMAGENET_MEAN, IMAGENET_STD)

    stages: dict[str, Callable[[int], object]] = {
        "decode": lambda i: decode_jpeg_rgb(records[i % n].image),
        "crop+flip": lambda i: [recipe.geometric(rgbs[i % n]) for recipe in recipes],
        "photometric": lambda i: [recipe.photometric(c) for recipe, c in zip(recipes, crops[i % n], strict=True)],
        "to_tensor": stacks,
    }
    result = {}
    for name, fn in stages.items():
        start = time.process_time()
        for i in range(faces):
            fn(i)
        result[name] = (time.process_time() - start) / faces * 1e6
    return result


def device_rates(device: torch.device, batch: int, rounds: int) -> tuple[float, float]:
    """Faces/s on ``device`` of (the photometric steps + normalisation of 2 global + ``N_LOCAL`` local uint8
    views per face, LAFS's landmark patches of 2 x 196 + ``N_LOCAL`` x 36 landmarks per face)."""
    gen = torch.Generator(device).manual_seed(0)
    (g0, g1), local = dino_recipes(**DINO_CROPS, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    steps = [BatchPhotometric.from_recipe(r) for r in (g0, g1, local)]
    size, local_size = DINO_CROPS["global_size"], DINO_CROPS["local_size"]
    globals_ = [torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, device=device) for _ in range(2)]
    locals_ = torch.randint(0, 256, (batch * N_LOCAL, 3, local_size, local_size), dtype=torch.uint8, device=device)

    def photometric() -> None:
        for step, views in zip(steps, [*globals_, locals_], strict=True):
            normalize_batch(step(views, gen), IMAGENET_MEAN, IMAGENET_STD)

    images = torch.rand(batch * (2 + N_LOCAL), 3, 112, 112, device=device)
    global_points = torch.rand(batch * 2, 196, 2, device=device, generator=gen) * 111
    local_points = torch.rand(batch * N_LOCAL, 36, 2, device=device, generator=gen) * 111

    def patches() -> None:
        landmark_patches(images[: batch * 2], global_points)
        landmark_patches(images[batch * 2 :], local_points)

    return batch / _median_time(photometric, device, rounds), batch / _median_time(patches, device, rounds)


def _median_time(fn: Callable[[], None], device: torch.device, rounds: int) -> float:
    """Median seconds of ``fn`` over ``rounds`` calls: wall time around CUDA synchronisations, else CPU time."""
    clock = time.perf_counter if device.type == "cuda" else time.process_time
    fn()  # warm-up
    times = []
    for _ in range(rounds):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = clock()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(clock() - start)
    return statistics.median(times)


def run_mae(args: argparse.Namespace) -> float:
    """Part 1; returns the min over sizes of facekit / official (median over rounds)."""
    base = shard_jpegs(args.shards)
    sets = {112: base, 224: upscaled_jpegs(base, 224)}
    ratios = []
    for size, jpegs in sets.items():
        kb = statistics.mean(len(d) for d in jpegs) / 1024
        print(f"--- MAE {size} px: {len(jpegs)} faces, {kb:.1f} KB/JPEG, {args.rounds} rounds x {args.images} images")
        pipelines = {
            "official": official_mae(size),
            "facekit": facekit_mae(size, normalize=True),
            "facekit_uint8": facekit_mae(size, normalize=False),
            "decode": decode_jpeg_rgb,
        }
        rates = interleaved(pipelines, jpegs, {name: args.images for name in pipelines}, args.rounds)
        for name, values in rates.items():
            print(f"{name:>14}: {statistics.median(values):8.0f} img/s (median; best {max(values):.0f})")
        ratio = median_ratio(rates["facekit"], rates["official"])
        u8 = median_ratio(rates["facekit_uint8"], rates["official"])
        print(f"{'ratio':>14}: facekit/official {ratio:.2f}x, uint8/official {u8:.2f}x")
        stages = stage_breakdown(jpegs, size, args.images)
        print(f"{'stages (us)':>14}: " + ", ".join(f"{k} {v:.1f}" for k, v in stages.items()))
        ratios.append(ratio)
    return min(ratios)


def run_multicrop(args: argparse.Namespace) -> float:
    """Part 2; returns the min of the DINO and LAFS facekit / official ratios (median over rounds)."""
    records = shard_records(args.shards)
    n_fast, n_slow = args.multicrop_images, max(20, args.multicrop_images // 10)
    print(
        f"--- multi-crop, 2 global + {N_LOCAL} local crops: {len(records)} faces (112 px JPEG), "
        f"{args.rounds} rounds x {n_fast} faces ({n_slow} for the official pipelines)"
    )
    pipelines = {
        "official_dino": official_multicrop(**DINO_CROPS, mean=IMAGENET_MEAN, std=IMAGENET_STD),
        "facekit_dino": facekit_dino(device_photometric=False),
        "facekit_dino_crops": facekit_dino(device_photometric=True),
        "official_lafs": official_multicrop(**LAFS_CROPS, mean=LAFS_MEAN, std=LAFS_MEAN),
        "facekit_lafs": facekit_lafs(),
    }
    counts = {name: n_slow if name.startswith("official") else n_fast for name in pipelines}
    rates = interleaved(pipelines, records, counts, args.rounds)
    for name, values in rates.items():
        print(f"{name:>19}: {statistics.median(values):8.0f} faces/s (median; best {max(values):.0f})")
    dino = median_ratio(rates["facekit_dino"], rates["official_dino"])
    crops = median_ratio(rates["facekit_dino_crops"], rates["official_dino"])
    lafs = median_ratio(rates["facekit_lafs"], rates["official_lafs"])
    print(f"{'ratio':>19}: DINO facekit/official {dino:.2f}x (crops only {crops:.2f}x), LAFS {lafs:.2f}x")
    stages = multicrop_stages(records, n_fast)
    print(f"{'stages (us/face)':>19}: " + ", ".join(f"{k} {v:.0f}" for k, v in stages.items()))
    devices = [torch.device("cuda")] if torch.cuda.is_available() else []
    for device in [*devices, torch.device("cpu")]:
        batch = args.device_batch if device.type == "cuda" else 32
        photometric, patches = device_rates(device, batch, args.rounds)
        label = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU, torch 1 thread"
        print(
            f"{'device path':>19}: {label}, batch {batch}: photometric + normalise {photometric:,.0f} faces/s, "
            f"LAFS landmark patches {patches:,.0f} faces/s"
        )
    return min(dino, lafs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=Path, default=Path("data/shards"), help="packed shards (112 px faces)")
    parser.add_argument("--parts", default="mae,multicrop", help="comma-separated: mae, multicrop")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved measurement rounds")
    parser.add_argument("--images", type=int, default=3000, help="MAE: images per pipeline per round")
    parser.add_argument("--multicrop-images", type=int, default=1000, help="multi-crop: faces per round (facekit)")
    parser.add_argument("--device-batch", type=int, default=256, help="faces per batch on CUDA")
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    if not parts or parts - {"mae", "multicrop"}:
        parser.error(f"--parts takes mae and/or multicrop, got {args.parts!r}")
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    np.random.seed(0)
    random.seed(0)
    torch.manual_seed(0)
    if "mae" in parts:
        mae = run_mae(args)
        print(f"MAE: speedup={mae:.2f} goal={GOAL:g}" if "multicrop" in parts else f"speedup={mae:.2f} goal={GOAL:g}")
    if "multicrop" in parts:
        print(f"speedup={run_multicrop(args):.2f} goal={MULTICROP_GOAL:g}")


if __name__ == "__main__":
    main()
