"""LMDB shards: round trips, metadata, content hashes, size limits, crash safety and the Dataset."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import pickle
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import cv2
import lmdb
import msgpack
import numpy as np
import pytest
import simplejpeg
import torch
from torch.utils.data import DataLoader

import facekit.data.shards as shards_module
from facekit.data.dataset import FaceShardDataset
from facekit.data.record import SCHEMA_VERSION, FaceRecord
from facekit.data.report import StageReport
from facekit.data.shards import (
    META_KEY,
    ShardError,
    ShardReader,
    ShardSetWriter,
    ShardWriter,
    content_hash,
    read_index,
    record_key,
    verify_shard,
    write_index,
)

CROP = 112
NUM_PHOTOS = 16


@pytest.fixture(scope="module")
def crops(assets: Path) -> list[tuple[str, int, bytes]]:
    """(file, identity, 112x112 JPEG crop) for the first deepface photos."""
    folder = assets / "faces" / "deepface"
    with open(folder / "identities.csv", newline="") as f:
        rows = list(csv.DictReader(f))[:NUM_PHOTOS]
    out = []
    for row in rows:
        rgb = simplejpeg.decode_jpeg(
            (folder / row["file"]).read_bytes(), colorspace="RGB", min_height=CROP, min_width=CROP
        )
        h, w = rgb.shape[:2]
        side = min(h, w)
        square = rgb[(h - side) // 2 : (h + side) // 2, (w - side) // 2 : (w + side) // 2]
        small = cv2.resize(square, (CROP, CROP), interpolation=cv2.INTER_AREA)
        out.append((row["file"], int(row["identity_id"]), simplejpeg.encode_jpeg(small, 90, "RGB")))
    return out


def make_records(crops: list[tuple[str, int, bytes]], n: int, seed: int = 0) -> list[FaceRecord]:
    """``n`` records cycling over the real crops, with random landmarks, boxes and some extras."""
    rng = np.random.default_rng(seed)
    records = []
    for i in range(n):
        file, identity, jpeg = crops[i % len(crops)]
        extra = {"dense_landmarks": rng.normal(size=(68, 2)).astype(np.float32)} if i % 3 == 0 else {}
        records.append(
            FaceRecord(
                key=f"deepface/{Path(file).stem}-{i:04d}",
                image=jpeg,
                identity=identity,
                landmarks=rng.uniform(0, CROP, (5, 2)).astype(np.float32),
                bbox=rng.uniform(0, 500, 4).astype(np.float32),
                det_score=float(rng.uniform(0.5, 1.0)),
                num_faces=int(rng.integers(1, 4)),
                source="deepface",
                source_sha256=hashlib.sha256(jpeg).hexdigest(),
                mask="surgical" if i % 4 == 1 else None,
                extra=extra,
            )
        )
    return records


def write_shard(path: Path, records: list[FaceRecord], **kwargs) -> shards_module.ShardInfo:
    with ShardWriter(path, **kwargs) as writer:
        for record in records:
            writer.put(record)
    return writer.close()


def assert_same_record(got: FaceRecord, want: FaceRecord) -> None:
    for name in ("key", "image", "identity", "det_score", "num_faces", "source", "source_sha256", "mask"):
        assert getattr(got, name) == getattr(want, name), name
    assert got.landmarks.dtype == np.float32 and np.array_equal(got.landmarks, want.landmarks)
    assert got.bbox.dtype == np.float32 and np.array_equal(got.bbox, want.bbox)
    assert got.extra.keys() == want.extra.keys()
    for name, array in want.extra.items():
        assert got.extra[name].dtype == array.dtype and np.array_equal(got.extra[name], array)


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_round_trip_every_field_and_metadata(crops, tmp_path):
    records = make_records(crops, 40)
    identities = [f"person{i}" for i in range(13)]
    path = tmp_path / "train.lmdb"
    info = write_shard(path, records, meta={"identities": identities, "params_hash": "abc123", "stage": "align"})
    reader = ShardReader(path)
    assert len(reader) == info.count == 40
    for got, want in zip(reader, records, strict=True):
        assert_same_record(got, want)
    assert_same_record(reader[-1], records[-1])
    assert reader.raw(7) == records[7].to_bytes() and type(reader.raw(7)) is bytes
    image, landmarks, extra = reader.read_fields(-4, "image", "landmarks", "extra")
    assert image == records[36].image and np.array_equal(landmarks, records[36].landmarks)
    assert extra.keys() == records[36].extra.keys() == {"dense_landmarks"}
    with pytest.raises(IndexError):
        reader[40]
    with pytest.raises(IndexError):
        reader.read_fields(40, "image")
    values = [r.to_bytes() for r in records]
    assert info.nbytes == sum(map(len, values))
    assert info.content_hash == content_hash(values)
    assert reader.meta == {
        "schema_version": SCHEMA_VERSION,
        "count": 40,
        "content_hash": info.content_hash,
        "identities": identities,
        "params_hash": "abc123",
        "stage": "align",
    }
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train.lmdb"]
    assert sorted(p.name for p in path.iterdir()) == ["data.mdb"]


def test_reserved_meta_and_bad_path_are_refused(tmp_path):
    with pytest.raises(ValueError, match="count"):
        ShardWriter(tmp_path / "a.lmdb", meta={"count": 3})
    with pytest.raises(ValueError, match=r"must end in '\.lmdb'"):
        ShardWriter(tmp_path / "a")
    with pytest.raises(ShardError, match=r"missing\.lmdb: not an LMDB shard"):
        len(ShardReader(tmp_path / "missing.lmdb"))


def test_undecodable_image_names_shard_and_key(crops, tmp_path):
    record = make_records(crops, 1)[0]
    path = tmp_path / "bad.lmdb"
    write_shard(path, [record.replace(image=record.image[:300])])
    with pytest.raises(ShardError, match=rf"bad\.lmdb: record 0 \({record.key}\): bad image"):
        FaceShardDataset(path)[0]


def test_content_hash_is_deterministic_and_sensitive(crops, tmp_path):
    records = make_records(crops, 30)
    a = write_shard(tmp_path / "a.lmdb", records, meta={"params_hash": "p"})
    b = write_shard(tmp_path / "b.lmdb", records, meta={"params_hash": "p"})
    changed = [*records[:11], records[11].replace(identity=records[11].identity + 1), *records[12:]]
    c = write_shard(tmp_path / "c.lmdb", changed, meta={"params_hash": "p"})
    assert a.content_hash == b.content_hash != c.content_hash
    assert ShardReader(a.path).meta == ShardReader(b.path).meta
    assert content_hash([b"ab", b"c"]) != content_hash([b"a", b"bc"])


def test_failed_rewrite_keeps_the_old_shard_and_rewrite_replaces_it(crops, tmp_path):
    records = make_records(crops, 12)
    path = tmp_path / "s.lmdb"
    old = write_shard(path, records[:6])
    with pytest.raises(RuntimeError, match="boom"), ShardWriter(path) as writer:
        writer.put(records[6])
        raise RuntimeError("boom")
    assert verify_shard(path) == old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.lmdb"]
    new = write_shard(path, records[6:])
    assert verify_shard(path) == new != old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.lmdb"]


def test_size_limit_splits_in_order_and_index_reconciles(crops, tmp_path):
    records = make_records(crops, 60)
    values = [r.to_bytes() for r in records]
    limit = sum(map(len, values[:9]))
    with ShardSetWriter(tmp_path, "train", max_shard_bytes=limit, meta={"params_hash": "p"}) as writer:
        for record in records:
            writer.put(record)
    infos = writer.close()
    assert len(infos) >= 5
    assert [i.path.name for i in infos] == [f"train-{k:05d}.lmdb" for k in range(len(infos))]
    read_back = [ShardReader(i.path).raw(k) for i in infos for k in range(i.count)]
    assert read_back == values
    start = 0
    for info in infos:
        assert info.nbytes <= limit
        start += info.count
        if start < len(values):  # greedy: the next record would not have fitted
            assert info.nbytes + len(values[start]) > limit

    index_path = write_index(tmp_path, infos, identities=["a", "b"], params_hash="p", extra={"stage": "s"})
    index = read_index(tmp_path)
    assert index_path == tmp_path / "index.json"
    assert index["count"] == 60 == sum(s["count"] for s in index["shards"])
    assert [s["name"] for s in index["shards"]] == [i.path.name for i in infos]
    assert index["content_hash"] == content_hash(i.content_hash.encode() for i in infos)
    assert (index["schema_version"], index["params_hash"], index["stage"]) == (SCHEMA_VERSION, "p", "s")
    with pytest.raises(ValueError, match="count"):
        write_index(tmp_path, infos, identities=[], params_hash="p", extra={"count": 1})
    dataset = FaceShardDataset(tmp_path)
    assert len(dataset) == 60 and dataset.identities == ["a", "b"]
    assert [dataset[i]["key"] for i in range(60)] == [r.key for r in records]
    write_shard(infos[1].path, records[:3], meta={"params_hash": "p"})  # rewritten after the index
    with pytest.raises(ShardError, match=r"train-00001\.lmdb: shard does not match .*stale index"):
        FaceShardDataset(tmp_path)


def test_oversized_records_get_own_shards_and_stale_shards_are_removed(crops, tmp_path):
    records = make_records(crops, 5)
    with ShardSetWriter(tmp_path, "big", max_shard_bytes=1) as writer:
        for record in records:
            writer.put(record)
    assert [i.count for i in writer.close()] == [1] * 5
    with ShardSetWriter(tmp_path, "big", max_shard_bytes=1 << 30) as writer:
        for record in records:
            writer.put(record)
    (info,) = writer.close()
    assert info.count == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big-00000.lmdb"]


def test_missing_index_is_a_clear_error(tmp_path):
    with pytest.raises(ShardError, match=r"index\.json"):
        read_index(tmp_path)
    with pytest.raises(ShardError, match=r"index\.json"):
        FaceShardDataset(tmp_path)


def test_dataloader_two_workers_reads_each_item_once_without_touching_files(crops, tmp_path):
    records = make_records(crops, 300)
    limit = sum(len(r.to_bytes()) for r in records[:70])
    with ShardSetWriter(tmp_path, "train", max_shard_bytes=limit) as writer:
        for record in records:
            writer.put(record)
    infos = writer.close()
    before = {i.path: sha256_file(i.path / "data.mdb") for i in infos}

    dataset = FaceShardDataset([i.path for i in infos])
    loader = DataLoader(dataset, batch_size=32, num_workers=2, shuffle=True)
    by_key = {r.key: r for r in records}
    seen: Counter[str] = Counter()
    for batch in loader:
        assert batch["image"].dtype == torch.uint8 and batch["image"].shape[1:] == (3, CROP, CROP)
        assert batch["landmarks"].dtype == torch.float32 and batch["landmarks"].shape[1:] == (5, 2)
        for key, identity, landmarks in zip(batch["key"], batch["identity"], batch["landmarks"], strict=True):
            seen[key] += 1
            assert identity.item() == by_key[key].identity
            assert np.array_equal(landmarks.numpy(), by_key[key].landmarks)
    assert seen == Counter(list(by_key))

    item = dataset[123]
    rgb = simplejpeg.decode_jpeg(records[123].image, colorspace="RGB")
    assert np.array_equal(item["image"].permute(1, 2, 0).numpy(), rgb)
    mean_pixel = FaceShardDataset([i.path for i in infos], transform=lambda a: a.mean())[123]["image"]
    assert mean_pixel == pytest.approx(rgb.mean())
    for path, digest in before.items():
        assert sorted(p.name for p in path.iterdir()) == ["data.mdb"]
        assert sha256_file(path / "data.mdb") == digest


def test_reader_survives_pickling(crops, tmp_path):
    records = make_records(crops, 8)
    path = tmp_path / "p.lmdb"
    write_shard(path, records)
    reader = ShardReader(path)
    assert_same_record(reader[2], records[2])
    clone = pickle.loads(pickle.dumps(reader))
    assert_same_record(clone[5], records[5])


def _rewrite_entry(path: Path, key: bytes, value: bytes) -> None:
    env = lmdb.open(str(path), subdir=True)
    with env.begin(write=True) as txn:
        txn.put(key, value)
    env.close()
    (path / "lock.mdb").unlink()


def test_schema_version_mismatch_names_the_shard(crops, tmp_path):
    path = tmp_path / "old.lmdb"
    write_shard(path, make_records(crops, 3))
    meta = ShardReader(path).meta
    _rewrite_entry(path, META_KEY, json.dumps({**meta, "schema_version": SCHEMA_VERSION + 1}).encode())
    with pytest.raises(ShardError, match=r"old\.lmdb: schema_version"):
        ShardReader(path)[0]
    with pytest.raises(ShardError, match=r"old\.lmdb: schema_version"):
        FaceShardDataset([path])


def test_verify_shard_catches_tampering(crops, tmp_path):
    records = make_records(crops, 10)
    path = tmp_path / "t.lmdb"
    info = write_shard(path, records)
    assert verify_shard(path) == info
    _rewrite_entry(path, record_key(3), records[4].to_bytes())
    with pytest.raises(ShardError, match=r"t\.lmdb: content hash"):
        verify_shard(path)
    _rewrite_entry(path, record_key(10), records[4].to_bytes())
    with pytest.raises(ShardError, match=r"t\.lmdb: 11 records stored"):
        verify_shard(path)


def test_a_stage_report_is_stored_with_the_records_and_read_back(crops, tmp_path):
    """The writer's report commits with the records; it is not a record and not in the content hash."""
    records = make_records(crops, 6)
    report = StageReport("detect_align", read=8, written=6, extra={"kept": 1.0})
    report.reject("t/a/7", "no_face", "0 faces")
    report.reject("t/a/2", "not_an_image", "text")
    path = tmp_path / "t.lmdb"
    with ShardWriter(path) as writer:
        for record in records:
            writer.put(record)
        writer.report = report.to_json()
    reader = ShardReader(path)
    assert len(reader) == 6 and reader.meta["content_hash"] == content_hash(r.to_bytes() for r in records)
    assert StageReport.from_json(reader.report) == report  # rejections keep their order
    assert verify_shard(path).count == 6
    assert ShardReader(write_shard(tmp_path / "plain.lmdb", records).path).report is None


