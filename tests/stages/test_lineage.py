"""The lineage stages on real photos: end-to-end accuracy, bad input, duplicates, crash and re-run."""

from __future__ import annotations

import csv
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from facekit.config import Params, PathsParams, SampleParams, ShardingParams, SourceParams
from facekit.data.dataset import FaceShardDataset
from facekit.data.record import FaceRecord
from facekit.data.shards import ShardReader, ShardWriter, read_index
from facekit.eval.embedder import OnnxEmbedder
from facekit.eval.verification import verify
from facekit.stages import detect_align, pack, sample


def _params(raw: Path, num_shards: int = 2) -> Params:
    return Params(
        sample=SampleParams(out=str(raw)),
        source=SourceParams(path=str(raw), name="t"),
        sharding=ShardingParams(num_shards=num_shards, workers=2),
    )


def _paths(root: Path) -> PathsParams:
    """Outputs under ``root``; pack reads the aligned faces (no landmarks / masks stages)."""
    aligned = str(root / "aligned")
    return PathsParams(
        aligned=aligned, masked=aligned, shards=str(root / "shards"), metrics=str(root / "m"), plots=str(root / "p")
    )


@pytest.fixture(scope="module")
def sample_run(tmp_path_factory: pytest.TempPathFactory, assets: Path) -> dict:
    """sample → detect_align → pack on the 61 shared photos, once for the module."""
    root = tmp_path_factory.mktemp("lineage")
    os.environ["FACEKIT_ASSETS"] = str(assets)
    params, paths = _params(root / "raw", num_shards=3), _paths(root)
    reports = {
        "sample": sample.run(params, paths),
        "detect_align": detect_align.run(params, paths, progress=False),
        "pack": pack.run(params, paths, progress=False),
    }
    return {"root": root, "params": params, "reports": reports}


def test_sample_counts_reconcile_through_every_stage(sample_run: dict) -> None:
    reps = sample_run["reports"]
    assert (reps["sample"].read, reps["sample"].written) == (61, 61)
    for rep in reps.values():
        assert rep.read == rep.written + rep.rejected
    assert reps["detect_align"].read == reps["sample"].written
    assert reps["pack"].read == reps["detect_align"].written
    assert reps["detect_align"].written >= 60, reps["detect_align"].by_reason()
    index = read_index(sample_run["root"] / "shards")
    assert index["count"] == reps["pack"].written
    assert len(index["identities"]) == 13
    assert (sample_run["root"] / "p/faces.png").stat().st_size > 10_000
    for stage in reps:  # each stage's report and rejections under paths.metrics
        assert (sample_run["root"] / f"m/{stage}.json").is_file()
        assert (sample_run["root"] / f"m/{stage}.rejections.jsonl").is_file()


def test_packed_faces_verify_on_the_real_pairs(sample_run: dict, assets: Path) -> None:
    """raw → detect → align → LMDB → read back → MobileFaceNet → 10-fold accuracy on 280 pairs."""
    ds = FaceShardDataset(sample_run["root"] / "shards", transform=lambda rgb: rgb)
    crops = {Path(item["key"]).name: item["image"] for item in (ds[i] for i in range(len(ds)))}
    assert all(c.shape == (112, 112, 3) for c in crops.values())
    embedder = OnnxEmbedder(assets / "models/mobilefacenet_128d.onnx")
    names = sorted(crops)
    emb = dict(zip(names, embedder.embed(np.stack([crops[n] for n in names])), strict=True))
    with (assets / "faces/deepface/pairs.csv").open() as f:
        pairs = [(Path(r["file_x"]).stem, Path(r["file_y"]).stem, r["same"] == "1") for r in csv.DictReader(f)]
    pairs = [p for p in pairs if p[0] in emb and p[1] in emb]
    assert len(pairs) >= 270
    result = verify(
        np.stack([emb[a] for a, _, _ in pairs]),
        np.stack([emb[b] for _, b, _ in pairs]),
        np.array([s for _, _, s in pairs]),
    )
    assert result.accuracy >= 0.97, result


def _records(shards: Path) -> list[FaceRecord]:
    return [r for entry in read_index(shards)["shards"] for r in ShardReader(shards / entry["name"])]


