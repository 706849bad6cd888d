"""IdentityFolderSource on a real folder tree of the deepface photos."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from facekit.data.sources import SourceFormatError, open_source
from facekit.data.sources.base import SourceError
from facekit.data.sources.folders import IdentityFolderSource

PHOTOS = ["img1.jpg", "img2.jpg", "img3.jpg", "img4.jpg", "img5.jpg"]


@pytest.fixture()
def tree(assets: Path, tmp_path: Path) -> Path:
    """A VGGFace2-style tree: two identities with photos, one empty identity, and files to ignore."""
    photos = assets / "faces" / "deepface"
    root = tmp_path / "vggface2"
    files = {
        "n000002/0001_01.jpg": PHOTOS[0],
        "n000002/0002_01.JPEG": PHOTOS[1],
        "n000001/0010_02.jpg": PHOTOS[2],
        "n000001/0003_01.png": PHOTOS[3],  # JPEG bytes under a .png name: the source does not decode
        "n000001/sub/0099_01.jpg": PHOTOS[4],  # nested: ignored
        "stray.jpg": PHOTOS[4],  # directly under root: ignored
    }
    for rel, photo in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(photos / photo, root / rel)
    (root / "n000001" / "notes.txt").write_text("not an image")
    (root / "n000003").mkdir()  # an identity with no images keeps its label
    (root / ".cache").mkdir()  # hidden: not an identity
    return root


def test_keys_are_sorted_stable_and_identities_indexed(tree: Path, assets: Path) -> None:
    source = IdentityFolderSource(tree, "vgg")
    assert source.keys() == [
        "vgg/n000001/0003_01",
        "vgg/n000001/0010_02",
        "vgg/n000002/0001_01",
        "vgg/n000002/0002_01",
    ]
    assert IdentityFolderSource(tree, "vgg").keys() == source.keys()
    assert source.identities() == ["n000001", "n000002", "n000003"]

    record = source.read("vgg/n000002/0002_01")
    assert record.data == (assets / "faces" / "deepface" / PHOTOS[1]).read_bytes()
    assert (record.key, record.identity, record.source, record.meta) == ("vgg/n000002/0002_01", 1, "vgg", {})
    assert [source.read(k).identity for k in source.keys()] == [0, 0, 1, 1]


def test_same_stem_files_both_kept_with_their_extension(tree: Path, assets: Path) -> None:
    shutil.copyfile(assets / "faces" / "deepface" / PHOTOS[4], tree / "n000002" / "0001_01.webp")
    source = IdentityFolderSource(tree, "vgg")
    assert [k for k in source.keys() if "0001_01" in k] == ["vgg/n000002/0001_01.jpg", "vgg/n000002/0001_01.webp"]
    assert source.read("vgg/n000002/0001_01.webp").data == (tree / "n000002" / "0001_01.webp").read_bytes()
    assert source.read("vgg/n000002/0001_01.jpg").data == (tree / "n000002" / "0001_01.jpg").read_bytes()
    assert len(source.keys()) == 5


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


def test_unreadable_entries_raise_source_errors(tree: Path) -> None:
    (tree / "n000001" / "0004_01.jpg").mkdir()  # a directory with an image name
    (tree / "n000001" / "0005_01.jpg").symlink_to(tree / "missing.jpg")  # a broken link
    (tree / "n000001" / "0006_01.jpg").write_bytes(b"")
    source = IdentityFolderSource(tree, "vgg")
    reasons = {}
    for key in source.keys():
        try:
            source.read(key)
        except SourceError as e:
            reasons[key] = e.reason
            assert str(tree) in e.detail
    assert reasons == {
        "vgg/n000001/0004_01": "unreadable",
        "vgg/n000001/0005_01": "unreadable",
        "vgg/n000001/0006_01": "empty_file",
    }
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
