"""IdentityFolderSource on real folder trees of the deepface photos: every file is read or rejected with a reason."""

from __future__ import annotations

import ctypes
import io
import os
import shutil
import socket
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
import pytest
from PIL import Image, ImageOps

from facekit.data.images import AVIF_DECODER, ImageError, decode_image
from facekit.data.record import RawRecord
from facekit.data.sources import SourceFormatError, open_source
from facekit.data.sources.base import SourceError
from facekit.data.sources.folders import IdentityFolderSource

PHOTOS = ["img1.jpg", "img2.jpg", "img3.jpg", "img4.jpg", "img5.jpg"]


def _account(source: IdentityFolderSource) -> tuple[dict[str, RawRecord], dict[str, SourceError]]:
    """Every key of ``source``, read: (key -> record, key -> the error that rejected it)."""
    records, rejected = {}, {}
    for key in source.keys():
        try:
            records[key] = source.read(key)
        except SourceError as e:
            rejected[key] = e
    return records, rejected


def _files_on_disk(root: Path) -> int:
    """Entries under ``root`` that are not folders (links to folders count as files: they are not walked)."""
    count = 0
    for folder, dirs, files in os.walk(root):
        count += len(files) + sum(os.path.islink(os.path.join(folder, d)) for d in dirs)
    return count


@pytest.fixture()
def tree(assets: Path, tmp_path: Path) -> Path:
    """A VGGFace2-style tree: two identities with photos, one empty identity, and files that are not photos."""
    photos = assets / "faces" / "deepface"
    root = tmp_path / "vggface2"
    files = {
        "n000002/0001_01.jpg": PHOTOS[0],
        "n000002/0002_01.JPEG": PHOTOS[1],
        "n000001/0010_02.jpg": PHOTOS[2],
        "n000001/0003_01.png": PHOTOS[3],  # JPEG bytes under a .png name: read, the content decides
        "n000001/sub/0099_01.jpg": PHOTOS[4],  # nested: rejected
        "stray.jpg": PHOTOS[4],  # directly under root: rejected
    }
    for rel, photo in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(photos / photo, root / rel)
    (root / "n000001" / "notes.txt").write_text("not an image")
    (root / "n000003").mkdir()  # holds no file: not an identity
    (root / ".cache").mkdir()  # hidden: not an identity
    return root


def test_keys_are_sorted_stable_and_identities_indexed(tree: Path, assets: Path) -> None:
    source = IdentityFolderSource(tree, "vgg")
    assert source.keys() == [
        "vgg/n000001/0003_01",
        "vgg/n000001/0010_02",
        "vgg/n000001/notes",
        "vgg/n000001/sub/0099_01.jpg",
        "vgg/n000002/0001_01",
        "vgg/n000002/0002_01",
        "vgg/stray.jpg",
    ]
    assert IdentityFolderSource(tree, "vgg").keys() == source.keys()
    assert source.identities() == ["n000001", "n000002"]  # n000003 holds no file: no label is spent on it

    record = source.read("vgg/n000002/0002_01")
    assert record.data == (assets / "faces" / "deepface" / PHOTOS[1]).read_bytes()
    assert (record.key, record.identity, record.source, record.meta) == ("vgg/n000002/0002_01", 1, "vgg", {})
    records, rejected = _account(source)
    assert [r.identity for r in records.values()] == [0, 0, 1, 1]
    assert {k: e.reason for k, e in rejected.items()} == {
        "vgg/n000001/notes": "not_an_image",
        "vgg/n000001/sub/0099_01.jpg": "nested_file",
        "vgg/stray.jpg": "not_in_identity_folder",
    }
    assert _files_on_disk(tree) == len(records) + len(rejected)


def test_same_stem_files_both_kept_with_their_extension(tree: Path, assets: Path) -> None:
    shutil.copyfile(assets / "faces" / "deepface" / PHOTOS[4], tree / "n000002" / "0001_01.webp")
    source = IdentityFolderSource(tree, "vgg")
    assert [k for k in source.keys() if "0001_01" in k] == ["vgg/n000002/0001_01.jpg", "vgg/n000002/0001_01.webp"]
    assert source.read("vgg/n000002/0001_01.webp").data == (tree / "n000002" / "0001_01.webp").read_bytes()
    assert source.read("vgg/n000002/0001_01.jpg").data == (tree / "n000002" / "0001_01.jpg").read_bytes()
    assert len(source.keys()) == 8  # 5 photos, notes.txt, the nested photo and the stray one


