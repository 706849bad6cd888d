"""LaionTarSource: img2dataset-style tars read safely, by key, with every odd member accounted for."""

from __future__ import annotations

import io
import json
import pickle
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from facekit.data.sources import SourceFormatError, open_source
from facekit.data.sources.base import SourceError
from facekit.data.sources.laion import LaionRow, LaionTarSource, read_laion_parquet


def _member(
    name: str, data: bytes = b"", kind: bytes = tarfile.REGTYPE, link: str = ""
) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.size = kind, link, len(data) if kind == tarfile.REGTYPE else 0
    return info, data


def _write_tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes]]) -> Path:
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if info.isfile() else None)
    return path


def _sample(key: str, image: bytes, **meta: object) -> list[tuple[tarfile.TarInfo, bytes]]:
    return [_member(f"{key}.jpg", image), _member(f"{key}.json", json.dumps({"key": key, **meta}).encode())]


@pytest.fixture
def shards(tmp_path: Path) -> Path:
    """Two shards: a clean one and one with every kind of problem member."""
    folder = tmp_path / "laion"
    folder.mkdir()
    _write_tar(
        folder / "00000.tar",
        [
            *_sample("000000000", b"\xff\xd8jpeg-0", url="http://x/0.jpg", caption="zero", face_boxes=[[1, 2, 3, 4]]),
            _member("000000000.txt", b"zero"),
            *_sample("000000001", b"\xff\xd8jpeg-1", url="http://x/1.jpg", caption="one"),
        ],
    )
    _write_tar(
        folder / "00001.tar",
        [
            _member("000010000.jpg", b"\xff\xd8no-json"),
            _member("000010000.txt", b"caption from txt"),
            _member("000010001.json", json.dumps({"status": "failed_to_download", "error_message": "404"}).encode()),
            _member("../000010002.jpg", b"escape"),
            _member("/etc/000010003.jpg", b"absolute"),
            _member("000010004.jpg", kind=tarfile.SYMTYPE, link="/etc/passwd"),
            _member("000010005.jpg", kind=tarfile.LNKTYPE, link="000010000.jpg"),
            _member("000010006.jpg", kind=tarfile.CHRTYPE),
            _member("000010007.jpg", kind=tarfile.FIFOTYPE),
            _member("000010008.jpg", b"\xff\xd8" + b"x" * 200),
            _member("000010009.jpg", b"\xff\xd8a"),
            _member("000010009.png", b"\x89PNGa"),
            _member("subdir", kind=tarfile.DIRTYPE),
            _member("000010010.bin", b"ignored"),
        ],
    )
    return folder


def test_keys_records_and_meta(shards: Path) -> None:
    source = LaionTarSource(shards, name="lf", max_member_bytes=100)
    assert source.identities() == []
    assert source.keys() == sorted(
        [
            "lf/00000/000000000",
            "lf/00000/000000001",
            "lf/00001/000010000",
            "lf/00001/000010001",
            "lf/00001/unsafe:..%2F000010002.jpg",
            "lf/00001/unsafe:%2Fetc%2F000010003.jpg",
            "lf/00001/unsafe:000010004.jpg",
            "lf/00001/unsafe:000010005.jpg",
            "lf/00001/unsafe:000010006.jpg",
            "lf/00001/unsafe:000010007.jpg",
            "lf/00001/000010008",
            "lf/00001/000010009",
        ]
    )
    first = source.read("lf/00000/000000000")
    assert (first.data, first.identity, first.source) == (b"\xff\xd8jpeg-0", -1, "lf")
    assert first.meta == {"url": "http://x/0.jpg", "caption": "zero", "face_boxes": [[1, 2, 3, 4]]}
    assert source.read("lf/00000/000000001").meta == {"url": "http://x/1.jpg", "caption": "one"}
    no_json = source.read("lf/00001/000010000")
    assert no_json.data == b"\xff\xd8no-json" and no_json.meta == {"caption": "caption from txt"}


