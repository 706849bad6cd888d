"""The ``sample`` stage: a set of shared photos, laid out as identity folders.

``<assets>/<photos>/identities.csv`` names each photo and its person, either ``file,identity_id``
(``faces/deepface``: 61 photos of 13 people, copied to ``<out>/id<NN>/<file>``) or ``file,identity``
(``faces/celeba_medium``: copied to ``<out>/<identity>/<file name>``), the VGGFace2 / WebFace layout
the folder source reads. Each copy gets the fixed modification time :data:`COPY_MTIME`, so the ``scan``
manifest, and with it every hash in ``dvc.lock``, is the same on every machine. A real user points
``source`` in params.yaml at VGGFace2, WebFace or a ``.rec`` instead.
"""

from __future__ import annotations

import csv
import os
import shutil
from pathlib import Path

from facekit.assets import assets_root
from facekit.config import Params, PathsParams, SampleParams
from facekit.data.report import StageReport

COPY_MTIME = 946_684_800  # 2000-01-01T00:00:00Z: the sample's copies look the same wherever they are made


def run_sample(params: SampleParams, assets: Path, out: Path | None = None) -> StageReport:
    """Copy the identity photos; a listed photo that is missing is rejected with ``missing_file``."""
    photos = assets / params.photos
    table = photos / "identities.csv"
    if not table.is_file():
        raise FileNotFoundError(f"sample identity table not found: {table}")
    out = Path(params.out) if out is None else out
    if out.exists():
        shutil.rmtree(out)
    report = StageReport("sample")
    with table.open(newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    columns = set(reader.fieldnames or ())
    if "file" not in columns or not columns & {"identity_id", "identity"}:
        raise ValueError(f"{table}: needs the columns file and identity_id (or identity), found {sorted(columns)}")
    for row in rows:
        report.read += 1
        src = photos / row["file"]
        if not src.is_file():
            report.reject(row["file"], "missing_file", str(src))
            continue
        if "identity_id" in row:
            dst = out / f"id{int(row['identity_id']):02d}" / row["file"]
        else:
            dst = out / row["identity"] / Path(row["file"]).name
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
        os.utime(dst, (COPY_MTIME, COPY_MTIME))
        report.written += 1
    return report.check()


def run(params: Params, paths: PathsParams) -> StageReport:
    """The stage: the sample photos from the assets folder into ``params.sample.out``, the report
    ``<metrics>/sample.json``."""
    result = run_sample(params.sample, assets_root())
    result.write(paths.report("sample"))
    return result
