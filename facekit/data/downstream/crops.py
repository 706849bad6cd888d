"""Reader items -> square face crops at a backbone's input size, with their targets moved along.

Each item's image is cut to a square around its face and resized to ``size``: the square is centred on the
item's box (alignment items without one: the landmarks' tight box) and ``1 + margin`` times its longer side;
an item without a box keeps the whole image, padded to a square. Alignment points follow the same similarity
transform, parsing masks are warped with nearest-neighbour sampling; class ids, attributes and angles are kept.
"""

from __future__ import annotations

import cv2
import numpy as np

from facekit.data.downstream.items import DownstreamItem


def square_transform(box: np.ndarray | None, width: int, height: int, size: int, margin: float) -> np.ndarray:
    """The ``[2, 3]`` similarity (scale and shift) taking the crop square of ``box`` (or of the whole
    ``width`` × ``height`` image) onto a ``size`` × ``size`` image."""
    if box is None:
        cx, cy, side = width / 2, height / 2, max(width, height)
    else:
        x0, y0, x1, y1 = (float(v) for v in box)
        cx, cy, side = (x0 + x1) / 2, (y0 + y1) / 2, max(x1 - x0, y1 - y0) * (1 + margin)
    if side <= 0:
        raise ValueError(f"empty face box {box}")
    scale = size / side
    return np.array([[scale, 0, size / 2 - scale * cx], [0, scale, size / 2 - scale * cy]])


def crop_item(item: DownstreamItem, size: int, margin: float = 0.2) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 ``[size, size, 3]`` RGB crop, target in the crop's frame) of one item."""
    bgr = cv2.imread(str(item.image), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError(f"{item.image}: not an image OpenCV can read")
    height, width = bgr.shape[:2]
    box = item.box
    if box is None and item.task == "alignment":
        box = np.concatenate([item.target.min(0), item.target.max(0)])
    matrix = square_transform(box, width, height, size, margin)
    crop = cv2.warpAffine(bgr, matrix, (size, size), flags=cv2.INTER_AREA, borderMode=cv2.BORDER_CONSTANT)
    target = item.target
    if item.task == "alignment":
        target = (target @ matrix[:, :2].T + matrix[:, 2]).astype(np.float32)
    elif item.task == "parsing":
        if target.shape != (height, width):
            raise ValueError(f"{item.image}: label map {target.shape} does not match the image {(height, width)}")
        target = cv2.warpAffine(target, matrix, (size, size), flags=cv2.INTER_NEAREST, borderValue=0)
    return crop[:, :, ::-1].copy(), target


def crop_items(
    items: list[DownstreamItem], size: int, margin: float = 0.2
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(images uint8 ``[N, size, size, 3]``, targets ``[N, ...]``, splits ``[N]``) of ``items``."""
    if not items:
        raise ValueError("no items to crop")
    crops = [crop_item(item, size, margin) for item in items]
    return (
        np.stack([c[0] for c in crops]),
        np.stack([c[1] for c in crops]),
        np.array([item.split for item in items]),
    )


def resize_set(images: np.ndarray, targets: np.ndarray, task: str, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Square crops ``[N, S, S, 3]`` and their targets resized to ``size`` (points scaled, masks nearest)."""
    side = images.shape[1]
    if side == size:
        return images, targets
    resized = np.stack([cv2.resize(im, (size, size), interpolation=cv2.INTER_LINEAR) for im in images])
    if task == "alignment":
        targets = (targets * (size / side)).astype(np.float32)
    elif task == "parsing":
        targets = np.stack([cv2.resize(t, (size, size), interpolation=cv2.INTER_NEAREST) for t in targets])
    return resized, targets
