"""RecordIO layouts: files written here, from MXNet's documented format alone, in both layouts.

The writer below follows the documentation of ``mxnet.recordio`` (``IRHeader`` = ``IfQQ`` flag, label, id, id2;
``pack`` stores a label array as ``flag`` float32s after the header, header label 0) and dmlc-core's record
framing (magic, a length word whose top 3 bits are the continuation flag, 4-byte padding, a payload split
wherever the magic sits at an aligned offset), plus ``MXIndexedRecordIO``'s ``.idx`` (``key\\toffset`` lines
in write order). It shares no code with facekit.
"""

from __future__ import annotations

import shutil
import struct
from collections.abc import Sequence
from pathlib import Path

import pytest

from facekit.cli import main
from facekit.data.sources import SourceFormatError, open_source, recordio_format
from facekit.data.sources.base import SourceError
from facekit.data.sources.recordio import RecordIOSource

MAGIC = 0xCED7230A
Label = float | Sequence[float]


def pack(label: Label, image: bytes, record_id: int) -> bytes:
    """``mxnet.recordio.pack``: a number is stored in the header (flag 0), a sequence after it (flag = length)."""
    if isinstance(label, int | float):
        return struct.pack("<IfQQ", 0, label, record_id, 0) + image
    return struct.pack("<IfQQ", len(label), 0.0, record_id, 0) + struct.pack(f"<{len(label)}f", *label) + image


def frame(payload: bytes) -> bytes:
    """dmlc-core's ``RecordIOWriter::WriteRecord``: split at every aligned magic word, pad each part to 4 bytes."""
    words = len(payload) // 4
    cuts = [i * 4 for i in range(words) if struct.unpack_from("<I", payload, i * 4)[0] == MAGIC]
    starts, ends = [0] + [c + 4 for c in cuts], [*cuts, len(payload)]
    out = b""
    for n, (lo, hi) in enumerate(zip(starts, ends, strict=True)):
        last = n == len(cuts)
        cflag = (0 if last else 1) if n == 0 else (3 if last else 2)
        part = payload[lo:hi]
        out += struct.pack("<II", MAGIC, cflag << 29 | len(part)) + part + bytes(-len(part) % 4)
    return out


def write_indexed(rec: Path, records: list[tuple[int, bytes]], property_text: str | None = None) -> None:
    """``MXIndexedRecordIO.write_idx`` for each ``(key, payload)`` in write order; ``property`` when given."""
    blob, idx = b"", ""
    for key, payload in records:
        idx += f"{key}\t{len(blob)}\n"
        blob += frame(payload)
    rec.write_bytes(blob)
    rec.with_suffix(".idx").write_text(idx)
    if property_text is not None:
        (rec.parent / "property").write_text(property_text)


def read_all(rec: Path) -> dict[int, tuple[int, tuple[float, ...], bytes]]:
    """Every ``.idx`` record as ``key -> (flag, labels, image)``, parsed with struct from the documented format."""
    blob, out = rec.read_bytes(), {}
    for line in rec.with_suffix(".idx").read_text().splitlines():
        key, pos = map(int, line.split("\t"))
        parts = []
        while True:
            magic, word = struct.unpack_from("<II", blob, pos)
            assert magic == MAGIC
            parts.append(blob[pos + 8 : pos + 8 + (word & (2**29 - 1))])
            pos += 8 + len(parts[-1]) + (-len(parts[-1]) % 4)
            if word >> 29 in (0, 3):
                break
        payload = struct.pack("<I", MAGIC).join(parts)
        flag, label, _, _ = struct.unpack_from("<IfQQ", payload)
        labels = struct.unpack_from(f"<{flag}f", payload, 24) if flag else (label,)
        out[key] = (flag, labels, payload[24 + 4 * flag :])
    return out


@pytest.fixture(scope="module")
def photos(assets: Path) -> list[bytes]:
    """Twelve real JPEG files (the smallest deepface photos)."""
    files = sorted((assets / "faces" / "deepface").glob("img*.jpg"), key=lambda p: (p.stat().st_size, p.name))
    return [p.read_bytes() for p in files[:12]]


# --- plain im2rec -------------------------------------------------------------------------------------------

CLASSES = [4, 0, 1, 2, 3, 0, 1, 2, 3, 4, 0, 1]
SHUFFLED = [5, 0, 11, 3, 8, 1, 10, 6, 2, 9, 4, 7]  # im2rec --shuffle: .lst keys in a random write order


def with_aligned_magic(image: bytes) -> bytes:
    """``image`` with the magic inserted 40 bytes in: 4-aligned in any payload (the IRHeader and labels are)."""
    return image[:40] + struct.pack("<I", MAGIC) + image[40:]


