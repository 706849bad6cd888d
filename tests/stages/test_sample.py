"""The sample stage lays out either shared photo set as identity folders, and names a bad table."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from facekit.assets import assets_root
from facekit.config import SampleParams
from facekit.stages.sample import COPY_MTIME, run_sample


def test_the_medium_photos_become_one_folder_per_person(tmp_path: Path) -> None:
    table = assets_root() / "faces/celeba_medium/identities.csv"
    with table.open(newline="") as f:
        rows = list(csv.DictReader(f))
    report = run_sample(SampleParams(photos="faces/celeba_medium", out=str(tmp_path / "raw")), assets_root())
    assert (report.read, report.written, report.rejected) == (2078, 2078, 0)
    folders = sorted(p.name for p in (tmp_path / "raw").iterdir())
    assert folders == sorted({r["identity"] for r in rows}) and len(folders) == 291
    first = rows[0]
    copied = tmp_path / "raw" / first["identity"] / Path(first["file"]).name
    assert copied.read_bytes() == (table.parent / first["file"]).read_bytes()
    assert {p.stat().st_mtime for p in (tmp_path / "raw").rglob("*.jpg")} == {COPY_MTIME}  # the same scan anywhere


def test_the_deepface_photos_keep_their_numbered_folders(tmp_path: Path) -> None:
    report = run_sample(SampleParams(photos="faces/deepface", out=str(tmp_path / "raw")), assets_root())
    assert (report.read, report.written) == (61, 61)
    assert len(list((tmp_path / "raw").glob("id*/*"))) == 61 and (tmp_path / "raw/id00").is_dir()


def test_a_table_without_an_identity_column_is_named(tmp_path: Path) -> None:
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos/identities.csv").write_text("file,person\na.jpg,x\n")
    with pytest.raises(ValueError, match=r"identities\.csv: needs the columns file and identity_id"):
        run_sample(SampleParams(photos="photos", out=str(tmp_path / "raw")), tmp_path)
