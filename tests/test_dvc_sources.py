"""`dvc repro` of the data stages on sources unlike the sample, in a temporary git repository: a folder of 30
kinds of bad input, and a user's own folder of small greyscale PGM faces with nothing changed but `source`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from facekit.config import AlignParams, DetectParams
from facekit.data.images import decode_jpeg_rgb
from facekit.data.ops.detect_align import align_record
from facekit.data.record import FaceRecord, RawRecord
from facekit.stages.scan import read_manifest

PROJECT = Path(__file__).resolve().parents[1]
DATA = ("sample", "scan", "detect_align", "landmarks", "masks", "pack")


def _dvc(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1"}
    return subprocess.run([str(bin_dir / "dvc"), *args], cwd=repo, env=env, capture_output=True, text=True, timeout=600)


def _project(repo: Path, source: dict[str, str], stages: tuple[str, ...]) -> Path:
    """A git repo with the project's code, its dvc.yaml cut to ``stages`` and its params.yaml with ``source``
    replaced: the one change a user makes."""
    repo.mkdir()
    pipeline = yaml.safe_load((PROJECT / "dvc.yaml").read_text())
    pipeline["stages"] = {name: stage for name, stage in pipeline["stages"].items() if name in stages}
    (repo / "dvc.yaml").write_text(yaml.safe_dump(pipeline, sort_keys=False))
    params = yaml.safe_load((PROJECT / "params.yaml").read_text())
    params["source"] = source
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for name in (".dvcignore", ".gitignore"):
        shutil.copy(PROJECT / name, repo / name)
    shutil.copytree(PROJECT / ".dvc", repo / ".dvc", ignore=shutil.ignore_patterns("tmp", "cache"))
    shutil.copytree(PROJECT / "facekit", repo / "facekit", ignore=shutil.ignore_patterns("__pycache__"))
    for cmd in (["init", "-q"], ["add", "-A"], ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "c"]):
        subprocess.run(["git", *cmd], cwd=repo, check=True, capture_output=True)
    return repo


def _ran(output: str, stages: tuple[str, ...]) -> set[str]:
    return {s for s in stages if f"Running stage '{s}'" in output}


def _report(repo: Path, stage: str) -> dict:
    return json.loads((repo / f"metrics/{stage}.json").read_text())


def test_a_folder_of_bad_input_goes_through_dvc_and_every_file_is_accounted_for(
    tmp_path: Path, bad_input_folder: Callable[[Path], dict[str, str | None]]
) -> None:
    expected = bad_input_folder(tmp_path / "raw")
    repo = _project(tmp_path / "repo", {"type": "folder", "path": str(tmp_path / "raw"), "name": "bad"}, DATA)
    first = _dvc(repo, "repro")
    assert first.returncode == 0, first.stdout + first.stderr
    assert _ran(first.stdout, DATA) == set(DATA)
    assert "is empty" not in first.stdout + first.stderr  # a clean stage raises no alarm
    on_disk = read_manifest(repo / "data/source_manifest.jsonl")
    reports = {stage: _report(repo, stage) for stage in DATA if stage != "scan"}
    for stage, report in reports.items():
        assert report["read"] == report["written"] + report["rejected"], stage
        lines = (repo / f"metrics/{stage}.rejections.jsonl").read_text().splitlines()
        assert json.loads(lines[0])["rejected"] == report["rejected"] == len(lines) - 1
    assert reports["detect_align"]["read"] == len(on_disk) == len(expected) >= 25
    assert reports["landmarks"]["read"] == reports["detect_align"]["written"]
    assert reports["masks"]["read"] == reports["landmarks"]["written"]
    assert reports["pack"]["read"] == reports["masks"]["written"]
    rejected: dict[str, str] = {}
    for stage in ("detect_align", "pack"):
        for line in (repo / f"metrics/{stage}.rejections.jsonl").read_text().splitlines()[1:]:
            record = json.loads(line)
            assert record["detail"], record
            rejected[record["key"].rsplit("/", 1)[-1]] = record["reason"]
    assert {k: v for k, v in expected.items() if v} == rejected

    second = _dvc(repo, "repro")  # only the scan (a stat per entry) runs; its unchanged manifest keeps the rest
    assert second.returncode == 0, second.stderr
    assert _ran(second.stdout, DATA) == {"scan"}
    status = _dvc(repo, "status")
    assert status.stdout.split() == ["scan:", "always", "changed"], status.stdout
    (tmp_path / "raw/a/ok.jpg").unlink()  # the source changes: the scan sees it, detect_align runs again
    third = _dvc(repo, "repro")
    assert third.returncode == 0, third.stderr
    assert {"scan", "detect_align"} <= _ran(third.stdout, DATA)
    assert _report(repo, "detect_align")["read"] == len(expected) - 1


def _pgm_faces(root: Path, assets: Path, identities: int = 6, per_identity: int = 5) -> int:
    """92 x 112 greyscale PGM crops (AT&T / ORL style) of CelebA people: ``s<N>/<M>.pgm``; returns the count."""
    count = 0
    folders = sorted(p for p in (assets / "faces/celeba_medium").iterdir() if p.is_dir())
    for n, folder in enumerate(folders[:identities], start=1):
        (root / f"s{n}").mkdir(parents=True)
        for m, photo in enumerate(sorted(folder.glob("*.jpg"))[:per_identity], start=1):
            raw = RawRecord(key=photo.name, data=photo.read_bytes(), identity=0)
            face = align_record(raw, DetectParams(), AlignParams(size=112, face_fraction=0.7))
            assert isinstance(face, FaceRecord), face
            crop = decode_jpeg_rgb(face.image)[:, 10:102]
            Image.fromarray(np.asarray(crop)).convert("L").save(root / f"s{n}" / f"{m}.pgm")
            count += 1
    return count


def test_a_users_own_folder_of_small_pgm_faces_needs_only_source(tmp_path: Path, assets: Path) -> None:
    """The README's "use your own data": `source` pointed at the folder, nothing else changed."""
    photos = _pgm_faces(tmp_path / "faces", assets)
    stages = (*DATA, "split", "eval_sets")
    repo = _project(tmp_path / "repo", {"type": "folder", "path": str(tmp_path / "faces"), "name": "mine"}, stages)
    run = _dvc(repo, "repro")
    assert run.returncode == 0, run.stdout + run.stderr
    assert _ran(run.stdout, stages) == set(stages)
    detected = _report(repo, "detect_align")
    assert detected["read"] == photos and detected["written"] >= photos - 2, detected
    packed = _report(repo, "pack")
    assert packed["read"] == packed["written"] + packed["rejected"] and packed["written"] >= photos - 4
    sets = _report(repo, "eval_sets")
    assert (repo / "data/eval/sample.bin").is_file(), sets
