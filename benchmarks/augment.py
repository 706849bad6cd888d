"""Images/s on one core: decode + RandomResizedCrop + flip + normalise, official MAE pipeline vs facekit.

The JPEGs are the aligned faces of the LMDB shards (112 x 112 as packed). The 224 px set is made here:
each face decoded, upscaled to 224 x 224 with bicubic ``cv2.resize`` and re-encoded like the shards
(:func:`facekit.data.images.encode_jpeg`, quality 95, 4:2:0). Pipelines, measured interleaved in rounds
(so a busy neighbour slows them alike), one thread for torch and OpenCV:

- official: PIL decode + torchvision ``RandomResizedCrop(S, scale=(0.2, 1), BICUBIC)``,
  ``RandomHorizontalFlip``, ``ToTensor``, ``Normalize`` (MAE's ``main_pretrain.py`` transform);
- facekit:  ``decode_jpeg_rgb`` + :class:`facekit.data.views.MAEView` (float32, normalised);
- facekit uint8: the same with ``normalize=False`` (normalisation left to the accelerator);
- decode: ``decode_jpeg_rgb`` alone, the ceiling.

Then a per-stage breakdown of facekit's path (microseconds per image).

    python benchmarks/augment.py [--shards data/shards] [--rounds 7] [--images 3000]

Ends with ``speedup=<min over sizes of facekit / official> goal=3`` (median ratio over rounds).
"""

from __future__ import annotations

import argparse
import io
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image
from torchvision import transforms

from facekit.data.augment import hflip, normalize_to_tensor, resized_crop, sample_resized_crop, to_uint8_tensor
from facekit.data.images import decode_jpeg_rgb, encode_jpeg
from facekit.data.shards import ShardReader, read_index
from facekit.data.views import IMAGENET_MEAN, IMAGENET_STD, MAEView

GOAL = 3.0
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


def rate(fn: Callable[[bytes], object], jpegs: list[bytes], images: int) -> float:
    """Images/s of ``fn`` over ``images`` items cycling through ``jpegs``."""
    n = len(jpegs)
    start = time.perf_counter()
    for i in range(images):
        fn(jpegs[i % n])
    return images / (time.perf_counter() - start)


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
        start = time.perf_counter()
        for i in range(images):
            fn(i)
        result[name] = (time.perf_counter() - start) / images * 1e6
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=Path, default=Path("data/shards"), help="packed shards (112 px faces)")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved measurement rounds")
    parser.add_argument("--images", type=int, default=3000, help="images per pipeline per round")
    args = parser.parse_args()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    np.random.seed(0)
    base = shard_jpegs(args.shards)
    sets = {112: base, 224: upscaled_jpegs(base, 224)}
    ratios = []
    for size, jpegs in sets.items():
        kb = statistics.mean(len(d) for d in jpegs) / 1024
        print(f"--- {size} px: {len(jpegs)} faces, {kb:.1f} KB/JPEG, {args.rounds} rounds x {args.images} images")
        pipelines = {
            "official": official_mae(size),
            "facekit": facekit_mae(size, normalize=True),
            "facekit_uint8": facekit_mae(size, normalize=False),
            "decode": decode_jpeg_rgb,
        }
        for fn in pipelines.values():
            rate(fn, jpegs, 200)  # warm-up
        rates: dict[str, list[float]] = {name: [] for name in pipelines}
        for _ in range(args.rounds):
            for name, fn in pipelines.items():
                rates[name].append(rate(fn, jpegs, args.images))
        per_round = [f / o for f, o in zip(rates["facekit"], rates["official"], strict=True)]
        per_round_u8 = [f / o for f, o in zip(rates["facekit_uint8"], rates["official"], strict=True)]
        for name, values in rates.items():
            print(f"{name:>14}: {statistics.median(values):8.0f} img/s (median; best {max(values):.0f})")
        ratio = statistics.median(per_round)
        print(f"{'ratio':>14}: facekit/official {ratio:.2f}x, uint8/official {statistics.median(per_round_u8):.2f}x")
        stages = stage_breakdown(jpegs, size, args.images)
        print(f"{'stages (us)':>14}: " + ", ".join(f"{k} {v:.1f}" for k, v in stages.items()))
        ratios.append(ratio)
    print(f"speedup={min(ratios):.2f} goal={GOAL:g}")


if __name__ == "__main__":
    main()