def test_loose_csvs_go_into_meta(tree: Path) -> None:
    bbox_csv = tree.parent / "loose_bb_train.csv"
    bbox_csv.write_text('NAME_ID,X,Y,W,H\n"n000002/0001_01",161,140,224,324\nn009999/0001_01,1,2,3,4\n')
    landmarks_csv = tree.parent / "loose_landmark_train.csv"
    landmarks_csv.write_text(
        "NAME_ID,P1X,P1Y,P2X,P2Y,P3X,P3Y,P4X,P4Y,P5X,P5Y\n"
        "n000002/0001_01,75.81,110.21,103.12,104.85,90.95,127.97,80.04,144.74,106.04,138.98\n"
    )
    source = IdentityFolderSource(tree, "vgg", bbox_csv=bbox_csv, landmarks_csv=landmarks_csv)
    meta = source.read("vgg/n000002/0001_01").meta
    assert meta["loose_bbox"] == [161.0, 140.0, 385.0, 464.0]  # x1, y1, x1 + w, y1 + h
    assert meta["loose_landmarks"] == [
        [75.81, 110.21],
        [103.12, 104.85],
        [90.95, 127.97],
        [80.04, 144.74],
        [106.04, 138.98],
    ]
    assert source.read("vgg/n000002/0002_01").meta == {}


def test_bad_csv_is_reported_with_its_line(tree: Path) -> None:
    bad = tree.parent / "loose_bb_train.csv"
    bad.write_text("NAME_ID,X,Y,W,H\nn000002/0001_01,1,2,3,4\nn000002/0002_01,1,2,three,4\n")
    with pytest.raises(SourceFormatError, match="line 3") as err:
        IdentityFolderSource(tree, "vgg", bbox_csv=bad)
    assert err.value.reason == "bad_csv"
    with pytest.raises(SourceFormatError) as err:
        IdentityFolderSource(tree, "vgg", landmarks_csv=bad)  # 4 numbers where 10 are needed
    assert err.value.reason == "bad_csv"
    with pytest.raises(SourceFormatError) as err:
        IdentityFolderSource(tree, "web", layout="webface", bbox_csv=bad)
    assert err.value.reason == "bad_layout"


def test_unknown_keys_raise_key_errors(tree: Path) -> None:
    source = IdentityFolderSource(tree, "vgg")
    with pytest.raises(KeyError):
        source.read("vgg/n000001/nope")
    with pytest.raises(KeyError):
        source.read("other/n000001/0003_01")


def test_missing_root_and_bad_layout(tmp_path: Path) -> None:
    with pytest.raises(SourceFormatError) as err:
        IdentityFolderSource(tmp_path / "absent", "x")
    assert err.value.reason == "not_a_directory"
    with pytest.raises(ValueError, match="vggface2"):
        IdentityFolderSource(tmp_path, "x", layout="casia")  # type: ignore[arg-type]


def test_webface_layout_and_open_source(tree: Path) -> None:
    direct = IdentityFolderSource(tree, "web", layout="webface")
    built = open_source({"type": "folder", "path": str(tree), "name": "web", "layout": "webface"})
    assert isinstance(built, IdentityFolderSource)
    assert built.keys() == direct.keys()
    assert built.identities() == direct.identities()
    with pytest.raises(ValueError, match="folder, recordio"):
        open_source({"type": "tfrecord", "path": str(tree), "name": "x"})
    with pytest.raises(ValueError, match="missing"):
        open_source({"type": "folder", "path": str(tree)})
    with pytest.raises(ValueError, match="unknown keys"):
        open_source({"type": "folder", "path": str(tree), "name": "x", "channel_order": "bgr"})


