"""decode_image (and its DCT-reduced variant) on real photos and on every kind of broken or unusual file."""

from __future__ import annotations

import io
import tracemalloc
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image, ImageOps

from facekit.data.images import (
    AVIF_DECODER,
    SNIFF_BYTES,
    ImageError,
    decode_image,
    decode_image_reduced,
    decode_jpeg_rgb,
    encode_jpeg,
    sniff_format,
)


@pytest.fixture(scope="module")
def photo_jpeg(assets: Path) -> bytes:
    """A real 1 MP-class face photo (JPEG bytes)."""
    return (assets / "faces" / "deepface" / "img1.jpg").read_bytes()


@pytest.fixture(scope="module")
def photo_bgr(photo_jpeg: bytes) -> np.ndarray:
    """The same photo, downscaled to keep the tests fast: BGR uint8 [H, W, 3]."""
    full = cv2.imdecode(np.frombuffer(photo_jpeg, np.uint8), cv2.IMREAD_COLOR)
    return cv2.resize(full, (full.shape[1] // 2, full.shape[0] // 2), interpolation=cv2.INTER_AREA)


def _png(img: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", img)
    assert ok
    return buf.tobytes()


def _pil_bytes(img: Image.Image, fmt: str, **params: object) -> bytes:
    out = io.BytesIO()
    img.save(out, format=fmt, **params)
    return out.getvalue()


def _reason(data: bytes, **kwargs: object) -> str:
    with pytest.raises(ImageError) as info:
        decode_image(data, **kwargs)
    assert info.value.detail, "every refusal explains itself"
    return info.value.reason


def test_every_deepface_photo_decodes_like_opencv(assets: Path) -> None:
    """Strict decoding rejects no real photo and gives OpenCV's pixels (one is a WebP named .jpg)."""
    paths = sorted((assets / "faces" / "deepface").glob("*.jpg"))
    assert len(paths) >= 60
    for path in paths:
        data = path.read_bytes()
        ours = decode_image(data)
        reference = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        assert ours.dtype == np.uint8 and ours.flags.c_contiguous
        assert ours.shape == reference.shape, path.name
        assert np.abs(ours.astype(np.int16) - reference).max() <= 2, path.name


def test_decompression_bomb_refused_from_header_without_decoding(png_bomb: bytes) -> None:
    """A real 30000x30000 PNG (a few KB on disk, 2.7 GB decoded) is refused before any pixel is decoded."""
    bomb = png_bomb
    tracemalloc.start()
    assert _reason(bomb) == "too_large"
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 20 * 2**20, f"peak {peak / 2**20:.1f} MiB while refusing a bomb"


def test_max_pixels_above_pils_own_limit_is_the_only_limit(png_bomb: bytes) -> None:
    """PIL refuses images past 2 x its MAX_IMAGE_PIXELS (179 M) by itself; the caller's max_pixels decides
    instead, both ways, and the refusal names it."""
    with pytest.raises(ImageError, match=r"30000x30000 = 900,000,000 pixels exceeds max_pixels=899,999,999"):
        decode_image(png_bomb, max_pixels=900_000_000 - 1)
    assert Image.MAX_IMAGE_PIXELS == 89_478_485  # PIL's global limit is restored


def test_max_pixels_is_the_callers_limit(photo_jpeg: bytes) -> None:
    height, width = decode_image(photo_jpeg).shape[:2]
    assert _reason(photo_jpeg, max_pixels=height * width - 1) == "too_large"
    assert decode_image(photo_jpeg, max_pixels=height * width).shape[:2] == (height, width)


def test_empty_and_non_image_files(tmp_path: Path) -> None:
    assert _reason(b"") == "empty_file"
    text = tmp_path / "holiday.jpg"
    text.write_text("this is a note, not a photo\n")
    assert _reason(text.read_bytes()) == "not_an_image"


def test_garbled_jpeg_header_and_stream_are_corrupt(photo_jpeg: bytes) -> None:
    header_garbled = bytearray(photo_jpeg)
    header_garbled[2:400] = bytes(range(256)) + bytes(142)
    assert _reason(bytes(header_garbled)) == "corrupt_image"

    stream_garbled = bytearray(photo_jpeg)
    middle = len(photo_jpeg) // 2
    noise = np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes()
    stream_garbled[middle : middle + 4000] = noise
    assert _reason(bytes(stream_garbled)) == "corrupt_image"


def test_truncated_jpeg_and_png_are_refused_not_grey_filled(photo_jpeg: bytes, photo_bgr: np.ndarray) -> None:
    assert _reason(photo_jpeg[: len(photo_jpeg) // 2]) == "truncated_image"
    png = _png(photo_bgr)
    assert _reason(png[: len(png) // 2]) == "truncated_image"
    with pytest.raises(ImageError) as info:
        decode_jpeg_rgb(photo_jpeg[: len(photo_jpeg) // 2])
    assert info.value.reason == "truncated_image"


def test_junk_before_end_marker_is_tolerated(photo_jpeg: bytes) -> None:
    """Bytes between the last scan and EOI (common in camera files) leave the pixels intact."""
    assert photo_jpeg.endswith(b"\xff\xd9")
    padded = photo_jpeg[:-2] + b"\x00" * 16 + b"\xff\xd9"
    np.testing.assert_array_equal(decode_image(padded), decode_image(photo_jpeg))


def test_png_alpha_is_composited_on_white(photo_bgr: np.ndarray) -> None:
    height, width = photo_bgr.shape[:2]
    alpha = np.full((height, width), 255, np.uint8)
    alpha[:, : width // 3] = 0
    alpha[:, width // 3 : 2 * width // 3] = 128
    out = decode_image(_png(np.dstack([photo_bgr, alpha])))
    assert out.shape == photo_bgr.shape
    assert (out[:, : width // 3] == 255).all()
    np.testing.assert_array_equal(out[:, 2 * width // 3 :], photo_bgr[:, 2 * width // 3 :])
    half = photo_bgr[:, width // 3 : 2 * width // 3].astype(np.float64)
    expected = half * 128 / 255 + 255 * 127 / 255
    assert np.abs(out[:, width // 3 : 2 * width // 3] - expected).max() <= 1


def test_sixteen_bit_png_rescaled_not_clipped(photo_bgr: np.ndarray) -> None:
    deep = photo_bgr.astype(np.uint16) * 257
    np.testing.assert_array_equal(decode_image(_png(deep)), photo_bgr)
    grey = cv2.cvtColor(photo_bgr, cv2.COLOR_BGR2GRAY)
    out = decode_image(_png(grey.astype(np.uint16) * 257))
    np.testing.assert_array_equal(out, np.dstack([grey] * 3))


def test_cmyk_jpeg_matches_pil_rgb_conversion(photo_bgr: np.ndarray) -> None:
    rgb = Image.fromarray(np.ascontiguousarray(photo_bgr[:, :, ::-1]))
    cmyk = _pil_bytes(rgb.convert("CMYK"), "JPEG", quality=95)
    out = decode_image(cmyk)
    pil_rgb = np.asarray(Image.open(io.BytesIO(cmyk)).convert("RGB"))
    assert np.abs(out.astype(np.int16) - pil_rgb[:, :, ::-1]).max() <= 1
    assert np.abs(out.astype(np.int16) - photo_bgr).mean() < 4, "colours stay those of the photo"


def test_greyscale_gives_three_equal_channels(photo_bgr: np.ndarray) -> None:
    grey = cv2.cvtColor(photo_bgr, cv2.COLOR_BGR2GRAY)
    for data in (_pil_bytes(Image.fromarray(grey), "JPEG", quality=95), _png(grey)):
        out = decode_image(data)
        assert out.shape == (*grey.shape, 3)
        assert (out[:, :, 0] == out[:, :, 1]).all() and (out[:, :, 1] == out[:, :, 2]).all()
        assert np.abs(out[:, :, 0].astype(np.int16) - grey).mean() < 2


def test_exif_orientation_is_honoured(photo_bgr: np.ndarray) -> None:
    """Same JPEG pixels with EXIF orientation 6 / 8 come out as the rotated original."""
    pil = Image.fromarray(np.ascontiguousarray(photo_bgr[:, :, ::-1]))
    upright = decode_image(_pil_bytes(pil, "JPEG", quality=95))

    def tagged(orientation: int) -> bytes:
        exif = Image.Exif()
        exif[0x0112] = orientation
        return _pil_bytes(pil, "JPEG", quality=95, exif=exif)

    np.testing.assert_array_equal(decode_image(tagged(6)), np.rot90(upright, k=-1))
    np.testing.assert_array_equal(decode_image(tagged(8)), np.rot90(upright, k=1))
    for orientation in range(1, 9):
        data = tagged(orientation)
        expected = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))))[:, :, ::-1]
        assert np.abs(decode_image(data).astype(np.int16) - expected).max() <= 1, orientation


def test_webp_and_bmp_decode_exactly(photo_bgr: np.ndarray) -> None:
    rgb = Image.fromarray(np.ascontiguousarray(photo_bgr[:, :, ::-1]))
    np.testing.assert_array_equal(decode_image(_pil_bytes(rgb, "WEBP", lossless=True)), photo_bgr)
    np.testing.assert_array_equal(decode_image(_pil_bytes(rgb, "BMP")), photo_bgr)


def test_unsupported_formats_are_named(photo_bgr: np.ndarray) -> None:
    icon = _pil_bytes(Image.fromarray(photo_bgr[:64, :64]), "ICO")
    assert _reason(icon) == "unsupported_image"
    jpeg_xl = b"\x00\x00\x00\x0cJXL \r\n\x87\n" + bytes(64)
    assert _reason(jpeg_xl) == "unsupported_image"
    pfm = b"Pf\n2 2\n-1.0\n" + np.zeros(4, np.float32).tobytes()
    assert _reason(pfm) == "unsupported_image"
    # HEIC is decoded (pi-heif), so a HEIC signature followed by junk is a damaged HEIC
    heic_header = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(64)
    assert _reason(heic_header) == "corrupt_image"


def test_sniff_format_names_each_format_from_its_first_bytes(photo_bgr: np.ndarray) -> None:
    rgb = Image.fromarray(np.ascontiguousarray(photo_bgr[:64, :64, ::-1]))
    encoded = {
        "JPEG": _pil_bytes(rgb, "JPEG"),
        "PNG": _pil_bytes(rgb, "PNG"),
        "GIF": _pil_bytes(rgb, "GIF"),
        "BMP": _pil_bytes(rgb, "BMP"),
        "TIFF": _pil_bytes(rgb, "TIFF"),
        "WEBP": _pil_bytes(rgb, "WEBP"),
        "PPM": _pil_bytes(rgb, "PPM"),
    }
    if AVIF_DECODER:
        encoded["AVIF"] = _pil_bytes(rgb, "AVIF")
    for name, data in encoded.items():
        assert sniff_format(data[:SNIFF_BYTES]) == name
        assert Image.open(io.BytesIO(data)).format == name
    assert sniff_format(b"P2\n# a comment\n2 1\n255\n0 255\n") == "PPM"
    assert sniff_format(b"\x00\x00\x00\x1cftypheic\x00\x00\x00\x00mif1heic") == "HEIF"
    for head, reason in [
        (b"", "empty_file"),
        (b"this is a note, not a photo\n", "not_an_image"),
        (b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00isommp42", "not_an_image"),  # an MP4 video
        (_pil_bytes(rgb, "ICO"), "unsupported_image"),
        (b"8BPS\x00\x01" + bytes(26), "unsupported_image"),
    ]:
        with pytest.raises(ImageError) as info:
            sniff_format(head)
        assert info.value.reason == reason and info.value.detail


def test_netpbm_gif_tiff_first_frame_and_avif_decode(photo_bgr: np.ndarray) -> None:
    """PGM / PPM (8 and 16 bit), GIF and TIFF (first frame / page), AVIF decode like OpenCV / PIL."""
    rgb = Image.fromarray(np.ascontiguousarray(photo_bgr[:, :, ::-1]))
    grey = cv2.cvtColor(photo_bgr, cv2.COLOR_BGR2GRAY)
    np.testing.assert_array_equal(decode_image(_pil_bytes(rgb, "PPM")), photo_bgr)
    np.testing.assert_array_equal(decode_image(_pil_bytes(Image.fromarray(grey), "PPM")), np.dstack([grey] * 3))
    height, width = grey.shape
    pgm16 = b"P5\n%d %d\n65535\n" % (width, height) + (grey.astype(np.uint16) * 257).astype(">u2").tobytes()
    np.testing.assert_array_equal(decode_image(pgm16), np.dstack([grey] * 3))
    ok, pgm_cv = cv2.imencode(".pgm", grey)
    assert ok
    np.testing.assert_array_equal(decode_image(pgm_cv.tobytes()), np.dstack([grey] * 3))

    other = rgb.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    gif = _pil_bytes(rgb, "GIF", save_all=True, append_images=[other], duration=100, loop=0)
    first = np.asarray(Image.open(io.BytesIO(gif)).convert("RGB"))[:, :, ::-1]
    np.testing.assert_array_equal(decode_image(gif), first)
    tiff = _pil_bytes(rgb, "TIFF", save_all=True, append_images=[other])
    assert getattr(Image.open(io.BytesIO(tiff)), "n_frames", 1) == 2
    np.testing.assert_array_equal(decode_image(tiff), photo_bgr)

    if AVIF_DECODER:
        exif = Image.Exif()
        exif[0x0112] = 6
        avif = _pil_bytes(rgb, "AVIF", quality=90, exif=exif)
        expected = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(avif))).convert("RGB"))[:, :, ::-1]
        np.testing.assert_array_equal(decode_image(avif), expected)
        assert decode_image(avif).shape == (width, height, 3)


def test_bgr_stored_files_come_out_as_proper_bgr(photo_bgr: np.ndarray) -> None:
    """MS1MV3-style files hold B, G, R where a JPEG expects R, G, B."""
    stored_swapped = _pil_bytes(Image.fromarray(np.ascontiguousarray(photo_bgr)), "JPEG", quality=98)
    out = decode_image(stored_swapped, channel_order="bgr")
    assert np.abs(out.astype(np.int16) - photo_bgr).mean() < 2
    assert np.abs(decode_image(stored_swapped).astype(np.int16) - photo_bgr).mean() > 5


def test_encode_decode_roundtrip_is_standard_rgb_jpeg(photo_bgr: np.ndarray) -> None:
    data = encode_jpeg(photo_bgr, quality=95)
    rgb = decode_jpeg_rgb(data)
    assert rgb.shape == photo_bgr.shape and rgb.dtype == np.uint8
    mse = np.mean((rgb[:, :, ::-1].astype(np.float64) - photo_bgr) ** 2)
    assert 10 * np.log10(255**2 / mse) > 35
    pil_rgb = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    assert np.abs(pil_rgb.astype(np.int16) - rgb).mean() < 1, "any JPEG reader sees the same colours"


def test_encode_and_fast_decode_reject_bad_input(photo_bgr: np.ndarray) -> None:
    with pytest.raises(ValueError, match="uint8 BGR"):
        encode_jpeg(photo_bgr.astype(np.float32))
    with pytest.raises(ValueError, match="uint8 BGR"):
        encode_jpeg(photo_bgr[:, :, 0])
    with pytest.raises(ValueError, match="quality"):
        encode_jpeg(photo_bgr, quality=0)
    with pytest.raises(ImageError) as info:
        decode_jpeg_rgb(_png(photo_bgr))
    assert info.value.reason == "not_an_image"


def test_reduced_decode_of_real_photos_is_a_dct_downscale(assets: Path) -> None:
    """Large JPEGs come out at 1/r (r in 2, 4, 8) with the longer side still >= min_side, close to an
    area downscale of the full decode; the others at full size, equal to decode_image."""
    reduced_count = 0
    for path in sorted((assets / "faces" / "deepface").glob("*.jpg")):
        data = path.read_bytes()
        full = decode_image(data)
        view = decode_image_reduced(data, min_side=640)
        height, width = full.shape[:2]
        assert view.full_size == (width, height), path.name
        r = view.reduction
        assert view.pixels.shape == (-(-height // r), -(-width // r), 3), path.name
        if r == 1:  # small, or a JPEG variant / WebP-named-.jpg decoded by PIL
            np.testing.assert_array_equal(view.pixels, full)
            continue
        reduced_count += 1
        assert max(view.pixels.shape[:2]) >= 640, path.name
        assert r == 8 or -(-max(height, width) // (2 * r)) < 640, f"{path.name}: a larger reduction fits"
        h, w = height // r, width // r
        area = cv2.resize(full[: h * r, : w * r], (w, h), interpolation=cv2.INTER_AREA)
        assert np.abs(view.pixels[:h, :w].astype(np.int16) - area).mean() < 2.0, path.name
    assert reduced_count >= 25


@pytest.mark.parametrize("orientation", range(1, 9))
def test_reduced_pixels_map_onto_full_resolution_pixels(orientation: int) -> None:
    """A bright spot's centroid in the 1/4 decode, mapped by to_full, lands on its centroid in the full
    decode, for every EXIF orientation (odd sizes: the partial DCT block moves with flips)."""
    height, width = 965, 1283
    stored = np.full((height, width, 3), 40, np.uint8)
    stored[301:317, 517:533] = 250  # 16 x 16, not aligned to the 8 x 8 blocks
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = _pil_bytes(Image.fromarray(stored), "JPEG", quality=98, exif=exif)

    def centroid(img: np.ndarray) -> np.ndarray:
        weight = np.clip(img[:, :, 1].astype(np.float64) - 60, 0, None)
        ys, xs = np.indices(weight.shape)
        return np.array([(weight * xs).sum(), (weight * ys).sum()]) / weight.sum()

    full = decode_image(data)
    view = decode_image_reduced(data, min_side=0, max_reduction=4)
    assert view.reduction == 4 and view.full_size == full.shape[1::-1]
    mapped = view.to_full(centroid(view.pixels))
    assert np.abs(mapped - centroid(full)).max() < 0.5, (mapped, centroid(full))
    np.testing.assert_allclose(view.from_full(mapped), centroid(view.pixels), atol=1e-9)


def test_reduced_decode_keeps_every_safety_check(photo_jpeg: bytes, photo_bgr: np.ndarray) -> None:
    """Header-first size refusal, truncation and damage are refused at reduced size too; PNGs stay full."""
    height, width = decode_image(photo_jpeg).shape[:2]
    for kwargs in ({"max_pixels": height * width - 1}, {}):
        with pytest.raises(ImageError) as info:
            decode_image_reduced(photo_jpeg[: len(photo_jpeg) // 2], min_side=64, **kwargs)
        assert info.value.reason == ("too_large" if kwargs else "truncated_image")
    garbled = bytearray(photo_jpeg)
    noise = np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes()
    garbled[len(garbled) // 2 : len(garbled) // 2 + 4000] = noise
    with pytest.raises(ImageError) as info:
        decode_image_reduced(bytes(garbled), min_side=64)
    assert info.value.reason == "corrupt_image"
    png = decode_image_reduced(_png(photo_bgr), min_side=64)
    assert png.reduction == 1 and png.full_size == photo_bgr.shape[1::-1]
    np.testing.assert_array_equal(png.pixels, photo_bgr)
    assert decode_image_reduced(photo_jpeg, min_side=64, max_reduction=2).reduction == 2
    assert decode_image_reduced(photo_jpeg, min_side=max(height, width) // 2 + 1).reduction == 1
