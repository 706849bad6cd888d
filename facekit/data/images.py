"""Safe decoding of raw photos: every image that enters facekit goes through :func:`decode_image`.

The header is read first (PIL opens lazily), so decompression bombs are refused before any pixel is
decoded. Baseline/progressive JPEGs (almost every photo) are decoded by simplejpeg in strict mode,
which is faster than ``cv2.imdecode`` and, unlike it, refuses truncated or damaged streams instead of
returning a silently grey half face. Everything else (PNG, WebP, BMP, GIF and TIFF (first frame / page),
PGM / PPM / PBM, HEIC / HEIF (through the pi-heif plugin), AVIF (when Pillow is built with libavif), CMYK
or otherwise unusual JPEGs) is decoded by PIL, whose errors are also strict, and normalised to 8-bit BGR.

:func:`sniff_format` tells from a file's first :data:`SNIFF_BYTES` bytes whether it can be an image this
module decodes, so that a source can refuse other files (text, video, AVIF without libavif) without
reading them whole; the content decides, never the file name.

Conventions of the returned array (``[H, W, 3]`` uint8, BGR, C-contiguous):

* EXIF orientation (1-8) is applied, so the face is upright as a viewer shows it.
* Greyscale becomes three equal channels.
* Alpha is composited onto a white background: fully transparent pixels become white, so colours hidden
  under transparency never leak into the crop; the alpha channel itself is dropped.
* 16-bit images are rescaled to 8 bits (``65535 -> 255``), never clipped.

:func:`decode_image_reduced` decodes a JPEG at 1/2, 1/4 or 1/8 of its size in the DCT domain (libjpeg-turbo
scaling: the entropy decoding is the same, the inverse DCT and colour conversion are 4-64x smaller), with
the same header-first checks, strictness and conventions; a detector that sees 640 pixels needs no more.
"""

from __future__ import annotations

import io
import re
import struct
import threading
import typing
from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np
import simplejpeg
from pi_heif import register_heif_opener
from PIL import Image, UnidentifiedImageError, features

from facekit.config import CropStorage

register_heif_opener()  # PIL opens HEIC / HEIF (format "HEIF"), with its irot / imir transforms applied

#: Whether this Pillow decodes AVIF (wheels of Pillow >= 11.3 are built with libavif).
AVIF_DECODER = "avif" in features.get_supported_modules()
CROP_STORAGES: tuple[CropStorage, ...] = typing.get_args(CropStorage)
#: Formats decoded at all; anything else PIL recognises (ICO, PSD, EPS, ...) is ``unsupported_image``.
SUPPORTED_FORMATS = frozenset(
    {"JPEG", "MPO", "PNG", "WEBP", "BMP", "GIF", "TIFF", "PPM", "HEIF"} | ({"AVIF"} if AVIF_DECODER else set())
)
#: How many leading bytes :func:`sniff_format` needs.
SNIFF_BYTES = 32

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_JPEG_FORMATS = frozenset({"JPEG", "MPO"})
_FAST_JPEG_MODES = frozenset({"RGB", "L"})
_EXIF_ORIENTATION_TAG = 0x0112
_PIL_LIMIT_LOCK = threading.Lock()  # guards the swap of PIL's global MAX_IMAGE_PIXELS in _open_header
#: DCT-domain reductions :func:`decode_image_reduced` chooses from, largest first (1 = full size).
DCT_REDUCTIONS = (8, 4, 2, 1)
#: For EXIF orientations 1-8: whether the upright x and y axes run against the stored ones.
_FLIPPED_AXES = {
    1: (False, False),
    2: (True, False),
    3: (True, True),
    4: (False, True),
    5: (False, False),
    6: (True, False),
    7: (True, True),
    8: (False, True),
}

