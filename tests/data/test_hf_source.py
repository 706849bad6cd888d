"""HFImageSource: local Hugging Face image datasets, original bytes, ClassLabel identities."""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import datasets
import pytest
from PIL import Image

from facekit.data.sources import SourceFormatError, open_source
from facekit.data.sources.hf import HFImageSource


def _image(color: tuple[int, int, int], fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (10, 8), color).save(buf, format=fmt, **({"quality": 61} if fmt == "JPEG" else {}))
    return buf.getvalue()


#: relative path -> bytes: 2 identities, a JPEG saved at an unusual quality and a PNG (re-encoding would show)
FILES = {
    "alice/a0.jpg": _image((250, 10, 10), "JPEG"),
    "alice/a1.png": _image((240, 20, 20), "PNG"),
    "bob/b0.jpg": _image((10, 10, 250), "JPEG"),
}


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    root = tmp_path / "faces"
    for relative, data in FILES.items():
        (root / "train" / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / "train" / relative).write_bytes(data)
    return root


def _by_file(source: HFImageSource) -> dict[str, tuple[bytes, int]]:
    records = [source.read(key) for key in source.keys()]
    return {Path(r.meta["file"]).name: (r.data, r.identity) for r in records}


def test_imagefolder_gives_original_bytes_and_class_names(image_folder, tmp_path) -> None:
    source = HFImageSource(image_folder, name="hf", cache_dir=tmp_path / "cache")
    assert source.identities() == ["alice", "bob"]
    assert source.keys() == ["hf/train/000000000", "hf/train/000000001", "hf/train/000000002"]
    expected = {Path(rel).name: (data, ["alice", "bob"].index(rel.split("/")[0])) for rel, data in FILES.items()}
    assert _by_file(source) == expected
    assert all(source.read(k).source == "hf" for k in source.keys())
    with pytest.raises(KeyError):
        source.read("hf/train/000000003")
    with pytest.raises(KeyError):
        source.read("other/train/000000000")


def test_saved_dataset_dict_embeds_bytes_and_picks_the_split(image_folder, tmp_path) -> None:
    files = sorted(FILES)
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["alice", "bob"])})
    train = datasets.Dataset.from_dict(
        {"image": [str(image_folder / "train" / f) for f in files], "label": [0, -1, 1]}, features=features
    )
    saved = tmp_path / "saved"
    datasets.DatasetDict({"train": train, "test": train.select([2])}).save_to_disk(str(saved))
    for relative in files:
        (image_folder / "train" / relative).unlink()  # the saved copy must not need the originals

    source = HFImageSource(saved, name="hf")
    records = [source.read(k) for k in source.keys()]
    expected = [(FILES[f], label) for f, label in zip(files, [0, -1, 1], strict=True)]
    assert [(r.data, r.identity) for r in records] == expected
    test = HFImageSource(saved, name="hf", split="test")
    assert test.keys() == ["hf/test/000000000"] and test.read("hf/test/000000000").data == FILES[files[2]]
    clone = pickle.loads(pickle.dumps(test))
    assert clone.read("hf/test/000000000").data == FILES[files[2]]
    with pytest.raises(SourceFormatError) as info:
        HFImageSource(saved, name="hf", split="validation")
    assert info.value.reason == "missing_split" and "test" in info.value.detail


def test_unlabelled_and_integer_labels(tmp_path) -> None:
    data = list(FILES.values())
    plain = datasets.Dataset.from_dict(
        {"image": [{"bytes": b, "path": None} for b in data], "person": [3, 0, 3]},
        features=datasets.Features({"image": datasets.Image(), "person": datasets.Value("int64")}),
    )
    plain.save_to_disk(str(tmp_path / "plain"))
    unlabelled = HFImageSource(tmp_path / "plain", name="u", label_column=None)
    assert unlabelled.identities() == [] and {unlabelled.read(k).identity for k in unlabelled.keys()} == {-1}
    numbered = open_source({"type": "hf", "path": str(tmp_path / "plain"), "name": "n", "label_column": "person"})
    assert numbered.identities() == ["0", "1", "2", "3"]
    assert [numbered.read(k).identity for k in numbered.keys()] == [3, 0, 3]
    assert [numbered.read(k).data for k in numbered.keys()] == data


def test_bad_inputs_are_named(tmp_path, image_folder) -> None:
    with pytest.raises(SourceFormatError) as info:
        HFImageSource(tmp_path / "absent", name="hf")
    assert info.value.reason == "not_a_directory"
    with pytest.raises(SourceFormatError) as info:
        HFImageSource(image_folder, name="hf", image_column="picture", cache_dir=tmp_path / "cache")
    assert info.value.reason == "bad_column" and "picture" in info.value.detail
