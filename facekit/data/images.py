"""Safe decoding of raw photos: every image that enters facekit goes through :func:`decode_image`.

The header is read first (PIL opens lazily), so decompression bombs are refused before any pixel is
decoded. Baseline/progressive JPEGs (almost every photo) are decoded by simplejpeg in strict mode,
which is faster than ``cv2.imdecode`` and, unlike it, refuses truncated or damaged streams instead of
returning a silently grey half face. Everything else (PNG, WebP, BMP, GIF, TIFF, CMYK or otherwise
unusual JPEGs) is decoded by PIL, whose errors are also strict, and normalised to 8-bit BGR.

Conventions of the returned array (``[H, W, 3]`` uint8, BGR, C-contiguous):

* EXIF orientation (1-8) is applied, so the face is upright as a viewer shows it.
* Greyscale becomes three equal channels.
* Alpha is composited onto a white background: fully transparent pixels become white, so colours hidden
  under transparency never leak into the crop; the alpha channel itself is dropped.
* 16-bit images are rescaled to 8 bits (``65535 -> 255``), never clipped.
"""

from __future__ import annotations

import io
import re
import warnings
from typing import Literal

import numpy as np
import simplejpeg
from PIL import Image, UnidentifiedImageError

#: Formats decoded at all; anything else PIL recognises (ICO, PSD, EPS, ...) is ``unsupported_image``.
SUPPORTED_FORMATS = frozenset({"JPEG", "MPO", "PNG", "WEBP", "BMP", "GIF", "TIFF"})

_JPEG_FORMATS = frozenset({"JPEG", "MPO"})
_FAST_JPEG_MODES = frozenset({"RGB", "L"})
_EXIF_ORIENTATION_TAG = 0x0112

#: Leading bytes of image files PIL cannot read here; they are images, just not supported ones.
_UNSUPPORTED_MAGIC = (
    (4, b"ftypheic"),
    (4, b"ftypheix"),
    (4, b"ftypmif1"),
    (4, b"ftypavif"),
    (0, b"\x00\x00\x00\x0cjP  "),
    (0, b"\xff\x0a"),
    (0, b"\x00\x00\x00\x0cJXL "),
)
#: Leading bytes of the supported formats: a file that starts like this but does not parse is corrupt.
_SUPPORTED_MAGIC = (b"\xff\xd8", b"\x89PNG\r\n\x1a\n", b"GIF8", b"BM", b"II*\x00", b"MM\x00*")

#: A libjpeg warning that leaves the pixels intact: junk bytes between the last scan and the EOI marker.
_BENIGN_JPEG_WARNING = re.compile(r"extraneous bytes before marker 0xd9", re.IGNORECASE)


