"""The ``scan`` stage: a manifest of the source that opens nothing, one line per key of a folder source."""

from __future__ import annotations

import shutil
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from facekit.config import Params, PathsParams, SourceParams, load_params
from facekit.data.sources import open_source
from facekit.data.sources.recordio import write_recordio
from facekit.stages import detect_align, scan


def test_the_manifest_lists_every_entry_of_a_bad_folder_without_opening_one(
    tmp_path: Path, bad_input_folder: Callable[[Path], dict[str, str | None]]
) -> None:
    expected = bad_input_folder(tmp_path / "raw")
    params = Params(source=SourceParams(path=str(tmp_path / "raw"), name="t"))
    paths = PathsParams(source_manifest=str(tmp_path / "manifest.jsonl"))
    summary = scan.run(params, paths)  # a FIFO among the files: a read would hang here
    entries = scan.read_manifest(tmp_path / "manifest.jsonl")
    assert len(entries) == len(expected) == len(open_source(params.source.spec()).keys()), summary
    assert [e["path"] for e in entries] == sorted(e["path"] for e in entries)
    kinds = Counter(e["kind"] for e in entries)
    assert kinds["broken_symlink"] == kinds["fifo"] == kinds["socket"] == kinds["folder_link"] == 1
    by_path = {e["path"]: e for e in entries}
    assert by_path["a/ok.jpg"]["size"] > 0 and by_path["c/linked.jpg"]["kind"] == "file"
    assert by_path[".cache/thumb.jpg"]["kind"] == "file" and "a/latin1_\\xe9.jpg" in by_path
    before = (tmp_path / "manifest.jsonl").read_bytes()
    scan.run(params, paths)
    assert (tmp_path / "manifest.jsonl").read_bytes() == before  # deterministic: DVC keeps detect_align cached
    (tmp_path / "raw/a/ok.jpg").write_bytes(b"changed")
    scan.run(params, paths)
    assert (tmp_path / "manifest.jsonl").read_bytes() != before


def test_a_recordio_source_is_its_rec_idx_and_property(tmp_path: Path) -> None:
    rec = tmp_path / "train.rec"
    write_recordio(rec, [(0, b"\xff\xd8 a"), (1, b"\xff\xd8 b")], num_classes=2)
    entries = scan.scan_source(SourceParams(type="recordio", path=str(rec), name="r"))
    assert [(e["path"], e["kind"]) for e in entries] == [
        ("property", "file"),
        ("train.idx", "file"),
        ("train.rec", "file"),
    ]


def test_an_hf_source_runs_from_params_yaml(tmp_path: Path, assets: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``source: {type: hf, ...}`` in params.yaml: its own keys are checked, scan and detect_align read it."""
    for person, photo in (("alice", "img1.jpg"), ("bob", "img2.jpg")):
        (tmp_path / "faces" / person).mkdir(parents=True)
        shutil.copy(assets / "faces/deepface" / photo, tmp_path / "faces" / person / photo)
    monkeypatch.chdir(tmp_path)
    hf = "source: {type: hf, path: faces, name: h, split: train, label_column: label}\n"
    Path("params.yaml").write_text(hf + "sharding: {num_shards: 1, workers: 1}\n")
    params = load_params()
    scan.run(params, params.paths)
    assert [e["path"] for e in scan.read_manifest(Path(params.paths.source_manifest))] == [
        "alice/img1.jpg",
        "bob/img2.jpg",
    ]
    report = detect_align.run(params, params.paths, progress=False)
    assert (report.read, report.written) == (2, 2), report.summary()
    Path("params.yaml").write_text(hf.replace("split: train", "layout: vggface2"))
    with pytest.raises(ValueError, match=r"source\.layout is a key of source type folder, not hf"):
        load_params()
