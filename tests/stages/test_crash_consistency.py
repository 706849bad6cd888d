"""A data stage killed right after any of its writes (``FACEKIT_FAULT``, see :mod:`facekit.data.faults`) and
run again gives the outputs of an uninterrupted run: the same shards (content hashes), the same report
counts and rejections, no leftovers."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from facekit.data.faults import FAULT_EXIT_CODE
from facekit.data.shards import verify_shard

PARAMS = """\
source: {path: raw, name: t}
sharding: {num_shards: 3, workers: 1}
masks: {quality_pairs: ""}
paths: {aligned: aligned, landmarks: landmarks, masked: masked, shards: shards, metrics: m, plots: p}
"""
#: Other settings that reject more faces (a run with them leaves shards of another params hash).
OTHER = PARAMS + "detect: {min_face_size: 150}\n"
STAGES = {"detect_align": "aligned", "landmarks": "landmarks", "masks": "masked", "pack": "shards"}
SLOW = pytest.mark.slow  # points whose code another point already runs: with `make test`, not the quick loop
POINTS = [
    pytest.param("detect_align", "shard_record_put", marks=SLOW),
    pytest.param("detect_align", "shard_committed"),
    pytest.param("detect_align", "shard_renamed", marks=SLOW),
    pytest.param("detect_align", "shard_renamed:2", marks=SLOW),
    pytest.param("detect_align", "report_rejections_written"),
    pytest.param("detect_align", "report_written", marks=SLOW),
    pytest.param("landmarks", "shard_committed", marks=SLOW),
    pytest.param("landmarks", "shard_renamed"),
    pytest.param("landmarks", "report_written", marks=SLOW),
    pytest.param("masks", "shard_renamed", marks=SLOW),
    pytest.param("masks", "report_rejections_written", marks=SLOW),
    pytest.param("pack", "shard_record_put", marks=SLOW),
    pytest.param("pack", "shard_committed", marks=SLOW),
    pytest.param("pack", "shard_renamed:2"),
    pytest.param("pack", "index_written"),
    pytest.param("pack", "report_rejections_written"),
    pytest.param("pack", "report_written", marks=SLOW),
]
OVER_OTHER_POINTS = [
    pytest.param("shard_committed", marks=SLOW),
    pytest.param("shard_moved_aside"),
    pytest.param("shard_renamed"),
    pytest.param("shard_renamed:3"),
    pytest.param("report_written", marks=SLOW),
]


def _stage(root: Path, stage: str, *, fault: str = "", params: str = "params.yaml") -> int:
    """``facekit data <stage>`` in ``root``; its exit status."""
    env = {**os.environ, "FACEKIT_FAULT": fault}
    cmd = [sys.executable, "-m", "facekit.cli", "data", stage.replace("_", "-"), "--quiet", "--params", params]
    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True)
    assert proc.returncode in (0, FAULT_EXIT_CODE), proc.stderr
    return proc.returncode


def _outputs(root: Path, stage: str) -> dict:
    """What a stage leaves: the names in its folder, each shard's verified count and content hash, the
    index (pack), the report and its rejections."""
    out = root / STAGES[stage]
    shards = {path.name: verify_shard(path) for path in sorted(out.glob("*.lmdb"))}
    index = out / "index.json"
    return {
        "files": sorted(path.name for path in out.iterdir()),
        "shards": {name: (info.count, info.content_hash) for name, info in shards.items()},
        "index": json.loads(index.read_text()) if index.is_file() else None,
        "report": json.loads((root / "m" / f"{stage}.json").read_text()),
        "rejections": (root / "m" / f"{stage}.rejections.jsonl").read_text(),
    }


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory, assets: Path) -> dict:
    """A project with 9 photos of 3 people, a text file named .jpg (rejected by detect_align) and a
    copy of a photo under another person (rejected by pack), its four stages run uninterrupted; and a
    copy of it whose detect_align ran last with other settings."""
    root = tmp_path_factory.mktemp("crash") / "clean"
    photos = sorted((assets / "faces/deepface").glob("img*.jpg"))[:9]
    for i, photo in enumerate(photos):
        folder = root / "raw" / f"id{i % 3}"
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(photo, folder / photo.name)
    (root / "raw/id0/text.jpg").write_text("not a photo\n")
    shutil.copy(photos[0], root / "raw/id1/copy.jpg")
    (root / "params.yaml").write_text(PARAMS)
    (root / "other.yaml").write_text(OTHER)
    for stage in STAGES:
        assert _stage(root, stage) == 0
    outputs = {stage: _outputs(root, stage) for stage in STAGES}
    assert outputs["detect_align"]["report"]["rejected"] == 1
    assert outputs["pack"]["report"]["rejected"] == 1
    other = shutil.copytree(root, root.with_name("other"))
    assert _stage(other, "detect_align", params="other.yaml") == 0
    assert _outputs(other, "detect_align")["report"]["rejected"] > 1
    return {"root": root, "other": other, "outputs": outputs}


@pytest.mark.parametrize(("stage", "point"), POINTS, ids=lambda v: v)
def test_a_stage_killed_after_a_write_reruns_to_the_uninterrupted_outputs(
    clean: dict, tmp_path: Path, stage: str, point: str
) -> None:
    """Outputs removed, the stage killed at ``point``, then run again: its outputs equal the clean run's."""
    root = shutil.copytree(clean["root"], tmp_path / "p")
    shutil.rmtree(root / STAGES[stage])
    assert _stage(root, stage, fault=point) == FAULT_EXIT_CODE, f"{point} was never reached"
    assert (root / f"m/{stage}.json").exists() == (point == "report_written")  # no report of other shards
    assert _stage(root, stage) == 0
    assert _outputs(root, stage) == clean["outputs"][stage]


@pytest.mark.parametrize("point", OVER_OTHER_POINTS)
def test_detect_align_killed_over_the_shards_of_other_settings_reruns_to_the_uninterrupted_outputs(
    clean: dict, tmp_path: Path, point: str
) -> None:
    """Over the complete outputs of other settings (more rejections), a run killed at ``point`` while it
    replaces those shards, then a re-run: no shard keeps the other run's counts or rejections."""
    root = shutil.copytree(clean["other"], tmp_path / "p")
    assert _stage(root, "detect_align", fault=point) == FAULT_EXIT_CODE, f"{point} was never reached"
    assert (root / "m/detect_align.json").exists() == (point == "report_written")
    assert _stage(root, "detect_align") == 0
    assert _outputs(root, "detect_align") == clean["outputs"]["detect_align"]
