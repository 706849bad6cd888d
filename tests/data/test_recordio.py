"""RecordIO: round trips through the writer, and a reader checked against hand-built dmlc-core bytes."""

from __future__ import annotations

import multiprocessing
import pickle
import shutil
import struct
from pathlib import Path

import pytest

from facekit.data.sources import SourceFormatError, open_source
from facekit.data.sources.base import SourceError
from facekit.data.sources.folders import IdentityFolderSource
from facekit.data.sources.recordio import RecordIOSource, source_to_recordio, write_recordio
from facekit.data.sources.recordio_format import encode_record

MAGIC = 0xCED7230A


@pytest.fixture(scope="module")
def photos(assets: Path) -> list[bytes]:
    """Six real JPEG files (the smallest of the deepface photos)."""
    files = sorted((assets / "faces" / "deepface").glob("img*.jpg"), key=lambda p: p.stat().st_size)
    return [p.read_bytes() for p in files[:6]]


def hand_record(payload: bytes, cflag: int = 0) -> bytes:
    """One record part written straight from the documented format."""
    return struct.pack("<II", MAGIC, cflag << 29 | len(payload)) + payload + b"\0" * (-len(payload) % 4)


def hand_payload(labels: list[float], image: bytes, scalar: bool = False) -> bytes:
    if scalar:
        return struct.pack("<IfQQ", 0, labels[0], 7, 0) + image
    return struct.pack("<IfQQ", len(labels), 0.0, 7, 0) + struct.pack(f"<{len(labels)}f", *labels) + image


def write_hand_rec(path: Path, records: dict[int, bytes]) -> None:
    """Write ``records`` (index -> record bytes) in index order, with the .idx beside them."""
    offsets, blob = {}, b""
    for index, record in sorted(records.items()):
        offsets[index] = len(blob)
        blob += record
    path.write_bytes(blob)
    path.with_suffix(".idx").write_text("".join(f"{i}\t{o}\n" for i, o in offsets.items()))


def parse_all_records(path: Path) -> list[tuple[int, tuple[float, ...], bytes]]:
    """Walk the .rec sequentially with struct (independent of the reader): [(flag, labels, image)]."""
    blob, pos, out = path.read_bytes(), 0, []
    while pos < len(blob):
        payload = b""
        while True:
            magic, lrec = struct.unpack_from("<II", blob, pos)
            assert magic == MAGIC
            length = lrec & (2**29 - 1)
            payload += blob[pos + 8 : pos + 8 + length]
            pos += 8 + length + (-length % 4)
            if lrec >> 29 in (0, 3):
                break
            payload += struct.pack("<I", MAGIC)
        flag, label, _, _ = struct.unpack_from("<IfQQ", payload)
        labels = struct.unpack_from(f"<{flag}f", payload, 24) if flag else (label,)
        out.append((flag, labels, payload[24 + 4 * flag :]))
    return out


def test_hand_built_header_layout_is_parsed(tmp_path: Path, photos: list[bytes]) -> None:
    split_image = photos[2][:40] + struct.pack("<I", MAGIC) + photos[2][40:]  # magic 4-aligned in the payload
    split_payload = hand_payload([1.0], split_image, scalar=True)
    cut = 24 + 40
    records = {
        0: hand_record(hand_payload([4.0, 6.0], b"")),  # images 1..3, identities 4..5
        1: hand_record(hand_payload([0.0], photos[0], scalar=True)),
        2: hand_record(hand_payload([1.0, 99.0], photos[1])),  # label array form: identity is the first
        3: hand_record(split_payload[:cut], cflag=1) + hand_record(split_payload[cut + 4 :], cflag=3),
        4: hand_record(hand_payload([1.0, 2.0], b"")),
        5: hand_record(hand_payload([2.0, 4.0], b"")),
    }
    rec = tmp_path / "train.rec"
    write_hand_rec(rec, records)
    source = RecordIOSource(rec, "ms1m")
    assert source.header_range == (4, 6)
    assert source.keys() == ["ms1m/000000001", "ms1m/000000002", "ms1m/000000003"]
    assert source.identities() == ["0", "1"]  # no property file: the header's identity range
    got = [source.read(k) for k in source.keys()]
    assert [r.data for r in got] == [photos[0], photos[1], split_image]
    assert [r.identity for r in got] == [0, 1, 1]
    assert got[0].meta == {"channel_order": "bgr"} and got[0].source == "ms1m"
    with pytest.raises(KeyError):
        source.read("ms1m/000000004")  # an identity record is not an image


def test_hand_built_plain_layout_counts_classes_by_scan(tmp_path: Path, photos: list[bytes]) -> None:
    rec = tmp_path / "train.rec"
    write_hand_rec(rec, {i: hand_record(hand_payload([float(3 * i)], photos[i], scalar=True)) for i in range(3)})
    source = RecordIOSource(rec, "plain", channel_order="rgb")
    assert source.header_range is None
    assert source.keys() == ["plain/000000000", "plain/000000001", "plain/000000002"]
    assert len(source.identities()) == 7  # largest label 6, + 1
    assert source.read("plain/000000002").identity == 6
    assert source.read("plain/000000002").meta["channel_order"] == "rgb"


