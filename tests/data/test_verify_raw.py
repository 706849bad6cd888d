"""verify_raw on small fake layouts, right and wrong, with expectations passed explicitly."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

from facekit.data.sources.recordio import write_recordio
from facekit.data.verify_raw import KNOWN_COUNTS, verify_raw

JPEG = b"\xff\xd8\xff\xe0fake-jpeg"


def _tree(root: Path, files: list[str]) -> Path:
    for relative in files:
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_bytes(JPEG)
    return root


VGG = ["n000001/0001_01.jpg", "n000001/0002_01.jpg", "n000002/0001_01.jpg"]


def test_vggface2_split_that_matches(tmp_path) -> None:
    root = _tree(tmp_path / "vggface2" / "train", [*VGG, "n000002/notes.txt"])
    report = verify_raw("vggface2", root, {"identities": 2, "images": 3})
    assert report.ok and report.counts == {"identities": 2, "images": 3}
    assert report.message().splitlines()[0] == f"OK: vggface2 at {root}: 2 identities, 3 images (as expected)"
    assert report.notes == ["1 file(s) without an image extension inside identity folders (read if they hold an image)"]


def test_vggface2_wrong_layouts_are_named(tmp_path) -> None:
    parent = _tree(tmp_path / "vggface2", [f"train/{f}" for f in VGG] + [f"test/{f}" for f in VGG])
    report = verify_raw("vggface2", parent, {"identities": 2, "images": 3})
    assert (
        not report.ok
        and report.problems[0] == f"{parent} holds train/test/ folders: point at {parent / 'train'} (one split) instead"
    )

    root = _tree(tmp_path / "messy", [*VGG, "stray.jpg", "Alice/1.jpg"])
    (root / "n000003").mkdir()
    report = verify_raw("vggface2", root, {"identities": 4, "images": 10})
    assert report.problems == [
        "1 image file(s) directly under the root (stray.jpg): images belong in <identity>/",
        "1 folder(s) not named like VGGFace2 identities nNNNNNN: Alice",
        "1 identity folder(s) hold no image: n000003",
        "images: found 4, expected 10 (-60.00%)",
    ]
    assert "PROBLEMS" in report.message() and "images: found 4, expected 10" in report.message()


def test_webface_tolerance_and_missing_root(tmp_path) -> None:
    root = _tree(tmp_path / "webface", ["0000045/001.jpg", "0000045/002.jpg", "0000099/001.png"])
    assert verify_raw("webface", root, {"identities": 2, "images": 3}).ok
    assert verify_raw("webface", root, {"images": 3.1, "tolerance": 0.05}).ok
    strict = verify_raw("webface", root, {"images": 4, "tolerance": 0.1})
    assert strict.problems == ["images: found 3, expected 4 (-25.00%, tolerance 10.0%)"]
    absent = verify_raw("webface", tmp_path / "absent", {"images": 4})
    assert absent.problems == [f"{tmp_path / 'absent'} is not a folder (expected <root>/<identity>/<image>)"]
    with pytest.raises(ValueError, match="unknown expectation keys"):
        verify_raw("webface", root, {"photos": 3})
    with pytest.raises(ValueError, match="kind must be one of"):
        verify_raw("mnist", root)  # type: ignore[arg-type]


def _rec(tmp_path: Path) -> Path:
    rec = tmp_path / "ms1m" / "train.rec"
    write_recordio(rec, [(0, JPEG), (0, JPEG + b"1"), (1, JPEG + b"2"), (2, JPEG + b"3")], num_classes=3)
    return rec


def test_recordio_consistent_and_inconsistent(tmp_path) -> None:
    rec = _rec(tmp_path)
    report = verify_raw("recordio", rec.parent, {"identities": 3, "images": 4})
    assert report.ok, report.message()
    assert report.counts == {"identities": 3, "images": 4} and "112x112" in report.notes[0]

    (rec.parent / "property").write_text("5,112,112\n")
    report = verify_raw("recordio", rec, {"identities": 3})
    assert report.problems == [
        "property says 5 identities, the header record's range (5, 8) holds 3",
        "identities: found 5, expected 3 (+66.67%)",
    ]

    (rec.parent / "property").write_text("3,112,112\n")
    data = bytearray(rec.read_bytes())
    first_image = data.index(JPEG)
    data[first_image - 32 : first_image - 28] = b"\0\0\0\0"  # the magic of the first image record
    rec.write_bytes(bytes(data))
    report = verify_raw("recordio", rec)
    assert report.problems == ["1 of 4 sampled records are bad: {'bad_record': 1}"]

    rec.with_suffix(".idx").unlink()
    report = verify_raw("recordio", rec, {"images": 4})
    assert report.problems[0] == f"missing train.idx in {rec.parent} (expected train.rec, train.idx, property)"


def _tar(path: Path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def _stats(path: Path, successes: int) -> None:
    path.write_text(json.dumps({"count": successes, "successes": successes, "failed": []}))


def test_laion_shards(tmp_path) -> None:
    folder = tmp_path / "laion"
    folder.mkdir()
    _tar(folder / "00000.tar", {"0000.jpg": JPEG, "0000.json": b"{}", "0001.jpg": JPEG})
    _tar(folder / "00001.tar", {"0100.jpg": JPEG})
    _stats(folder / "00000_stats.json", 2)
    _stats(folder / "00001_stats.json", 1)
    report = verify_raw("laion", folder, {"tars": 2, "images": 3})
    assert report.ok and report.counts == {"tars": 2, "images": 3, "broken": 0}

    (folder / "00001.tar").rename(folder / "00003.tar")
    _tar(folder / "shard-a.tar", {"x.jpg": JPEG, "../y.jpg": JPEG})
    _stats(folder / "00000_stats.json", 5)
    (folder / "00004.parts").mkdir()
    report = verify_raw("laion", folder, {"tars": 3, "images": 4})
    assert report.problems == [
        "1 tar(s) not named like img2dataset shards (00000.tar): shard-a.tar",
        "2 shard(s) missing from the numbering: 1, 2",
        "unfinished download (00004.parts): re-run the download stage",
        "1 unusable member(s): {'unsafe_member': 1}",
        "00000.tar: 2 image(s), its stats file says 5",
    ]
    assert report.notes == ["2 tar(s) without a <shard>_stats.json: 00003, shard-a"]
    assert report.counts == {"tars": 3, "images": 4, "broken": 1}


def test_known_counts_are_usable_expectations() -> None:
    assert KNOWN_COUNTS["vggface2-train"] == {"identities": 8631, "images": 3_141_890}
    assert KNOWN_COUNTS["ms1mv3"]["identities"] == 93_431 and KNOWN_COUNTS["webface42m"]["identities"] == 2_059_906