def test_unsafe_oversized_and_unpaired_members_fail_with_reasons(shards: Path) -> None:
    source = LaionTarSource(shards, name="lf", max_member_bytes=100)
    outcomes: dict[str, str] = {}
    for key in source.keys():
        try:
            source.read(key)
            outcomes[key] = "ok"
        except SourceError as e:
            outcomes[key] = e.reason
            assert "00001.tar" in e.detail
    assert outcomes == {
        "lf/00000/000000000": "ok",
        "lf/00000/000000001": "ok",
        "lf/00001/000010000": "ok",
        "lf/00001/000010001": "missing_image",
        "lf/00001/unsafe:..%2F000010002.jpg": "unsafe_member",
        "lf/00001/unsafe:%2Fetc%2F000010003.jpg": "unsafe_member",
        "lf/00001/unsafe:000010004.jpg": "unsafe_member",
        "lf/00001/unsafe:000010005.jpg": "unsafe_member",
        "lf/00001/unsafe:000010006.jpg": "unsafe_member",
        "lf/00001/unsafe:000010007.jpg": "unsafe_member",
        "lf/00001/000010008": "too_large",
        "lf/00001/000010009": "duplicate_member",
    }
    assert source.member_problems() == {k: v for k, v in outcomes.items() if v not in ("ok", "missing_image")} | {
        "lf/00001/000010001": "missing_image"
    }
    with pytest.raises(SourceError) as info:
        source.read("lf/00001/000010001")
    assert "failed_to_download" in info.value.detail and "404" in info.value.detail
    with pytest.raises(SourceError) as info:
        source.read("lf/00001/unsafe:000010004.jpg")
    assert "/etc/passwd" in info.value.detail
    assert not (shards.parent / "etc").exists() and not (shards / "000010002.jpg").exists()


def test_truncated_tar_keeps_complete_members(tmp_path: Path) -> None:
    full = _write_tar(tmp_path / "full.tar", [*_sample("a", b"\xff\xd8" * 300), *_sample("b", b"\xff\xd8" * 600)])
    data = full.read_bytes()
    cut = tmp_path / "cut" / "00007.tar"
    cut.parent.mkdir()
    cut.write_bytes(data[: data.index(b"\xff\xd8" * 600) + 500])
    source = LaionTarSource([cut], name="lf")
    assert source.read("lf/00007/a").data == b"\xff\xd8" * 300
    with pytest.raises(SourceError) as info:
        source.read("lf/00007/b")
    assert info.value.reason == "truncated_member"


def test_pickled_source_reads_in_a_new_process_state(shards: Path) -> None:
    source = LaionTarSource(str(shards / "*.tar"), name="lf")
    source.read("lf/00000/000000001")  # opens a handle
    clone = pickle.loads(pickle.dumps(source))
    assert clone._fds == {}
    assert clone.read("lf/00000/000000000").data == source.read("lf/00000/000000000").data
    source.close()


def test_open_source_and_bad_inputs(shards: Path, tmp_path: Path) -> None:
    source = open_source({"type": "laion", "path": str(shards), "name": "lf", "max_member_bytes": 100})
    assert isinstance(source, LaionTarSource) and len(source.keys()) == 12
    with pytest.raises(SourceFormatError) as info:
        LaionTarSource(tmp_path / "nothing-here-*.tar", name="lf")
    assert info.value.reason == "no_tars"
    other = tmp_path / "other"
    other.mkdir()
    _write_tar(other / "00000.tar", _sample("z", b"z"))
    with pytest.raises(SourceFormatError) as info:
        LaionTarSource([shards / "00000.tar", other / "00000.tar"], name="lf")
    assert info.value.reason == "duplicate_tar_stem"
    gz = tmp_path / "gz" / "00000.tar"
    gz.parent.mkdir()
    with tarfile.open(gz, "w:gz") as tar:
        info_, data = _member("a.jpg", b"a")
        tar.addfile(info_, io.BytesIO(data))
    with pytest.raises(SourceFormatError) as info:
        LaionTarSource(gz.parent, name="lf")
    assert info.value.reason == "bad_tar"


def test_read_laion_parquet_finds_columns(tmp_path: Path) -> None:
    path = tmp_path / "meta.parquet"
    pq.write_table(pa.table({"SAMPLE_ID": [1, 2], "URL": ["http://a", None], "TEXT": ["a", "b"]}), path)
    assert read_laion_parquet(path) == [LaionRow("http://a", "a", None), LaionRow(None, "b", None)]
    with pytest.raises(SourceFormatError) as info:
        read_laion_parquet(path, face_boxes_column="boxes")
    assert info.value.reason == "missing_column" and "boxes" in info.value.detail