class _DropDacOverride:
    """Make file permissions apply to this thread even as root: clear the effective CAP_DAC_OVERRIDE and
    CAP_DAC_READ_SEARCH (Linux capabilities are per thread) and restore them on exit. As another user,
    permissions apply already and nothing changes."""

    _VERSION_3 = 0x20080522
    _DAC_BITS = (1 << 1) | (1 << 2)  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH

    class _Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class _Data(ctypes.Structure):
        _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]

    def __init__(self) -> None:
        self._libc = ctypes.CDLL(None, use_errno=True)
        self._saved: int | None = None

    def _set_effective(self, change: Callable[[int], int]) -> int:
        header, data = self._Header(self._VERSION_3, 0), (self._Data * 2)()
        if self._libc.capget(ctypes.byref(header), data) != 0:
            pytest.fail(f"capget failed (errno {ctypes.get_errno()}): cannot make a file unreadable as root")
        before = data[0].effective
        data[0].effective = change(before)
        if self._libc.capset(ctypes.byref(header), data) != 0:
            pytest.fail(f"capset failed (errno {ctypes.get_errno()}): cannot make a file unreadable as root")
        return before

    def __enter__(self) -> None:
        if os.geteuid() == 0:
            self._saved = self._set_effective(lambda caps: caps & ~self._DAC_BITS)

    def __exit__(self, *exc: object) -> None:
        if self._saved is not None:
            saved, self._saved = self._saved, None
            self._set_effective(lambda _: saved)


def _encode(img: Image.Image, fmt: str, **params: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **params)
    return buf.getvalue()


def _pil_bgr(data: bytes, *, upright: bool = False) -> np.ndarray:
    img = Image.open(io.BytesIO(data))
    return np.asarray((ImageOps.exif_transpose(img) if upright else img).convert("RGB"))[:, :, ::-1]


def _cv_bgr(data: bytes) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)


#: what happens to a file: rejected by the source, read but refused by the decoder, or read and decoded
Rejected = tuple[Literal["rejected"], str]
Undecodable = tuple[Literal["decode_error"], str]
Decoded = tuple[Literal["pixels"], np.ndarray, int]