@pytest.mark.parametrize("label_form", ["array", "scalar"])
def test_plain_im2rec_reads_every_record_with_its_label(tmp_path: Path, photos: list[bytes], label_form: str) -> None:
    """The issue's file: 12 records, record 0's label array [4, 9] looks like an insightface header."""
    images = [*photos[:6], with_aligned_magic(photos[6]), *photos[7:]]
    labels: list[Label] = [[c, 9.0 - k] if label_form == "array" else float(c) for k, c in enumerate(CLASSES)]
    assert labels[0] == ([4, 9.0] if label_form == "array" else 4.0)
    rec = tmp_path / "train.rec"
    write_indexed(rec, [(k, pack(labels[k], images[k], k)) for k in SHUFFLED])
    first_part = 24 + (8 if label_form == "array" else 0) + 40
    assert struct.pack("<II", MAGIC, 1 << 29 | first_part) in rec.read_bytes()  # record 6 is split in two parts

    source = RecordIOSource(rec, "im2rec")
    assert source.header_range is None
    assert source.keys() == [f"im2rec/{k:09d}" for k in range(12)]
    got = [source.read(key) for key in source.keys()]
    assert [r.identity for r in got] == CLASSES
    assert [r.data for r in got] == images
    assert source.identities() == ["0", "1", "2", "3", "4"]  # largest class + 1 without a property file


def test_plain_im2rec_without_record_0_and_with_property(tmp_path: Path, photos: list[bytes]) -> None:
    rec = tmp_path / "train.rec"
    write_indexed(rec, [(k + 1, pack([CLASSES[k], 0.5], photos[k], k + 1)) for k in range(12)], "7,112,112\n")
    source = RecordIOSource(rec, "p")
    assert source.header_range is None and len(source) == 12 and source.keys()[0] == "p/000000001"
    assert [source.read(k).identity for k in source.keys()] == CLASSES
    assert len(source.identities()) == 7  # property's table


# --- insightface -------------------------------------------------------------------------------------------

IDENTITY_OF_IMAGE = [0, 0, 0, 1, 1, 2, 3, 3, 3, 3]  # records 1..10
RANGES = [(1, 4), (4, 6), (6, 7), (7, 11)]  # identity records 11..14


def insightface_records(
    photos: list[bytes],
    *,
    header: Label = (11.0, 15.0),
    ranges: Sequence[Sequence[float]] = RANGES,
    image_labels: Sequence[Label] | None = None,
) -> dict[int, bytes]:
    """insightface's ``face2rec2`` layout: images labelled ``[identity, aligned]``, record 0 ``[s, e]``, ranges."""
    image_labels = image_labels or [[i, 1.0] for i in IDENTITY_OF_IMAGE]
    records = {k + 1: pack(image_labels[k], photos[k], k + 1) for k in range(len(image_labels))}
    records[0] = pack(header, b"", 0)
    for n, bounds in enumerate(ranges):
        records[len(image_labels) + 1 + n] = pack(list(bounds), b"", len(image_labels) + 1 + n)
    return records


def write_face2rec2(rec: Path, records: dict[int, bytes], property_text: str | None = None) -> None:
    """Write order of ``face2rec2``: the images, then record 0, then the identity records."""
    order = sorted(records, key=lambda k: (0 if 1 <= k <= 10 else 1 if k == 0 else 2, k))
    write_indexed(rec, [(k, records[k]) for k in order], property_text)


def test_insightface_layout_gives_its_images_and_identity_table(tmp_path: Path, photos: list[bytes]) -> None:
    rec = tmp_path / "train.rec"
    write_face2rec2(rec, insightface_records(photos))
    assert int(rec.with_suffix(".idx").read_text().splitlines()[10].split("\t")[0]) == 0  # record 0 after the images
    source = open_source({"type": "recordio", "path": str(rec), "name": "ms1m"})
    assert isinstance(source, RecordIOSource)
    assert source.header_range == (11, 15)
    assert source.keys() == [f"ms1m/{k:09d}" for k in range(1, 11)]
    got = [source.read(key) for key in source.keys()]
    assert [r.identity for r in got] == IDENTITY_OF_IMAGE
    assert [r.data for r in got] == photos[:10]
    assert source.identities() == ["0", "1", "2", "3"]
    with pytest.raises(KeyError):
        source.read("ms1m/000000011")  # an identity record is not an image

    (tmp_path / "property").write_text("6,112,112\n")  # a larger table from property is kept
    assert len(RecordIOSource(rec, "ms1m").identities()) == 6


