"""Settings are checked when params.yaml is read, before any photo is touched: a wrong type, a choice outside
a ``Literal``, a number out of range, a YAML syntax error or a detector model that is missing or does not
load is one ``facekit: error:`` line naming the file or key, exit status 2, and nothing is written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from facekit.cli import main
from facekit.config import load_params
from facekit.config.values import check_value


@pytest.mark.parametrize(
    ("section", "key", "value", "message"),
    [
        ("detect", "detector", "yolo", "detect.detector must be one of 'scrfd', 'retinaface', got 'yolo'"),
        ("detect", "select", "biggest", "detect.select must be one of 'largest', 'score', got 'biggest'"),
        ("detect", "input_size", "big", "detect.input_size must be an integer, got 'big'"),
        ("detect", "input_size", 0, r"detect.input_size must be in \[32, 4096\], got 0"),
        ("detect", "assume_aligned", "no", "detect.assume_aligned must be true or false, got 'no'"),
        ("detect", "score_threshold", 1.5, r"detect.score_threshold must be in \[0.0, 1.0\], got 1.5"),
        ("align", "jpeg_quality", 200, r"align.jpeg_quality must be in \[1, 100\], got 200"),
        ("sharding", "num_shards", "4", "sharding.num_shards must be an integer, got '4'"),
        ("sharding", "num_shards", 0, "sharding.num_shards must be >= 1, got 0"),
        ("source", "type", "zip", "source.type must be one of 'folder', 'recordio', 'laion', 'hf', got 'zip'"),
        ("masks", "jpeg_quality", 0, r"masks.jpeg_quality must be in \[1, 100\], got 0"),
        ("landmarks", "on_failure", "skip", "landmarks.on_failure must be one of 'reject', 'keep', got 'skip'"),
        ("verify", "folds", 1, "verify.folds must be >= 2, got 1"),
    ],
)
def test_a_bad_value_names_its_key(tmp_path: Path, section: str, key: str, value: object, message: str) -> None:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({section: {key: value}}))
    with pytest.raises(ValueError, match=message):
        load_params(path)


def test_the_checker_itself() -> None:
    """Hand-written cases of the one value check: bool is no number, an int is a float, None where allowed."""
    check_value(3, float, "x")
    check_value(None, int | None, "x")
    check_value([0.9, 0.95], tuple[float, float], "x")
    for value, hint, message in (
        (True, int, "x must be an integer, got True"),
        (1.5, int, "x must be an integer, got 1.5"),
        ("a", float | None, "x must be a number or null, got 'a'"),
        ({"a": 1}, tuple[float, ...], "x must be a list, got"),
    ):
        with pytest.raises(ValueError, match=message):
            check_value(value, hint, "x")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("detect: {detector: scrfd\n", r"params.yaml: line \d+, column \d+: not valid YAML"),
        ("source: data/raw/mine\n", "params.yaml: source must be a mapping of keys, got 'data/raw/mine'"),
        ("source: {type: recordio, path: a.rec, name: t, layout: webface}\n", "source.layout is a key of source type"),
        ("- just\n- a list\n", "params.yaml: expected a mapping of sections, got list"),
        ("detect: {model: models/no_such_detector.onnx}\n", "detect.model: asset 'models/no_such_detector.onnx'"),
        ("detect: {model: params.yaml}\n", "detect.model: params.yaml does not load as a scrfd detector"),
    ],
)
def test_user_errors_are_one_line_and_write_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], text: str, message: str
) -> None:
    """Through the real command, on a real folder of photos: exit 2, one ``facekit: error:`` line, no output."""
    monkeypatch.chdir(tmp_path)
    photos = tmp_path / "raw" / "id00"
    photos.mkdir(parents=True)
    photos.joinpath("a.jpg").write_bytes(b"\xff\xd8 not really a photo")
    source = "" if text.startswith(("source", "-")) else "source: {type: folder, path: raw, name: t}\n"
    Path("params.yaml").write_text(source + text)
    assert main(["data", "detect-align", "--params", "params.yaml"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("facekit: error: ")
    assert re.search(message, err[0]), err[0]
    assert not Path("data").exists() and not Path("metrics").exists()