def test_header_layout_round_trip_groups_by_label(tmp_path: Path, photos: list[bytes]) -> None:
    items = [(2, photos[0]), (0, photos[1]), (2, photos[2]), (1, photos[3]), (0, photos[4])]
    rec = tmp_path / "out" / "train.rec"
    assert write_recordio(rec, items, num_classes=4) == 5
    assert sorted(p.name for p in rec.parent.iterdir()) == ["property", "train.idx", "train.rec"]
    assert (rec.parent / "property").read_text().strip() == "4,112,112"

    source = RecordIOSource(rec, "rt")
    got = [(r.identity, r.data) for r in map(source.read, source.keys())]
    assert got == sorted(items, key=lambda item: item[0])  # stable sort by label: the documented order
    assert source.identities() == ["0", "1", "2", "3"]

    records = parse_all_records(rec)
    assert records[0][:2] == (2, (6.0, 10.0))  # [id_start, id_end]: 5 images, then 4 identity records
    ranges = [r[1] for r in records[6:]]
    assert ranges == [(1.0, 3.0), (3.0, 4.0), (4.0, 6.0), (6.0, 6.0)]  # label 3 has no image
    assert [r[1][0] for r in records[1:6]] == [0.0, 0.0, 1.0, 2.0, 2.0]


def test_plain_layout_round_trip_keeps_input_order(tmp_path: Path, photos: list[bytes]) -> None:
    items = [(5, photos[0]), (1, photos[1]), (5, photos[2])]
    rec = tmp_path / "train.rec"
    assert write_recordio(rec, items, header_layout=False, image_size=224) == 3
    assert (tmp_path / "property").read_text().strip() == "6,224,224"
    source = RecordIOSource(rec, "p", channel_order="rgb")
    assert source.keys() == ["p/000000000", "p/000000001", "p/000000002"]
    assert [(r.identity, r.data) for r in map(source.read, source.keys())] == items
    assert {r.meta["channel_order"] for r in map(source.read, source.keys())} == {"rgb"}
    assert parse_all_records(rec)[1][1] == (1.0,)


def test_payload_with_magic_is_split_like_dmlc(tmp_path: Path, photos: list[bytes]) -> None:
    magic = struct.pack("<I", MAGIC)
    # After the 24-byte IRHeader the magic sits at payload offsets 26 (unaligned: kept), 32 and 88 (split there).
    image = b"\xff\xd8" + magic + b"ab" + magic + photos[0][:52] + magic
    encoded = encode_record(struct.pack("<IfQQ", 0, 3.0, 0, 0) + image)
    heads = [struct.unpack_from("<II", encoded, pos) for pos in (0, 8 + 32, 8 + 32 + 8 + 52)]
    assert [(m, lrec >> 29, lrec & (2**29 - 1)) for m, lrec in heads] == [(MAGIC, 1, 32), (MAGIC, 2, 52), (MAGIC, 3, 0)]
    assert len(encoded) == 3 * 8 + 32 + 52

    rec = tmp_path / "train.rec"
    write_recordio(rec, [(3, image), (0, photos[1])], header_layout=False)
    source = RecordIOSource(rec, "s")
    assert [source.read(k).data for k in source.keys()] == [image, photos[1]]


def test_broken_files_give_their_reason(tmp_path: Path, photos: list[bytes]) -> None:
    rec = tmp_path / "train.rec"  # plain layout: a cut through a header layout's identity table is a layout error
    write_recordio(rec, [(0, photos[3]), (0, photos[0]), (1, photos[1]), (1, photos[2])], header_layout=False)
    offsets = [int(line.split("\t")[1]) for line in rec.with_suffix(".idx").read_text().splitlines()]
    blob = bytearray(rec.read_bytes())
    blob[offsets[2] : offsets[2] + 4] = b"JUNK"  # record 2: bad magic
    rec.write_bytes(bytes(blob[: offsets[3] + 100]))  # record 3 cut short
    source = RecordIOSource(rec, "b")
    assert source.read("b/000000001").data == photos[0]
    for key, reason in [("b/000000002", "bad_record"), ("b/000000003", "truncated_record")]:
        with pytest.raises(SourceError) as err:
            source.read(key)
        assert err.value.reason == reason and str(rec) in err.value.detail

    split = tmp_path / "split" / "train.rec"
    split.parent.mkdir()
    payload = hand_payload([0.0], photos[0], scalar=True)
    write_hand_rec(
        split,
        {
            1: hand_record(payload, cflag=2),  # a middle part where a record must start
            2: hand_record(payload[:40], cflag=1),  # the file ends before the last part
        },
    )
    for key, reason in [("s/000000001", "bad_record"), ("s/000000002", "truncated_record")]:
        with pytest.raises(SourceError) as err:
            RecordIOSource(split, "s").read(key)
        assert err.value.reason == reason

    plain = tmp_path / "plain" / "train.rec"
    write_recordio(plain, [(0, photos[0])], header_layout=False)
    plain.with_suffix(".idx").write_text(f"0\t0\n1\t{plain.stat().st_size + 8}\n")
    with pytest.raises(SourceError) as err:
        RecordIOSource(plain, "p").read("p/000000001")
    assert err.value.reason == "bad_index"