def test_bad_input_is_rejected_with_its_reason_and_nothing_is_lost(
    tmp_path: Path, bad_input_folder: Callable[[Path], dict[str, str | None]]
) -> None:
    expected = bad_input_folder(tmp_path / "raw")
    params, paths = _params(tmp_path / "raw"), _paths(tmp_path)
    da = detect_align.run(params, paths, progress=False)
    pk = pack.run(params, paths, progress=False)
    assert da.read == len(expected) == da.written + da.rejected
    assert pk.read == da.written == pk.written + pk.rejected
    got = {Path(r.key).name: r.reason for r in da.rejections + pk.rejections}
    for stem, reason in expected.items():
        assert got.get(stem) == reason, (stem, got.get(stem), [r for r in da.rejections if stem in r.key])
    records = {Path(r.key).name: r for r in _records(tmp_path / "shards")}
    assert records["group"].num_faces == 6
    assert records["ok"].num_faces == 1
    # decoded upright, the EXIF-rotated photo has its face where the upright original has it
    np.testing.assert_allclose(records["exif_rotated"].bbox, records["ok"].bbox, atol=4)


def _fill_aligned(path: Path, n: int, template: FaceRecord) -> None:
    with ShardWriter(path, meta={"identities": ["x"], "params_hash": "test"}) as w:
        for i in range(n):
            w.put(template.replace(key=f"t/x/{i:06d}", source_sha256=f"{i:064x}"))


def test_pack_names_both_identities_when_a_duplicate_photo_carries_another_label(tmp_path: Path) -> None:
    """The same file twice under one identity is a ``duplicate``; under another, the labels conflict."""
    face = FaceRecord(
        key="",
        image=b"jpeg",
        identity=0,
        landmarks=np.zeros((5, 2), np.float32),
        bbox=np.zeros(4, np.float32),
        det_score=0.9,
        num_faces=1,
        source="t",
        source_sha256="a" * 64,
    )
    records = [
        face.replace(key="t/alice/1"),
        face.replace(key="t/alice/2"),
        face.replace(key="t/bob/1", identity=1),
        face.replace(key="t/bob/2", identity=1, source_sha256="b" * 64),
    ]
    with ShardWriter(tmp_path / "aligned/shard-00000.lmdb", meta={"identities": ["alice", "bob"]}) as w:
        for record in records:
            w.put(record)
    report = pack.run_pack(Params(), tmp_path / "aligned", tmp_path / "shards", progress=False)
    assert (report.read, report.written) == (4, 2)
    assert {r.key: r.reason for r in report.rejections} == {
        "t/alice/2": "duplicate",
        "t/bob/1": "duplicate_conflicting_identity",
    }
    details = {r.key: r.detail for r in report.rejections}
    assert details["t/alice/2"] == "same file as t/alice/1"
    assert details["t/bob/1"] == "same file as t/alice/1, labelled 'alice' there and 'bob' here"
    assert sorted(r.key for r in _records(tmp_path / "shards")) == ["t/alice/1", "t/bob/2"]


def test_pack_killed_midway_reruns_to_the_same_content_hash(tmp_path: Path, sample_run: dict) -> None:
    """kill -9 in the middle of `facekit data pack`; the re-run equals an uninterrupted run."""
    template = _records(sample_run["root"] / "shards")[0]
    aligned = tmp_path / "aligned"
    for s in range(2):
        _fill_aligned(aligned / f"shard-{s:05d}.lmdb", 15_000, template.replace(identity=0))
    settings = "pack: {max_shard_bytes: 20000000}\nsharding: {workers: 1}\n"
    (tmp_path / "params.yaml").write_text(settings + "paths: {masked: aligned, shards: shards}\n")
    (tmp_path / "clean.yaml").write_text(settings + "paths: {masked: aligned, shards: clean}\n")
    cmd = [sys.executable, "-m", "facekit.cli", "data", "pack", "--quiet"]
    out = tmp_path / "shards"
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=os.environ.copy())
    deadline = time.monotonic() + 60
    while not list(out.glob("*.tmp")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None, "pack finished before it could be interrupted"
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "index.json").exists()
    subprocess.run(cmd, cwd=tmp_path, check=True, capture_output=True)
    clean = tmp_path / "clean"
    subprocess.run([*cmd, "--params", "clean.yaml"], cwd=tmp_path, check=True, capture_output=True)
    assert read_index(out)["content_hash"] == read_index(clean)["content_hash"]
    assert read_index(out)["count"] == 30_000
    assert not list(out.glob("*.tmp"))
    shutil.rmtree(clean)