def _zoo(root: Path, assets: Path, bomb: bytes) -> dict[str, Rejected | Undecodable | Decoded]:
    """Identity folders holding every kind of file a user's photo folder can hold; relative path -> its fate."""
    photo = Image.open(assets / "faces" / "deepface" / "img1.jpg").convert("RGB")
    photo.thumbnail((320, 320))
    bgr = np.asarray(photo)[:, :, ::-1]
    grey = np.asarray(photo.convert("L"))
    jpeg = _encode(photo, "JPEG", quality=95)
    flipped = photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display": stored turned counter-clockwise
    rotated = _encode(photo.rotate(90, expand=True), "JPEG", quality=95, exif=exif)
    cmyk = _encode(photo.convert("CMYK"), "JPEG", quality=95)
    progressive = _encode(photo, "JPEG", quality=90, progressive=True)
    gif = _encode(photo, "GIF", save_all=True, append_images=[flipped], duration=100, loop=0)
    ok, sixteen_bit = cv2.imencode(".png", bgr.astype(np.uint16) * 257)
    assert ok
    other = root.parent / "elsewhere" / "img2.jpg"
    other.parent.mkdir(parents=True)
    shutil.copyfile(assets / "faces" / "deepface" / "img2.jpg", other)
    heic_junk = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(200)
    latin1_name, latin1_note = os.fsdecode(b"caf\xe9.jpg"), os.fsdecode(b"r\xe9sum\xe9.txt")  # not UTF-8
    one_pixel = np.array([[[30, 20, 10]]], np.uint8)

    fates: dict[str, Rejected | Undecodable | Decoded] = {}
    files: dict[str, tuple[bytes, Rejected | Undecodable | Decoded]] = {
        "n000001/zero.jpg": (b"", ("rejected", "empty_file")),
        "n000001/truncated.jpg": (jpeg[: len(jpeg) // 2], ("decode_error", "truncated_image")),
        "n000001/text.jpg": (b"a note, not a photo\n" * 20, ("rejected", "not_an_image")),
        f"n000001/{latin1_note}": (b"a note, not a photo\n", ("rejected", "not_an_image")),
        "n000001/jpeg_named.png": (jpeg, ("pixels", _cv_bgr(jpeg), 0)),
        "n000001/cmyk.jpg": (cmyk, ("pixels", _pil_bgr(cmyk), 0)),
        "n000001/sixteen_bit.png": (sixteen_bit.tobytes(), ("pixels", bgr, 0)),
        "n000001/progressive.jpg": (progressive, ("pixels", _cv_bgr(progressive), 0)),
        "n000001/exif_rotated.jpg": (rotated, ("pixels", _pil_bgr(rotated, upright=True), 0)),
        "n000001/face.pgm": (_encode(photo.convert("L"), "PPM"), ("pixels", np.dstack([grey] * 3), 0)),
        "n000001/face.ppm": (_encode(photo, "PPM"), ("pixels", bgr, 0)),
        "n000001/animated.gif": (gif, ("pixels", _pil_bgr(gif), 0)),  # PIL opens at the first frame
        "n000001/pages.tiff": (_encode(photo, "TIFF", save_all=True, append_images=[flipped]), ("pixels", bgr, 0)),
        "n000001/face.bmp": (_encode(photo, "BMP"), ("pixels", bgr, 0)),
        "n000001/face.webp": (_encode(photo, "WEBP", lossless=True), ("pixels", bgr, 0)),
        "n000001/damaged.heic": (heic_junk, ("decode_error", "corrupt_image")),
        "n000001/exported.heic": (jpeg, ("pixels", _cv_bgr(jpeg), 0)),  # a JPEG under a HEIC name
        "n000001/icon.jpg": (_encode(photo.resize((64, 64)), "ICO"), ("rejected", "unsupported_image")),
        "n000001/bomb.png": (bomb, ("decode_error", "too_large")),
        "n000001/one_pixel.png": (_encode(Image.new("RGB", (1, 1), (10, 20, 30)), "PNG"), ("pixels", one_pixel, 0)),
        "n000001/locked.jpg": (jpeg, ("rejected", "unreadable")),
        "n000001/.DS_Store": (b"\x00\x00\x00\x01Bud1" + bytes(100), ("rejected", "hidden_file")),
        "n000001/._0001.jpg": (b"\x00\x05\x16\x07" + bytes(100), ("rejected", "hidden_file")),  # AppleDouble
        "n000001/2019/holiday.jpg": (jpeg, ("rejected", "nested_file")),
        "n000001/2019/deeper/again.jpg": (jpeg, ("rejected", "nested_file")),
        "Zoë Ångström/фото 1.jpg": (jpeg, ("pixels", _cv_bgr(jpeg), 0)),
        f"Zoë Ångström/{latin1_name}": (progressive, ("pixels", _cv_bgr(progressive), 0)),
        "n000010/.DS_Store": (b"\x00\x00\x00\x01Bud1", ("rejected", "hidden_file")),  # only hidden: no identity
        ".thumbnails/n000001/small.jpg": (jpeg, ("rejected", "hidden_file")),
        "identities.csv": (b"file,identity\nfoto.jpg,1\n", ("rejected", "not_in_identity_folder")),
        "stray.jpg": (jpeg, ("rejected", "not_in_identity_folder")),
    }
    if AVIF_DECODER:
        avif = _encode(photo, "AVIF", quality=90)
        files["n000001/photo.avif"] = (avif, ("pixels", _pil_bgr(avif), 0))
    else:
        files["n000001/photo.avif"] = (heic_junk.replace(b"heic", b"avif"), ("rejected", "unsupported_image"))
    for rel, (data, fate) in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
        fates[rel] = fate
    (root / "n000001" / "locked.jpg").chmod(0)
    (root / "n000009").mkdir()  # empty: no identity

    links = {
        "n000001/broken.jpg": (root.parent / "missing.jpg", ("rejected", "broken_symlink")),
        "n000001/loop.jpg": (root / "n000001" / "loop.jpg", ("rejected", "broken_symlink")),
        "n000001/link.jpg": (other, ("pixels", _cv_bgr(other.read_bytes()), 0)),
        "n000001/folder_link.jpg": (other.parent, ("rejected", "not_a_regular_file")),
    }
    for rel, (target, fate) in links.items():
        (root / rel).symlink_to(target)
        fates[rel] = fate
    os.mkfifo(root / "n000001" / "fifo.jpg")
    fates["n000001/fifo.jpg"] = ("rejected", "not_a_regular_file")
    cwd = os.getcwd()
    os.chdir(root / "n000001")  # a short relative path: socket paths are limited to ~100 bytes
    try:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.bind("socket.jpg")
    finally:
        os.chdir(cwd)
    fates["n000001/socket.jpg"] = ("rejected", "not_a_regular_file")
    try:
        os.mknod(root / "n000001" / "device.jpg", 0o600 | stat.S_IFCHR, os.makedev(1, 3))  # like /dev/null
        fates["n000001/device.jpg"] = ("rejected", "not_a_regular_file")
    except PermissionError:
        pass  # no CAP_MKNOD here: the FIFO and the socket stand for the other special files
    return fates


@pytest.mark.timeout(60)  # a FIFO that is opened would block forever
def test_every_file_is_read_or_rejected_with_its_reason(tmp_path: Path, assets: Path, png_bomb: bytes) -> None:
    """Files on disk == records read + rejections; each rejection has its reason; every record decodes to
    the pixels a reference decoder (OpenCV or PIL, EXIF orientation applied) gives, or is refused by it."""
    root = tmp_path / "faces"
    fates = _zoo(root, assets, png_bomb)
    assert len(fates) >= 37
    with _DropDacOverride():
        source = IdentityFolderSource(root, "zoo")
        records, rejected = _account(source)

    assert _files_on_disk(root) == len(fates) == len(source.keys()) == len(records) + len(rejected)
    assert source.identities() == ["Zoë Ångström", "n000001"]  # n000009 (empty), n000010 (hidden only) left out
    assert all(key.encode() for key in source.keys()), "every key is valid UTF-8"
    assert all(e.detail.encode() for e in rejected.values()), "every detail is valid UTF-8"
    assert {"zoo/identities.csv", "zoo/n000001/2019/holiday.jpg", "zoo/Zoë Ångström/caf\\xe9"} <= set(source.keys())
    for key in source.keys():
        rel = source.path_of(key).relative_to(root).as_posix()
        fate = fates[rel]
        if fate[0] == "rejected":
            assert key in rejected, f"{rel} was read, expected {fate[1]}"
            assert (rejected[key].reason, str(root) in rejected[key].detail) == (fate[1], True), rel
            continue
        assert key in records, f"{rel} rejected as {rejected[key]}"
        record = records[key]
        assert record.identity == (0 if rel.startswith("Zoë") else 1)
        assert record.data == (root / rel).read_bytes()
        if fate[0] == "decode_error":
            with pytest.raises(ImageError) as info:
                decode_image(record.data)
            assert info.value.reason == fate[1], rel
        else:
            pixels = decode_image(record.data)
            assert pixels.shape == fate[1].shape, rel
            assert np.abs(pixels.astype(np.int16) - fate[1]).max() <= fate[2], rel
    upright = decode_image(records["zoo/n000001/exif_rotated"].data)
    assert upright.shape == decode_image(records["zoo/n000001/jpeg_named"].data).shape


def test_unreadable_identity_folder_is_one_rejection(tmp_path: Path, assets: Path) -> None:
    root = tmp_path / "faces"
    for identity in ("n000001", "n000002"):
        (root / identity).mkdir(parents=True)
        shutil.copyfile(assets / "faces" / "deepface" / PHOTOS[0], root / identity / "0001_01.jpg")
    (root / "n000001").chmod(0)
    with _DropDacOverride():
        source = IdentityFolderSource(root, "vgg")
        records, rejected = _account(source)
    assert source.identities() == ["n000002"]
    assert list(records) == ["vgg/n000002/0001_01"] and records["vgg/n000002/0001_01"].identity == 0
    assert {k: e.reason for k, e in rejected.items()} == {"vgg/n000001": "unreadable_folder"}


def test_loose_csv_under_the_root_is_a_metadata_file(tree: Path) -> None:
    bbox_csv = tree / "loose_bb_train.csv"
    bbox_csv.write_text("NAME_ID,X,Y,W,H\nn000002/0001_01,161,140,224,324\n")
    source = IdentityFolderSource(tree, "vgg", bbox_csv=bbox_csv)
    with pytest.raises(SourceError) as err:
        source.read("vgg/loose_bb_train.csv")
    assert err.value.reason == "metadata_file" and "bbox" in err.value.detail
    assert source.read("vgg/n000002/0001_01").meta["loose_bbox"] == [161.0, 140.0, 385.0, 464.0]