@pytest.mark.parametrize(
    ("idx_text", "reason"),
    [
        (None, "missing_index"),
        ("0\t0\n1\tforty\n", "bad_index_file"),
        ("", "bad_index_file"),
        ("0 0 0\n", "bad_index_file"),
        ("0\t0\n0\t8\n", "bad_index_file"),
    ],
)
def test_bad_index_file_fails_at_construction(
    tmp_path: Path, photos: list[bytes], idx_text: str | None, reason: str
) -> None:
    rec = tmp_path / "train.rec"
    write_recordio(rec, [(0, photos[0])])
    idx = rec.with_suffix(".idx")
    if idx_text is None:
        idx.unlink()
    else:
        idx.write_text(idx_text)
    with pytest.raises(ValueError, match=r"train\.idx") as err:
        RecordIOSource(rec, "x")
    assert err.value.reason == reason


def test_garbled_header_fails_at_construction(tmp_path: Path, photos: list[bytes]) -> None:
    rec = tmp_path / "train.rec"
    write_hand_rec(rec, {0: hand_record(hand_payload([5.0], b"")), 1: hand_record(hand_payload([0.0], photos[0]))})
    with pytest.raises(SourceFormatError, match="record 0") as err:
        RecordIOSource(rec, "x")
    assert err.value.reason == "bad_header"
    rec.write_bytes(b"\0" * 64)  # record 0 without a magic
    with pytest.raises(SourceFormatError) as err:
        RecordIOSource(rec, "x")
    assert err.value.reason == "bad_header"


def test_writer_rejects_bad_items_and_leaves_no_files(tmp_path: Path, photos: list[bytes]) -> None:
    rec = tmp_path / "train.rec"
    with pytest.raises(ValueError, match="item 1"):
        write_recordio(rec, [(0, photos[0]), (-1, photos[1])])
    with pytest.raises(ValueError, match="item 0"):
        write_recordio(rec, [(0, b"")])
    with pytest.raises(ValueError, match="num_classes"):
        write_recordio(rec, [(3, photos[0])], num_classes=2)
    assert list(tmp_path.iterdir()) == []


def read_in_worker(args: tuple[RecordIOSource, str]) -> bytes:
    source, key = args
    return source.read(key).data


def test_source_pickles_and_reads_from_worker_processes(tmp_path: Path, photos: list[bytes]) -> None:
    rec = tmp_path / "train.rec"
    write_recordio(rec, [(i % 2, p) for i, p in enumerate(photos)])
    source = open_source({"type": "recordio", "path": str(rec), "name": "w", "channel_order": "rgb"})
    assert isinstance(source, RecordIOSource)
    expected = [source.read(k).data for k in source.keys()]  # opens the file in this process
    clone = pickle.loads(pickle.dumps(source))
    assert [clone.read(k).data for k in clone.keys()] == expected
    with multiprocessing.get_context("fork").Pool(2) as pool:
        assert pool.map(read_in_worker, [(source, k) for k in source.keys()]) == expected
    source.close()


def test_folder_source_converts_with_rejections(tmp_path: Path, assets: Path) -> None:
    root = tmp_path / "faces"
    for identity, photo in [("alice", "img1.jpg"), ("alice", "img2.jpg"), ("bob", "img3.jpg")]:
        (root / identity).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(assets / "faces" / "deepface" / photo, root / identity / photo)
    (root / "bob" / "broken.jpg").symlink_to(root / "missing.jpg")
    (root / "carol").mkdir()
    folders = IdentityFolderSource(root, "f", layout="webface")

    written, rejections = source_to_recordio(folders, tmp_path / "rec" / "train.rec")
    assert (written, [(r.key, r.reason) for r in rejections]) == (3, [("f/bob/broken", "broken_symlink")])
    assert written + len(rejections) == len(folders.keys())
    rec = RecordIOSource(tmp_path / "rec" / "train.rec", "r", channel_order="rgb")
    assert len(rec.identities()) == 2  # carol has no photo: she is no identity
    back = [(r.identity, r.data) for r in map(rec.read, rec.keys())]
    readable = [k for k in folders.keys() if k != "f/bob/broken"]
    assert back == [(folders.read(k).identity, folders.read(k).data) for k in readable]