class ImageError(Exception):
    """An image that cannot be decoded.

    ``reason`` is a short stable code (one of ``empty_file``, ``not_an_image``, ``corrupt_image``,
    ``truncated_image``, ``too_large``, ``unsupported_image``), ``detail`` a human explanation.
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


def decode_image(
    data: bytes,
    *,
    max_pixels: int = 50_000_000,
    channel_order: Literal["rgb", "bgr"] = "rgb",
) -> np.ndarray:
    """Decode an encoded photo to an upright BGR uint8 array ``[H, W, 3]``.

    ``max_pixels`` bounds ``width * height`` and is checked on the header, before decoding.
    ``channel_order`` says how the file stores its pixels: ``"rgb"`` for ordinary files, ``"bgr"`` for
    files whose "RGB" channels actually hold B, G, R (e.g. MS1MV3 RecordIO JPEGs); either way the result
    is proper BGR. Raises :class:`ImageError` for anything that is not a complete, supported image.
    """
    if channel_order not in ("rgb", "bgr"):
        raise ValueError(f"channel_order must be 'rgb' or 'bgr', got {channel_order!r}")
    if len(data) == 0:
        raise ImageError("empty_file", "the file has 0 bytes")
    data = bytes(data)
    header = _open_header(data, max_pixels)
    bgr = None
    if header.format in _JPEG_FORMATS and header.mode in _FAST_JPEG_MODES:
        bgr = _decode_jpeg_strict(data)
    if bgr is None:
        bgr = _decode_with_pil(header)
    bgr = _apply_orientation(bgr, _exif_orientation(header))
    if channel_order == "bgr":
        bgr = bgr[..., ::-1]
    return np.ascontiguousarray(bgr)


def encode_jpeg(img_bgr: np.ndarray, quality: int = 95) -> bytes:
    """Encode a BGR uint8 image ``[H, W, 3]`` to a standard (RGB, 4:2:0) JPEG with simplejpeg."""
    _check_bgr_image(img_bgr)
    if not 1 <= quality <= 100:
        raise ValueError(f"JPEG quality must be in 1..100, got {quality}")
    return simplejpeg.encode_jpeg(
        np.ascontiguousarray(img_bgr), quality=quality, colorspace="BGR", colorsubsampling="420"
    )


def decode_jpeg_rgb(data: bytes) -> np.ndarray:
    """Decode a JPEG to an RGB uint8 array ``[H, W, 3]`` (training-loader fast path; no EXIF handling)."""
    if len(data) == 0:
        raise ImageError("empty_file", "the file has 0 bytes")
    if bytes(data[:2]) != b"\xff\xd8":
        raise ImageError("not_an_image", "the data does not start with a JPEG marker")
    try:
        return simplejpeg.decode_jpeg(data, colorspace="RGB", strict=True)
    except ValueError as exc:
        raise _jpeg_error(str(exc)) from exc


def _check_bgr_image(img: np.ndarray) -> None:
    if not isinstance(img, np.ndarray) or img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        desc = f"{img.dtype} {img.shape}" if isinstance(img, np.ndarray) else type(img).__name__
        raise ValueError(f"expected a uint8 BGR image of shape [H, W, 3], got {desc}")
    if img.shape[0] == 0 or img.shape[1] == 0:
        raise ValueError(f"cannot encode an empty image of shape {img.shape}")


def _open_header(data: bytes, max_pixels: int) -> Image.Image:
    """Parse the header only (PIL is lazy), identify the format and refuse oversized images."""
    try:
        with warnings.catch_warnings():
            # The pixel limit is enforced below with the caller's max_pixels, not PIL's global one.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            header = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        raise ImageError("too_large", f"{exc} (max_pixels={max_pixels:,})") from exc
    except UnidentifiedImageError as exc:
        raise _unidentified_error(data) from exc
    except Exception as exc:
        raise ImageError("corrupt_image", f"unreadable header: {type(exc).__name__}: {exc}") from exc
    if header.format not in SUPPORTED_FORMATS:
        raise ImageError(
            "unsupported_image",
            f"{header.format} images are not supported (supported: {', '.join(sorted(SUPPORTED_FORMATS))})",
        )
    width, height = header.size
    if width <= 0 or height <= 0:
        raise ImageError("corrupt_image", f"the header gives an empty size {width}x{height}")
    if width * height > max_pixels:
        raise ImageError("too_large", f"{width}x{height} = {width * height:,} pixels exceeds max_pixels={max_pixels:,}")
    return header


def _unidentified_error(data: bytes) -> ImageError:
    head = data[:32]
    for offset, magic in _UNSUPPORTED_MAGIC:
        if head[offset : offset + len(magic)] == magic:
            return ImageError("unsupported_image", f"format with signature {magic!r} is not supported")
    if head.startswith(_SUPPORTED_MAGIC) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP"):
        return ImageError("corrupt_image", "the file starts like an image but its header does not parse")
    return ImageError("not_an_image", f"no known image signature (first bytes: {head[:8]!r})")


def _decode_jpeg_strict(data: bytes) -> np.ndarray | None:
    """Decode with simplejpeg in strict mode; ``None`` when it cannot handle this JPEG variant."""
    try:
        return simplejpeg.decode_jpeg(data, colorspace="BGR", strict=True)
    except ValueError as exc:
        message = str(exc)
    if _BENIGN_JPEG_WARNING.search(message):
        return simplejpeg.decode_jpeg(data, colorspace="BGR", strict=False)
    if message.startswith("tj"):
        # A TurboJPEG API limitation (unusual subsampling, precision, ...): not a broken file.
        return None
    raise _jpeg_error(message)


def _jpeg_error(message: str) -> ImageError:
    if "premature end of jpeg file" in message.lower():
        return ImageError("truncated_image", f"the JPEG stream ends early ({message})")
    return ImageError("corrupt_image", f"damaged JPEG data ({message})")


def _decode_with_pil(header: Image.Image) -> np.ndarray:
    """Fully decode a lazily opened PIL image and convert it to BGR uint8 ``[H, W, 3]``."""
    try:
        header.load()
    except MemoryError:
        raise
    except Exception as exc:
        message = f"{type(exc).__name__}: {exc}"
        if "truncated" in str(exc).lower():
            raise ImageError("truncated_image", message) from exc
        raise ImageError("corrupt_image", message) from exc
    return _pil_to_bgr(header)


def _pil_to_bgr(img: Image.Image) -> np.ndarray:
    mode = img.mode
    if mode.startswith("I;16") or mode == "I":
        grey = _sixteen_bit_to_uint8(np.asarray(img))
        return np.repeat(grey[:, :, None], 3, axis=2)
    if mode == "F":
        raise ImageError("unsupported_image", "floating-point images are not supported")
    if mode == "P":
        mode = "RGBA" if "transparency" in img.info else "RGB"
        img = img.convert(mode)
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = np.asarray(img.convert("RGBA"), dtype=np.float32)
        alpha = rgba[:, :, 3:4] / 255.0
        rgb = rgba[:, :, :3] * alpha + 255.0 * (1.0 - alpha)
        return np.ascontiguousarray(np.rint(rgb).astype(np.uint8)[:, :, ::-1])
    if mode in ("1", "L"):
        grey = np.asarray(img.convert("L"))
        return np.repeat(grey[:, :, None], 3, axis=2)
    try:
        rgb = img.convert("RGB")
    except ValueError as exc:
        raise ImageError("unsupported_image", f"cannot convert {mode} pixels to RGB: {exc}") from exc
    return np.ascontiguousarray(np.asarray(rgb)[:, :, ::-1])


def _sixteen_bit_to_uint8(values: np.ndarray) -> np.ndarray:
    """Map 16-bit samples ``[H, W]`` onto 0..255 with rounding (``x / 257``), clamping only beyond 65535."""
    wide = np.clip(values.astype(np.int64), 0, 65535)
    return ((wide + 128) // 257).astype(np.uint8)


def _exif_orientation(img: Image.Image) -> int:
    try:
        value = img.getexif().get(_EXIF_ORIENTATION_TAG, 1)
    except Exception:
        return 1  # an unreadable EXIF block must not cost us the photo
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _apply_orientation(img: np.ndarray, orientation: int) -> np.ndarray:
    """Turn stored pixels ``[H, W, C]`` upright for EXIF orientation 1-8 (as ``ImageOps.exif_transpose``)."""
    if orientation == 2:
        return img[:, ::-1]
    if orientation == 3:
        return img[::-1, ::-1]
    if orientation == 4:
        return img[::-1]
    if orientation == 5:
        return img.transpose(1, 0, 2)
    if orientation == 6:
        return np.rot90(img, k=-1)
    if orientation == 7:
        return img.transpose(1, 0, 2)[::-1, ::-1]
    if orientation == 8:
        return np.rot90(img, k=1)
    return img
