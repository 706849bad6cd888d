"""Shared fixtures. The real assets (photos, models, masks) are found through ``FACEKIT_ASSETS``.

A missing asset is a failure, never a skip: every test here runs in CI.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# Tiny models on a 2-core runner: one intra-op thread is many times faster than two competing ones.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def one_torch_thread() -> Iterator[None]:
    """One intra-op thread in every test, whatever an earlier test set (a training loop may change it)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def png_bomb() -> bytes:
    """A valid 1-bit PNG of 30000 × 30000 black pixels: a few KB on disk, ~900 MB once decoded."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    side = 30000
    rows = (b"\0" + bytes((side + 7) // 8)) * side
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


@pytest.fixture(scope="session")
def assets() -> Path:
    """The shared assets folder (``FACEKIT_ASSETS``); fails the test when it is not there."""
    root = os.environ.get("FACEKIT_ASSETS")
    if not root or not (Path(root) / "faces" / "deepface" / "identities.csv").is_file():
        pytest.fail(
            f"FACEKIT_ASSETS must point at the shared assets folder (faces/, models/, masks/, protocols/); got {root!r}"
        )
    return Path(root)


@pytest.fixture(scope="session")
def sample_shards(tmp_path_factory: pytest.TempPathFactory, assets: Path) -> Path:
    """sample → detect_align → pack on the 61 shared photos of 13 people (one shard), once per session."""
    from facekit.config import Params, PathsParams, SampleParams, ShardingParams, SourceParams
    from facekit.data.shards import read_index
    from facekit.stages import detect_align, pack, sample

    root = tmp_path_factory.mktemp("sample")
    os.environ["FACEKIT_ASSETS"] = str(assets)
    raw = root / "raw"
    params = Params(
        sample=SampleParams(out=str(raw)),
        source=SourceParams(path=str(raw), name="t"),
        sharding=ShardingParams(num_shards=1, workers=1),
    )
    # pack reads the aligned faces: no landmarks / masks stages
    paths = PathsParams(
        aligned=str(root / "aligned"),
        masked=str(root / "aligned"),
        shards=str(root / "shards"),
        metrics=str(root / "m"),
        plots=str(root),
    )
    sample.run(params, paths)
    detect_align.run(params, paths, progress=False)
    pack.run(params, paths)
    assert read_index(root / "shards")["count"] >= 60
    return root / "shards"


@pytest.fixture(scope="session")
def deepface_faces(assets: Path) -> list:
    """The 61 deepface photos as ``FaceRecord``s keyed ``deepface/<stem>``: detected (SCRFD) and aligned to
    tight 112 ArcFace crops like detect_align."""
    import csv

    from facekit.config import AlignParams, DetectParams
    from facekit.data.ops.detect_align import align_record
    from facekit.data.record import FaceRecord, RawRecord

    folder = assets / "faces/deepface"
    records = []
    for row in csv.DictReader((folder / "identities.csv").open()):
        key = f"deepface/{Path(row['file']).stem}"
        raw = RawRecord(key, (folder / row["file"]).read_bytes(), int(row["identity_id"]))
        record = align_record(raw, DetectParams(), AlignParams())
        assert isinstance(record, FaceRecord), record
        records.append(record)
    assert len(records) == 61
    return records


@pytest.fixture(scope="session")
def deepface_meshed(deepface_faces: list, assets: Path) -> list:
    """``deepface_faces`` with dense landmarks like the landmarks stage, except ``deepface/img2`` and
    ``deepface/img40``: left without, as the stage leaves faces with ``on_failure="keep"``."""
    import numpy as np

    from facekit.data.images import decode_jpeg_rgb
    from facekit.data.ops.landmarks import DENSE_KEY, FaceMesh, mesh_aligned_face

    mesh = FaceMesh(assets / "models/mediapipe_face_landmark_468.tflite")
    records = []
    for record in deepface_faces:
        if record.key not in ("deepface/img2", "deepface/img40"):
            points = mesh_aligned_face(mesh, decode_jpeg_rgb(record.image), record.landmarks).points
            record = record.replace(extra={DENSE_KEY: points[:, :2].astype(np.float16)})
        records.append(record)
    return records


def _encoded(img: object, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)  # type: ignore[attr-defined]
    return buf.getvalue()


def _unreadable_file(path: Path) -> None:
    """A file at ``path`` that this process cannot read: mode 000, or, for root (whom modes do not stop), a
    link to ``/proc/1/mem``: a regular file whose open fails (another process's memory) or whose first bytes
    do (EIO, when this is process 1), with the same ``stat`` from one process to the next."""
    path.write_bytes(b"\xff\xd8\xff\xe0 a JPEG nobody may read")
    path.chmod(0)
    try:
        path.read_bytes()
    except PermissionError:
        return
    path.unlink()
    path.symlink_to("/proc/1/mem")


@pytest.fixture(scope="session")
def bad_input_folder(
    assets: Path, png_bomb: bytes, tmp_path_factory: pytest.TempPathFactory
) -> Callable[[Path], dict[str, str | None]]:
    """A builder ``(root) -> {key name: expected rejection reason (None = kept)}`` of identity folders ``a``,
    ``b`` and ``c`` (a link to a folder outside ``root``) holding 30 kinds of bad or unusual input; the key
    name is the last part of the record's key (the file stem in an identity folder)."""
    import socket

    import numpy as np
    from PIL import Image

    face_bytes = (assets / "faces/deepface/img1.jpg").read_bytes()
    face = Image.open(io.BytesIO(face_bytes)).convert("RGB")
    face.thumbnail((640, 640))
    rotated_exif, upside_down_exif = Image.Exif(), Image.Exif()
    rotated_exif[0x0112] = 6  # "rotate 90° clockwise to display": the pixels are stored turned counter-clockwise
    upside_down_exif[0x0112] = 3  # "rotate 180°"
    jpeg = {"quality": 92}
    files: dict[str, tuple[bytes, str | None]] = {
        "ok.jpg": (_encoded(face, "JPEG", **jpeg), None),
        "same_content.jpg": (_encoded(face, "JPEG", **jpeg), "duplicate_conflicting_identity"),
        "corrupt.jpg": (face_bytes[:200] + bytes(range(256)) * 40, "corrupt_image"),
        "truncated.jpg": (face_bytes[: len(face_bytes) // 2], "truncated_image"),
        "empty.jpg": (b"", "empty_file"),
        "text.jpg": (b"this is not an image\n" * 10, "not_an_image"),
        "alpha.png": (_encoded(face.convert("RGBA"), "PNG"), None),
        "grey.jpg": (_encoded(face.convert("L"), "JPEG", **jpeg), None),
        "cmyk.jpg": (_encoded(face.convert("CMYK"), "JPEG", **jpeg), None),
        "exif_rotated.jpg": (_encoded(face.rotate(90, expand=True), "JPEG", exif=rotated_exif, **jpeg), None),
        "upside_down.jpg": (_encoded(face.rotate(180), "JPEG", exif=upside_down_exif, **jpeg), None),
        "sixteen_bit.png": (
            _encoded(Image.fromarray(np.asarray(face.convert("L")).astype(np.uint16) * 257), "PNG"),
            None,
        ),
        "bomb.png": (png_bomb, "too_large"),
        "no_face.jpg": (_encoded(Image.new("RGB", (400, 300), (90, 140, 60)), "JPEG"), "no_face"),
        "one_pixel.png": (_encoded(Image.new("RGB", (1, 1)), "PNG"), "too_small"),
        "face.pgm": (_encoded(face.convert("L"), "PPM"), None),
        "group.jpg": ((assets / "faces/group/multiface.jpg").read_bytes(), None),
        "progressive.jpg": (_encoded(face, "JPEG", progressive=True, quality=90), None),
        "animated.gif": (_encoded(face.quantize(64), "GIF"), None),
        "scan.tiff": (_encoded(face, "TIFF"), None),
        "web.webp": (_encoded(face, "WEBP", quality=90), None),
        "jpeg_named.png": (_encoded(face, "JPEG", quality=88), None),
        "visage_\u00e9t\u00e9_\u540d.jpg": (_encoded(face, "JPEG", quality=91), None),
        "layers.psd": (b"8BPS" + bytes(200), "unsupported_image"),
    }
    outside = tmp_path_factory.mktemp("linked_identity")

    def build(root: Path) -> dict[str, str | None]:
        for name, (data, _) in files.items():
            folder = root / ("b" if name.startswith("same") else "a")
            folder.mkdir(parents=True, exist_ok=True)
            (folder / name).write_bytes(data)
        a = root / "a"
        (a / "broken.jpg").symlink_to(root / "missing.jpg")
        os.mkfifo(a / "fifo.jpg")  # never opened: nothing hangs
        cwd = os.getcwd()
        os.chdir(a)  # a relative name: a socket's path must be under 108 bytes
        try:
            with socket.socket(socket.AF_UNIX) as sock:
                sock.bind("socket.jpg")
        finally:
            os.chdir(cwd)
        _unreadable_file(a / "locked.jpg")
        (a / "nested").mkdir()
        (a / "nested" / "inner.jpg").write_bytes(files["ok.jpg"][0])
        (a / "folder_link.jpg").symlink_to(a / "nested")
        (a / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
        (a / os.fsdecode(b"latin1_\xe9.jpg")).write_bytes(_encoded(face, "JPEG", quality=89))
        (root / ".cache").mkdir()
        (root / ".cache" / "thumb.jpg").write_bytes(files["ok.jpg"][0])
        (root / "identities.csv").write_text("file,identity\n")
        (outside / "c").mkdir(exist_ok=True)
        (outside / "c" / "linked.jpg").write_bytes(_encoded(face.transpose(Image.Transpose.FLIP_LEFT_RIGHT), "JPEG"))
        (root / "c").symlink_to(outside / "c", target_is_directory=True)
        expected = {Path(n).stem: reason for n, (_, reason) in files.items()}
        expected |= {"broken": "broken_symlink", "fifo": "not_a_regular_file", "socket": "not_a_regular_file"}
        expected |= {"locked": "unreadable", "inner.jpg": "nested_file", "folder_link": "not_a_regular_file"}
        expected |= {".DS_Store": "hidden_file", "thumb.jpg": "hidden_file", "identities.csv": "not_in_identity_folder"}
        expected |= {"latin1_\\xe9": None, "linked": None}
        return expected

    return build
