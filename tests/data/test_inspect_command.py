"""``facekit data inspect`` on folders that are not (or no longer) good shards: one ``facekit: error:`` line
naming the file, exit status 2, never a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from facekit.cli import main
from facekit.data.shards import ShardSetWriter, write_index

from .test_shards import crops, make_records  # noqa: F401  (crops is a fixture)


@pytest.fixture
def shards(crops, tmp_path) -> Path:  # noqa: F811
    """A two-shard set with its index."""
    records = make_records(crops, 8)
    limit = sum(len(r.to_bytes()) for r in records[:4])
    with ShardSetWriter(tmp_path / "shards", "train", max_shard_bytes=limit, meta={"params_hash": "p"}) as w:
        for record in records:
            w.put(record)
    write_index(tmp_path / "shards", w.close(), identities=["a"], params_hash="p")
    return tmp_path / "shards"


def run_inspect(path: Path, capsys: pytest.CaptureFixture) -> tuple[int, list[str], str]:
    code = main(["data", "inspect", str(path)])
    out = capsys.readouterr()
    return code, out.err.strip().splitlines(), out.out


def test_good_shards_pass(shards, capsys):
    code, err, out = run_inspect(shards, capsys)
    assert code == 0 and not err and "8 faces" in out and "verified" in out


def test_not_a_shard_folder(tmp_path, capsys):
    code, err, _ = run_inspect(tmp_path, capsys)
    assert code == 2 and err == [
        f"facekit: error: {tmp_path / 'index.json'}: no shard index here (expected index.json written by write_index)"
    ]


def corrupt_truncate(shard: Path) -> None:
    data = shard / "data.mdb"
    data.write_bytes(data.read_bytes()[:4096])


def corrupt_garbage(shard: Path) -> None:
    data = shard / "data.mdb"
    data.write_bytes(b"\x00not lmdb" * 1000)


def corrupt_remove(shard: Path) -> None:
    (shard / "data.mdb").unlink()


def corrupt_flip(shard: Path) -> None:
    data = shard / "data.mdb"
    raw = bytearray(data.read_bytes())
    at = raw.find(b"\xff\xd8")  # inside the first stored JPEG: the content hash changes
    raw[at + 200] ^= 0xFF
    data.write_bytes(bytes(raw))


@pytest.mark.parametrize("corrupt", [corrupt_truncate, corrupt_garbage, corrupt_remove, corrupt_flip])
def test_broken_shard_is_one_error_line_naming_it(shards, corrupt, capsys):
    shard = shards / "train-00001.lmdb"
    corrupt(shard)
    code, err, _ = run_inspect(shards, capsys)
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith(f"facekit: error: {shard}"), err