#: (offset, signature, format) of formats in :data:`SUPPORTED_FORMATS` (WebP, Netpbm, HEIF, AVIF: in the code).
_SUPPORTED_SIGNATURES = (
    (0, b"\xff\xd8", "JPEG"),
    (0, b"\x89PNG\r\n\x1a\n", "PNG"),
    (0, b"GIF87a", "GIF"),
    (0, b"GIF89a", "GIF"),
    (0, b"BM", "BMP"),
    (0, b"II*\x00", "TIFF"),
    (0, b"MM\x00*", "TIFF"),
    (0, b"II+\x00", "TIFF"),  # BigTIFF
    (0, b"MM\x00+", "TIFF"),
)
#: (offset, signature, name) of image formats PIL does not decode here: they are images, just not supported ones.
_UNSUPPORTED_SIGNATURES = (
    (0, b"\x00\x00\x00\x0cjP  ", "JPEG 2000"),
    (0, b"\xff\x4f\xff\x51", "JPEG 2000"),
    (0, b"\xff\x0a", "JPEG XL"),
    (0, b"\x00\x00\x00\x0cJXL ", "JPEG XL"),
    (0, b"\x00\x00\x01\x00", "ICO"),
    (0, b"\x00\x00\x02\x00", "CUR"),
    (0, b"8BPS", "PSD"),
    (0, b"qoif", "QOI"),
    (0, b"DDS ", "DDS"),
    (0, b"icns", "ICNS"),
    (0, b"%!PS-Adobe", "EPS"),
    (0, b"\xc5\xd0\xd3\xc6", "EPS"),
    (0, b"SIMPLE  =", "FITS"),
)
#: Netpbm: P1-P6 (PBM / PGM / PPM, ASCII or binary) and Pf / PF (PFM, float samples: unsupported).
_NETPBM = re.compile(rb"P([1-6fF])\s")
#: ISO-BMFF ``ftyp`` major brands of HEIF stills (HEIC and its relatives) and of AVIF.
_HEIF_BRANDS = frozenset({b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1"})
_AVIF_BRANDS = frozenset({b"avif", b"avis"})

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


@dataclass(frozen=True)
class ReducedImage:
    """A photo decoded at ``1 / reduction`` of its full resolution (JPEG DCT scaling; 1: full size).

    pixels:    [ceil(H / reduction), ceil(W / reduction), 3] uint8 BGR, upright (as :func:`decode_image`).
    reduction: 1, 2, 4 or 8.
    full_size: (W, H) of the upright full-resolution image.
    flipped:   whether the upright x / y axis runs against the stored one (EXIF orientation), which moves
               the partial last DCT block to the start of that axis.
    """

    pixels: np.ndarray
    reduction: int
    full_size: tuple[int, int]
    flipped: tuple[bool, bool] = (False, False)

    def _offsets(self) -> np.ndarray:
        """[2] full-resolution pixel centre of reduced pixel 0 along x and y."""
        r = self.reduction
        reduced = np.array(self.pixels.shape[1::-1], np.float64)
        pad = np.where(self.flipped, reduced * r - np.array(self.full_size, np.float64), 0.0)
        return (r - 1) / 2 - pad

    def to_full(self, points: np.ndarray) -> np.ndarray:
        """Points ``[..., 2]`` (x, y) in these pixels -> full-resolution pixels (pixel centres, float64)."""
        return np.asarray(points, np.float64) * self.reduction + self._offsets()

    def from_full(self, points: np.ndarray) -> np.ndarray:
        """Points ``[..., 2]`` (x, y) in full-resolution pixels -> these pixels (float64)."""
        return (np.asarray(points, np.float64) - self._offsets()) / self.reduction


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
    return decode_image_reduced(data, max_reduction=1, max_pixels=max_pixels, channel_order=channel_order).pixels


def decode_image_reduced(
    data: bytes,
    *,
    min_side: int = 0,
    max_reduction: int = 8,
    max_pixels: int = 50_000_000,
    channel_order: Literal["rgb", "bgr"] = "rgb",
) -> ReducedImage:
    """Like :func:`decode_image`, but a JPEG is decoded at ``1 / r`` of its size in the DCT domain.

    ``r`` is the largest of :data:`DCT_REDUCTIONS` that is ``<= max_reduction`` and keeps the longer side
    ``>= min_side`` pixels. Images that are not RGB/greyscale JPEGs are decoded at full size (``r = 1``).
    ``max_pixels`` applies to the full-resolution size, checked on the header before decoding.
    """
    if channel_order not in ("rgb", "bgr"):
        raise ValueError(f"channel_order must be 'rgb' or 'bgr', got {channel_order!r}")
    if len(data) == 0:
        raise ImageError("empty_file", "the file has 0 bytes")
    data = bytes(data)
    header = _open_header(data, max_pixels)
    width, height = header.size
    bgr, reduction = None, 1
    if header.format in _JPEG_FORMATS and header.mode in _FAST_JPEG_MODES:
        longer = max(width, height)
        reduction = next(r for r in DCT_REDUCTIONS if r == 1 or (r <= max_reduction and -(-longer // r) >= min_side))
        bgr = _decode_jpeg_strict(data, -(-width // reduction), -(-height // reduction))
    if bgr is None:
        bgr, reduction = _decode_with_pil(header), 1
    orientation = _exif_orientation(header)
    bgr = _apply_orientation(bgr, orientation)
    if channel_order == "bgr":
        bgr = bgr[..., ::-1]
    full_size = (height, width) if orientation >= 5 else (width, height)
    return ReducedImage(np.ascontiguousarray(bgr), reduction, full_size, _FLIPPED_AXES[orientation])


def encode_jpeg(img_bgr: np.ndarray, quality: int = 95, subsampling: Literal["420", "444"] = "420") -> bytes:
    """Encode a BGR uint8 image ``[H, W, 3]`` to a standard RGB JPEG with simplejpeg (chroma 4:2:0 or 4:4:4)."""
    _check_bgr_image(img_bgr)
    if not 1 <= quality <= 100:
        raise ValueError(f"JPEG quality must be in 1..100, got {quality}")
    return simplejpeg.encode_jpeg(
        np.ascontiguousarray(img_bgr), quality=quality, colorspace="BGR", colorsubsampling=subsampling
    )


def encode_crop(img_bgr: np.ndarray, storage: CropStorage = "jpeg", quality: int = 95) -> bytes:
    """Encode an aligned crop ``[H, W, 3]`` uint8 BGR as ``storage`` (see :data:`CropStorage`; ``quality``:
    JPEG only). PNG is written at zlib level 1: higher levels cost 1.5-10x the encode time for ~5% fewer bytes."""
    if storage == "png":
        _check_bgr_image(img_bgr)
        ok, png = cv2.imencode(".png", img_bgr, [cv2.IMWRITE_PNG_COMPRESSION, 1])
        if not ok:
            raise ValueError(f"OpenCV could not encode a {img_bgr.shape} image as PNG")
        return png.tobytes()
    if storage not in CROP_STORAGES:
        raise ValueError(f"storage must be one of {', '.join(CROP_STORAGES)}, got {storage!r}")
    return encode_jpeg(img_bgr, quality, "444" if storage == "jpeg444" else "420")


def crop_storage(data: bytes) -> CropStorage:
    """Which :data:`CropStorage` encoded ``data`` (told from its header), so that a masked twin is stored like
    its crop; raises :class:`ImageError` for anything else."""
    if bytes(data[:8]) == _PNG_SIGNATURE:
        return "png"
    if bytes(data[:2]) != b"\xff\xd8":
        raise ImageError("not_an_image", "a stored crop must be a JPEG or a PNG")
    try:
        subsampling = simplejpeg.decode_jpeg_header(data)[3]
    except ValueError as exc:
        raise _jpeg_error(str(exc)) from exc
    return "jpeg444" if subsampling == "444" else "jpeg"


def crop_size(data: bytes) -> tuple[int, int]:
    """(height, width) of a stored crop (JPEG or PNG) from its header alone."""
    if bytes(data[:8]) == _PNG_SIGNATURE and len(data) >= 24:
        width, height = struct.unpack(">II", bytes(data[16:24]))  # IHDR, the first chunk of every PNG
        return height, width
    try:
        return simplejpeg.decode_jpeg_header(data)[:2]
    except ValueError as exc:
        raise _jpeg_error(str(exc)) from exc


def decode_crop_rgb(data: bytes, buffer: np.ndarray | None = None) -> np.ndarray:
    """Decode a stored crop (any :data:`CropStorage`) to an RGB uint8 array ``[H, W, 3]`` (the training
    loaders' path; no EXIF handling). ``buffer`` (uint8, at least ``H * W * 3`` bytes) receives the pixels
    when given, as in ``simplejpeg.decode_jpeg``: the result is then a view of it. Strict: a truncated or
    damaged crop is an :class:`ImageError`, never a partly grey face."""
    if bytes(data[:8]) != _PNG_SIGNATURE:
        return decode_jpeg_rgb(data, buffer)
    rgb = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR_RGB)
    if rgb is None:
        raise ImageError("corrupt_image", "OpenCV cannot decode this PNG (truncated or damaged)")
    if buffer is None:
        return rgb
    out = np.frombuffer(buffer, np.uint8, count=rgb.size).reshape(rgb.shape)
    out[...] = rgb
    return out


def decode_jpeg_rgb(data: bytes, buffer: np.ndarray | None = None) -> np.ndarray:
    """Decode a JPEG to an RGB uint8 array ``[H, W, 3]`` (training-loader fast path; no EXIF handling),
    into ``buffer`` when given (see :func:`decode_crop_rgb`)."""
    if len(data) == 0:
        raise ImageError("empty_file", "the file has 0 bytes")
    if bytes(data[:2]) != b"\xff\xd8":
        raise ImageError("not_an_image", "the data does not start with a JPEG marker")
    try:
        return simplejpeg.decode_jpeg(data, colorspace="RGB", strict=True, buffer=buffer)
    except ValueError as exc:
        raise _jpeg_error(str(exc)) from exc


def _check_bgr_image(img: np.ndarray) -> None:
    if not isinstance(img, np.ndarray) or img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        desc = f"{img.dtype} {img.shape}" if isinstance(img, np.ndarray) else type(img).__name__
        raise ValueError(f"expected a uint8 BGR image of shape [H, W, 3], got {desc}")
    if img.shape[0] == 0 or img.shape[1] == 0:
        raise ValueError(f"cannot encode an empty image of shape {img.shape}")


def _open_header(data: bytes, max_pixels: int) -> Image.Image:
    """Parse the header only (PIL is lazy), identify the format and refuse oversized images.

    PIL's own global pixel limit is off while the header is parsed (under a lock): ``max_pixels`` alone
    decides, checked right after, so a limit above PIL's default works and every refusal names it.
    """
    try:
        with _PIL_LIMIT_LOCK:
            saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
            try:
                header = Image.open(io.BytesIO(data))
            finally:
                Image.MAX_IMAGE_PIXELS = saved
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


def sniff_format(head: bytes) -> str:
    """The format (one of :data:`SUPPORTED_FORMATS`) that a file starting with ``head`` (its first
    :data:`SNIFF_BYTES` bytes or more) claims to be; raises :class:`ImageError` (``empty_file``,
    ``unsupported_image``, ``not_an_image``) when it can be no image this module decodes.

    Only the signature is checked: a file that passes may still be ``corrupt_image`` or ``truncated_image``.
    """
    head = bytes(head[:SNIFF_BYTES])
    if not head:
        raise ImageError("empty_file", "the file has 0 bytes")
    for offset, signature, name in _SUPPORTED_SIGNATURES:
        if head[offset : offset + len(signature)] == signature:
            return name
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    if netpbm := _NETPBM.match(head):
        if netpbm[1] in b"fF":
            raise ImageError("unsupported_image", "PFM (floating-point Netpbm) images are not supported")
        return "PPM"
    if head[4:8] == b"ftyp" and head[8:12] in _HEIF_BRANDS:
        return "HEIF"
    if head[4:8] == b"ftyp" and head[8:12] in _AVIF_BRANDS:
        if not AVIF_DECODER:
            raise ImageError("unsupported_image", "AVIF images need Pillow built with libavif (Pillow >= 11.3 wheels)")
        return "AVIF"
    for offset, signature, name in _UNSUPPORTED_SIGNATURES:
        if head[offset : offset + len(signature)] == signature:
            raise ImageError("unsupported_image", f"{name} images are not supported")
    raise ImageError("not_an_image", f"no known image signature (first bytes: {head[:8]!r})")


def _unidentified_error(data: bytes) -> ImageError:
    """Why PIL could not identify ``data``: not an image, an unsupported one, or a supported one that is damaged."""
    try:
        name = sniff_format(data)
    except ImageError as exc:
        return exc
    return ImageError("corrupt_image", f"the file starts like a {name} image but its header does not parse")


def _decode_jpeg_strict(data: bytes, width: int, height: int) -> np.ndarray | None:
    """Decode with simplejpeg in strict mode to ``[height, width]`` (the stored size or its DCT-scaled
    size: the smallest libjpeg-turbo scale that reaches it); ``None`` when it cannot handle this variant."""
    size = {"min_width": width, "min_height": height}
    try:
        return simplejpeg.decode_jpeg(data, colorspace="BGR", strict=True, **size)
    except ValueError as exc:
        message = str(exc)
    if _BENIGN_JPEG_WARNING.search(message):
        return simplejpeg.decode_jpeg(data, colorspace="BGR", strict=False, **size)
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