WRITER_SCRIPT = """
import sys, time
from pathlib import Path
import msgpack
from facekit.data.record import FaceRecord
from facekit.data.shards import ShardSetWriter, write_index
values = msgpack.unpackb(Path(sys.argv[1]).read_bytes())
out, delay, limit = Path(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
with ShardSetWriter(out, "part", max_shard_bytes=limit, commit_every=2) as writer:
    for value in values:
        writer.put(FaceRecord.from_bytes(value))
        time.sleep(delay)
write_index(out, writer.close(), identities=[], params_hash="p")
"""


def test_killed_writer_leaves_nothing_complete_and_rerun_matches(crops, tmp_path):
    records = make_records(crops, 80)
    values = [r.to_bytes() for r in records]
    limit = sum(map(len, values[:10]))
    reference = tmp_path / "reference"
    with ShardSetWriter(reference, "part", max_shard_bytes=limit) as writer:
        for record in records:
            writer.put(record)
    write_index(reference, writer.close(), identities=[], params_hash="p")

    payload, other_payload = tmp_path / "values.msgpack", tmp_path / "reversed.msgpack"
    payload.write_bytes(msgpack.packb(values))
    other_payload.write_bytes(msgpack.packb(values[::-1]))  # as from a run with other parameters
    out = tmp_path / "out"
    package_root = Path(shards_module.__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(package_root), os.environ.get("PYTHONPATH", "")])}

    def run(values_path: Path, delay: float) -> subprocess.Popen:
        args = [sys.executable, "-c", WRITER_SCRIPT, str(values_path), str(out), str(delay), str(limit)]
        return subprocess.Popen(args, env=env, stderr=subprocess.PIPE)

    slow = run(other_payload, 0.05)
    deadline = time.monotonic() + 60
    while not (out / "part-00002.lmdb").exists():
        assert slow.poll() is None, slow.stderr.read().decode()
        assert time.monotonic() < deadline, "the slow writer never got to its third shard"
        time.sleep(0.02)
    time.sleep(0.25)  # a few records into the fourth shard, committed two by two
    slow.send_signal(signal.SIGKILL)
    assert slow.wait() == -signal.SIGKILL
    assert not (out / "index.json").exists()
    assert list(out.glob("*.tmp")), "the killed writer should have been mid-shard"

    fast = run(payload, 0.0)
    _, stderr = fast.communicate(timeout=120)
    assert fast.returncode == 0, stderr.decode()
    assert read_index(out)["content_hash"] == read_index(reference)["content_hash"]
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in reference.iterdir())
    assert not list(out.rglob("*.tmp"))
    for entry in read_index(out)["shards"]:
        assert verify_shard(out / entry["name"]).content_hash == entry["content_hash"]


def test_a_script_that_exits_with_readers_open_prints_nothing(sample_shards: Path) -> None:
    """Readers still open at interpreter shutdown close quietly (no "Exception ignored in __del__" lines)."""
    script = (
        "import sys\nimport facekit.methods\nfrom facekit.data.dataset import FaceShardDataset\n"
        "from facekit.methods.base import METHODS\nMAE = METHODS.create('mae', backbone='vit_small_patch16_224')\n"
        "DATA = FaceShardDataset(sys.argv[1], transform=MAE.views())\nITEMS = [DATA[i] for i in range(3)]\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    done = subprocess.run(
        [sys.executable, "-c", script, str(sample_shards)], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0 and done.stderr == "", done.stderr[-2000:]