def test_scan_in_windows_smaller_than_a_record(
    tmp_path: Path, photos: list[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The open-time header scan reads the file window by window; records straddle windows here."""
    monkeypatch.setattr(recordio_format, "_SCAN_WINDOW", 4096)
    rec = tmp_path / "train.rec"
    write_face2rec2(rec, insightface_records(photos))
    source = RecordIOSource(rec, "w")
    assert [source.read(k).identity for k in source.keys()] == IDENTITY_OF_IMAGE
    write_face2rec2(rec, insightface_records(photos, ranges=[(1, 3), (4, 6), (6, 7), (7, 11)]))
    assert "image records in no identity range: record 3" in layout_error(rec).detail
    write_indexed(rec, [(k, pack([CLASSES[k], 9.0], photos[k], k)) for k in SHUFFLED])
    assert [RecordIOSource(rec, "w").read(f"w/{k:09d}").identity for k in range(12)] == CLASSES


# --- files that fit neither layout -------------------------------------------------------------------------


def layout_error(rec: Path) -> SourceFormatError:
    with pytest.raises(SourceFormatError) as err:
        RecordIOSource(rec, "x")
    message = str(err.value)
    assert "insightface layout" in message and "plain im2rec layout" in message and "\n" not in message
    assert str(rec) in message
    return err.value


def drop(records: dict[int, bytes], *keys: int) -> dict[int, bytes]:
    return {k: v for k, v in records.items() if k not in keys}


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            {"ranges": [(1, 4), (4, 6), (6, 7), (7, 13)]},
            "identity ranges outside the image records 1..10: record 14 [7, 13)",
        ),
        (
            {"header": (11.0, 17.0)},
            "identity records missing from the .idx (record 0 says 11..16): record 15, record 16",
        ),
        (
            {"image_labels": [[i, 1.0] for i in IDENTITY_OF_IMAGE[:-1]] + [[4.0, 1.0]]},
            "labels outside the identity table [0, 4) (4 identity records): record 10 (label 4)",
        ),
        (
            {"image_labels": [[i, 1.0] for i in IDENTITY_OF_IMAGE[:-1]] + [[2.5, 1.0]]},
            "image records whose label is not a class index: record 10 (label 2.5)",
        ),
        (
            {"ranges": [(1, 3), (4, 6), (6, 7), (7, 11)]},
            "image records in no identity range: record 3",
        ),
        (
            {"ranges": [(1, 4), (3, 6), (6, 7), (7, 11)]},
            "image records in more than one identity range: record 3",
        ),
        (
            {"ranges": [(1, 4), (4, 6), (6, 7), (7, 11, 0)]},
            "identity records that are not an [a, b) range: record 14 (flag 3, labels [7, 11], no image)",
        ),
    ],
    ids=["range_past_end", "table_past_end", "label_outside", "label_not_class", "gap", "overlap", "odd_range"],
)
def test_inconsistent_insightface_file_is_one_error(
    tmp_path: Path, photos: list[bytes], change: dict, expected: str
) -> None:
    rec = tmp_path / "train.rec"
    write_face2rec2(rec, insightface_records(photos, **change))
    err = layout_error(rec)
    assert err.reason == "bad_layout"
    assert expected in err.detail, err.detail
    assert "record 0 holds no image (a header: identity records" in err.detail  # why not plain


def test_unreachable_or_unlisted_records_are_errors(tmp_path: Path, photos: list[bytes]) -> None:
    rec = tmp_path / "train.rec"
    records = insightface_records(photos)
    write_face2rec2(rec, {**records, 15: pack([1.0, 1.0], photos[10], 15)})  # an image after the table
    assert "records after the identity table (end 15) that nothing reaches: record 15" in layout_error(rec).detail
    write_face2rec2(rec, drop(records, 4))
    assert "image records missing from the .idx: record 4" in layout_error(rec).detail
    write_face2rec2(rec, {**records, 12: pack([4.0, 6.0], photos[11], 12)})  # an identity record with an image
    assert "record 12 (flag 2, labels [4, 6], an image)" in layout_error(rec).detail


def test_label_outside_property_table_is_an_error(tmp_path: Path, photos: list[bytes]) -> None:
    rec = tmp_path / "train.rec"
    write_face2rec2(rec, insightface_records(photos), "3,112,112\n")
    detail = layout_error(rec).detail
    assert "labels outside the identity table [0, 3) (property: 3 identities): record 7 (label 3)" in detail
    assert "record 9 (label 3) and 1 more" in detail  # records 7..10 hold identity 3


@pytest.mark.parametrize(
    ("header", "shape"),
    [
        ((5.0,), "record 0 (flag 1, labels [5]) is not [first identity record, end]"),
        ((11.0, 3.0), "record 0 (flag 2, labels [11, 3]) is not [first identity record, end]"),
        ((0.0, 4.0), "record 0 (flag 2, labels [0, 4]) is not [first identity record, end]"),
        (3.0, "record 0 (flag 0, labels [3]) is not [first identity record, end]"),
        ((11.0, 15.0, 1.0), "record 0 (flag 3, labels [11, 15, 1]) is not [first identity record, end]"),
    ],
)
def test_record_0_that_fits_neither_layout(tmp_path: Path, photos: list[bytes], header: Label, shape: str) -> None:
    rec = tmp_path / "train.rec"
    write_face2rec2(rec, insightface_records(photos, header=header))
    err = layout_error(rec)
    assert err.reason == "bad_header"
    assert shape in err.detail and "record 0 holds no image" in err.detail


def test_plain_file_with_a_record_that_is_not_an_image(tmp_path: Path, photos: list[bytes]) -> None:
    rec = tmp_path / "train.rec"
    records = [(k, pack([CLASSES[k], 9.0], photos[k], k)) for k in range(12)]
    write_indexed(rec, [*records[:7], (7, pack([2.0, 9.0], b"", 7)), *records[8:]])
    err = layout_error(rec)
    assert err.reason == "bad_layout"
    assert "records that hold no image: record 7" in err.detail
    assert "record 0 holds an image (" in err.detail and "labels [4, 9]), not a header" in err.detail

    write_indexed(rec, [*records[:3], (3, pack([-1.0], photos[3], 3)), *records[4:]])
    assert "records whose label is not a class index: record 3 (label -1)" in layout_error(rec).detail
    write_indexed(rec, records, "4,112,112\n")
    assert "labels outside the identity table [0, 4) (property): record 0 (label 4), record 9 (label 4)" in (
        layout_error(rec).detail
    )


def test_record_that_cannot_be_read_is_a_rejection_not_a_layout_error(tmp_path: Path, photos: list[bytes]) -> None:
    rec = tmp_path / "train.rec"
    write_face2rec2(rec, insightface_records(photos))
    offset = {
        int(k): int(o) for k, o in (line.split("\t") for line in rec.with_suffix(".idx").read_text().splitlines())
    }
    blob = bytearray(rec.read_bytes())
    blob[offset[5] : offset[5] + 4] = b"JUNK"
    rec.write_bytes(bytes(blob))
    source = RecordIOSource(rec, "x")
    assert len(source) == 10
    with pytest.raises(SourceError, match="magic") as err:
        source.read("x/000000005")
    assert err.value.reason == "bad_record"

    blob[offset[12] : offset[12] + 4] = b"JUNK"  # an identity record: the table cannot be checked
    rec.write_bytes(bytes(blob))
    assert "identity records that cannot be read: record 12" in layout_error(rec).detail


# --- facekit's own writer ----------------------------------------------------------------------------------


@pytest.mark.parametrize("plain", [False, True])
def test_to_rec_output_is_the_documented_format(
    tmp_path: Path, assets: Path, capsys: pytest.CaptureFixture[str], plain: bool
) -> None:
    folder = tmp_path / "faces"
    people = {"bob": ["img2.jpg", "img1.jpg"], "alice": ["img3.jpg"], "carol": ["img5.jpg", "img4.jpg"]}
    for person, files in people.items():
        (folder / person).mkdir(parents=True)
        for name in files:
            shutil.copyfile(assets / "faces" / "deepface" / name, folder / person / name)
    rec = tmp_path / "out" / "train.rec"
    assert main(["data", "to-rec", str(folder), str(rec), "--layout", "webface", *(["--plain"] if plain else [])]) == 0
    assert "written 5, rejected 0" in capsys.readouterr().out

    expected = [  # identities sorted by name, photos by name inside each
        (label, (assets / "faces" / "deepface" / name).read_bytes())
        for label, person in enumerate(sorted(people))
        for name in sorted(people[person])
    ]
    found = read_all(rec)
    images = [(int(labels[0]), image) for key, (_, labels, image) in sorted(found.items()) if image]
    assert images == expected
    if not plain:
        assert found[0][:2] == (2, (6.0, 9.0))
        assert [found[k][1] for k in (6, 7, 8)] == [(1.0, 2.0), (2.0, 4.0), (4.0, 6.0)]
    source = RecordIOSource(rec, "r", channel_order="rgb")
    assert source.header_range == (None if plain else (6, 9))
    assert [(r.identity, r.data) for r in map(source.read, source.keys())] == expected
