"""Publishing datasets: shards → Parquet export with a card, the round trip, the Hub calls, token hygiene.

No Hub exists here (``HF_HUB_OFFLINE=1``): what would be uploaded is checked as the local folder, and the
Hub calls on an ``HfApi`` spec (``create_autospec``). The shards are real faces: crops of the deepface
photos written with ``ShardSetWriter``.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import traceback
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from unittest.mock import ANY, create_autospec

import cv2
import datasets
import huggingface_hub.constants
import numpy as np
import pyarrow.parquet as pq
import pytest
import simplejpeg
import yaml
from huggingface_hub import HfApi, RepoUrl
from huggingface_hub.errors import OfflineModeIsEnabled
from huggingface_hub.utils import filter_repo_objects
from prefect.settings import PREFECT_HOME, PREFECT_RESULTS_LOCAL_STORAGE_PATH, temporary_settings
from prefect.testing.utilities import prefect_test_harness

from facekit.cli import main
from facekit.data.record import FaceRecord
from facekit.data.shards import ShardReader, ShardSetWriter, read_index, write_index
from facekit.hub.cards import LINEAGE_STAGES, write_dataset_card
from facekit.hub.datasets import (
    DELETE_PATTERNS,
    UPLOAD_PATTERNS,
    export_dataset,
    import_dataset,
    push_dataset,
    upload_plan,
)
from facekit.hub.tokens import HubError

CROP = 112
NUM_FACES = 7
FAKE_TOKEN = "hf_FakeTokenForTestsOnly0123456789abcd"
REPO_ID = "facekit-tests/faces"
PARAMS = {
    "sample": {"photos": "faces/deepface", "out": "data/raw/sample"},
    "source": {"type": "folder", "path": "data/raw/sample", "name": "sample", "layout": "vggface2"},
    "masks": {"fraction": 0.5, "seed": 0},
    "pack": {"max_shard_bytes": 2000000000, "dedupe": True},
    "download": {"workers": 16},  # not a lineage section: never on the card
}
STAGE_PARAMS = {"sample": ["sample"], "masks": ["masks"], "pack": ["pack"]}


def _md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


def _lock() -> dict:
    """A dvc.lock with a distinct md5 for every dependency and output of the lineage stages."""
    stages = {}
    for stage in LINEAGE_STAGES:
        deps = [{"path": f"facekit/stages/{stage}.py", "hash": "md5", "md5": _md5(f"dep-{stage}"), "size": 1}]
        outs = [{"path": f"data/{stage}", "hash": "md5", "md5": _md5(f"out-{stage}") + ".dir", "size": 2}]
        entry = {"cmd": f"facekit data {stage}", "deps": deps, "outs": outs}
        if stage in STAGE_PARAMS:
            entry["params"] = {"params.yaml": {s: PARAMS[s] for s in STAGE_PARAMS[stage]}}
        stages[stage] = entry
    return {"schema": "2.0", "stages": stages}


@pytest.fixture(autouse=True)
def datasets_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep the ``datasets`` Arrow cache of these tests out of the user's cache."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-datasets-cache")


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory, assets: Path) -> Path:
    """Packed shards (two part files, three LMDBs) of 112x112 crops of real photos with every field set:
    masked twins on half, one face without dense landmarks, one unlabelled."""
    folder = assets / "faces" / "deepface"
    with open(folder / "identities.csv", newline="") as f:
        rows = list(csv.DictReader(f))[:NUM_FACES]
    rng = np.random.default_rng(0)
    records = []
    for i, row in enumerate(rows):
        data = (folder / row["file"]).read_bytes()
        rgb = simplejpeg.decode_jpeg(data, colorspace="RGB", min_height=CROP, min_width=CROP)
        h, w = rgb.shape[:2]
        side = min(h, w)
        crop = cv2.resize(rgb[(h - side) // 2 :, (w - side) // 2 :][:side, :side], (CROP, CROP))
        masked = crop.copy()
        masked[CROP // 2 :] = (70, 110, 200)
        dense = (rng.random((468, 2)) * CROP).astype(np.float16)
        records.append(
            FaceRecord(
                key=f"sample/id{int(row['identity_id']):02d}/{Path(row['file']).stem}",
                image=simplejpeg.encode_jpeg(np.ascontiguousarray(crop), quality=95, colorspace="RGB"),
                identity=-1 if i == NUM_FACES - 1 else int(row["identity_id"]),
                landmarks=(rng.random((5, 2)) * CROP).astype(np.float32),
                bbox=np.array([10.5, 20.25, 300.0 + i, 400.0], np.float32),
                det_score=0.9 - i / 1000,  # float64: a float32 column would fail the round trip
                num_faces=1 + i % 2,
                source="sample",
                source_sha256=hashlib.sha256(data).hexdigest(),
                mask="N95" if i % 2 == 0 else None,
                masked_image=simplejpeg.encode_jpeg(masked, quality=95, colorspace="RGB") if i % 2 == 0 else None,
                extra={} if i == 2 else {"dense_landmarks": dense},
            )
        )
    out = tmp_path_factory.mktemp("shards")
    identities = [f"id{i:02d}" for i in range(13)]
    meta = {"identities": identities, "params_hash": "0123456789abcdef"}
    infos = []
    for part, chunk in enumerate((records[:4], records[4:])):
        with ShardSetWriter(out, f"part-{part:05d}", max_shard_bytes=3 * len(chunk[0].to_bytes()), meta=meta) as w:
            for record in chunk:
                w.put(record)
        infos += w.close()
    write_index(out, infos, identities=identities, params_hash="0123456789abcdef")
    return out


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A folder with the fixture's params.yaml and dvc.lock."""
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(PARAMS, sort_keys=False))
    (tmp_path / "dvc.lock").write_text(yaml.safe_dump(_lock(), sort_keys=False))
    return tmp_path


def _records(shards: Path) -> list[FaceRecord]:
    return [r for entry in read_index(shards)["shards"] for r in ShardReader(shards / entry["name"])]


def _export(shards: Path, project: Path, **kwargs: int) -> tuple[Path, datasets.Dataset]:
    out = project / "export"
    dataset = export_dataset(shards, out, **kwargs)
    write_dataset_card(
        out, dataset, shards, dvc_lock=project / "dvc.lock", params_path=project / "params.yaml", repo_id=REPO_ID
    )
    return out, dataset


def assert_same_record(got: FaceRecord, want: FaceRecord) -> None:
    assert got.key == want.key
    assert got.image == want.image and got.masked_image == want.masked_image
    assert (got.identity, got.det_score, got.num_faces) == (want.identity, want.det_score, want.num_faces)
    assert (got.mask, got.source, got.source_sha256) == (want.mask, want.source, want.source_sha256)
    for name in ("landmarks", "bbox"):
        a, b = getattr(got, name), getattr(want, name)
        assert a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b), name
    assert got.extra.keys() == want.extra.keys()
    for name, value in want.extra.items():
        assert got.extra[name].dtype == value.dtype and np.array_equal(got.extra[name], value), name
    assert got.to_bytes() == want.to_bytes()


def test_export_folder_and_card(shards: Path, project: Path) -> None:
    """The folder holds exactly the card and one Parquet file with the image bytes embedded; the card's
    YAML header parses and its body names the sources, params, every dvc.lock md5 and the counts."""
    out, dataset = _export(shards, project)
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert files == ["README.md", "data/train-00000-of-00001.parquet"]
    assert [name for name, _ in upload_plan(out)] == files
    records = _records(shards)
    table = pq.read_table(out / files[1])
    assert table.column("image").to_pylist() == [{"bytes": r.image, "path": None} for r in records]
    assert [m and m["bytes"] for m in table.column("masked_image").to_pylist()] == [r.masked_image for r in records]
    features = datasets.Features.from_arrow_schema(table.schema)
    assert isinstance(features["image"], datasets.Image) and features["identity"].names[:2] == ["id00", "id01"]
    assert features["dense_landmarks"] == datasets.Array2D((468, 2), "float16")

    text = (out / "README.md").read_text()
    _, header, body = text.split("---\n", 2)
    meta = yaml.safe_load(header)
    assert meta["license"] == "mit" and meta["size_categories"] == ["n<1K"]
    assert "faces" in meta["tags"] and meta["task_categories"] == ["image-classification", "image-feature-extraction"]
    assert meta["configs"] == [{"config_name": "default", "data_files": [{"split": "train", "path": "data/train-*"}]}]
    for entry in _lock()["stages"].values():
        for item in entry["deps"] + entry["outs"]:
            assert f"`{item['path']}` | `{item['md5']}`" in body
    for stage in LINEAGE_STAGES:
        assert f"`{stage}`: `facekit data {stage}`" in body
    assert "**0123456789abcdef**" in body and read_index(shards)["content_hash"] in body
    shown = yaml.safe_load(body.split("```yaml\n")[1].split("```")[0])
    assert shown == {k: v for k, v in PARAMS.items() if k != "download"}
    labelled = {r.identity for r in records if r.identity >= 0}
    for what, count in [("faces", NUM_FACES), ("identities", len(labelled)), ("unlabelled", 1), ("masked twins", 4)]:
        assert f"| {what} | {count} |" in body
    assert "| with dense landmarks | 6 |" in body and "| sample | deepface sample photos" in body
    assert f'load_dataset("{REPO_ID}", split="train")' in body
    assert dataset.num_rows == NUM_FACES


def test_round_trip(shards: Path, project: Path) -> None:
    """Importing the export (as ``load_dataset`` reads the folder) gives the shards' records, in order."""
    out, _ = _export(shards, project)
    got, want = list(import_dataset(out)), _records(shards)
    assert len(got) == len(want) == NUM_FACES
    for a, b in zip(got, want, strict=True):
        assert_same_record(a, b)


def test_export_splits_files_and_replaces_older_export(shards: Path, project: Path) -> None:
    """A small file limit splits the rows over numbered files (order kept); exporting again with one file
    leaves no stale file behind; a folder holding anything else is refused."""
    out, _ = _export(shards, project, max_file_bytes=4000)
    names = [name for name, _ in upload_plan(out)][1:]
    assert len(names) > 2 and names == [f"data/train-{i:05d}-of-{len(names):05d}.parquet" for i in range(len(names))]
    assert [r.key for r in import_dataset(out)] == [r.key for r in _records(shards)]
    export_dataset(shards, out)
    assert sorted(p.name for p in (out / "data").iterdir()) == ["train-00000-of-00001.parquet"]
    assert not (out / "README.md").exists()
    (project / "elsewhere").mkdir()
    (project / "elsewhere" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match=r"elsewhere.*notes\.txt"):
        export_dataset(shards, project / "elsewhere")


def test_card_checks_its_inputs(shards: Path, project: Path) -> None:
    """A lineage stage missing from dvc.lock, or params.yaml changed since DVC recorded it, is an error."""
    out = project / "export"
    dataset = export_dataset(shards, out)
    lock = _lock()
    del lock["stages"]["landmarks"]
    (project / "dvc.lock").write_text(yaml.safe_dump(lock))
    with pytest.raises(ValueError, match=r"dvc\.lock: stage 'landmarks' is not recorded"):
        write_dataset_card(out, dataset, shards, dvc_lock=project / "dvc.lock")
    (project / "dvc.lock").write_text(yaml.safe_dump(_lock()))
    changed = {**PARAMS, "masks": {**PARAMS["masks"], "fraction": 0.25}}
    (project / "params.yaml").write_text(yaml.safe_dump(changed))
    with pytest.raises(ValueError, match=r"section 'masks' differs from what dvc.lock recorded for stage 'masks'"):
        write_dataset_card(out, dataset, shards, dvc_lock=project / "dvc.lock", params_path=project / "params.yaml")
    with pytest.raises(FileNotFoundError, match=r"no dvc\.lock here"):
        write_dataset_card(out, dataset, shards, dvc_lock=project / "missing.lock")


def test_push_calls(shards: Path, project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """create_repo and upload_folder get exactly the repo, type, folder, visibility and token; the upload
    patterns select exactly the planned files (by huggingface_hub's own filter)."""
    out, _ = _export(shards, project)
    (out / "stray.txt").write_text("not uploaded")
    api = create_autospec(HfApi, instance=True)
    api.create_repo.return_value = RepoUrl(f"https://huggingface.co/datasets/{REPO_ID}")
    url = push_dataset(out, REPO_ID, api=api, token=FAKE_TOKEN)
    assert url == f"https://huggingface.co/datasets/{REPO_ID}"
    api.create_repo.assert_called_once_with(
        repo_id=REPO_ID, repo_type="dataset", private=True, exist_ok=True, token=FAKE_TOKEN
    )
    api.upload_folder.assert_called_once_with(
        repo_id=REPO_ID,
        repo_type="dataset",
        folder_path=out,
        allow_patterns=list(UPLOAD_PATTERNS),
        delete_patterns=list(DELETE_PATTERNS),
        commit_message=ANY,
        token=FAKE_TOKEN,
    )
    local = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    selected = list(filter_repo_objects(local, allow_patterns=list(UPLOAD_PATTERNS)))
    assert sorted(selected) == sorted(name for name, _ in upload_plan(out)) and "stray.txt" not in selected

    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN + "env")
    public = create_autospec(HfApi, instance=True)
    push_dataset(out, REPO_ID, private=False, api=public)
    assert public.create_repo.call_args.kwargs["private"] is False
    assert public.create_repo.call_args.kwargs["token"] == FAKE_TOKEN + "env"

    monkeypatch.delenv("HF_TOKEN")
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(project / "no-token"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_STORED_TOKENS_PATH", str(project / "no-tokens"))
    with pytest.raises(HubError, match="no Hugging Face token"):
        push_dataset(out, REPO_ID, api=create_autospec(HfApi, instance=True))
    with pytest.raises(ValueError, match="invalid Hub repo id"):
        push_dataset(out, "not a repo", api=api, token=FAKE_TOKEN)


def test_token_never_leaks(
    shards: Path,
    project: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A Hub error that echoes the token, the real (offline) HfApi and the CLI: the token appears in no
    exception text or traceback, no log record, no stdout/stderr and not in the card."""
    caplog.set_level(logging.DEBUG)
    out, _ = _export(shards, project)
    api = create_autospec(HfApi, instance=True)
    api.create_repo.side_effect = ConnectionError(f"refused: headers {{'authorization': 'Bearer {FAKE_TOKEN}'}}")
    with pytest.raises(HubError) as echoed:
        push_dataset(out, REPO_ID, api=api, token=FAKE_TOKEN)
    assert echoed.value.transient and "ConnectionError" in str(echoed.value)
    assert echoed.value.__cause__ is None and echoed.value.__context__ is None
    with pytest.raises(HubError) as offline:
        push_dataset(out, REPO_ID, token=FAKE_TOKEN)  # the real HfApi; HF_HUB_OFFLINE=1
    assert not offline.value.transient and "OfflineModeIsEnabled" in str(offline.value)

    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    export = project / "cli-export"
    common = ["--shards", str(shards), "--export", str(export), "--params", str(project / "params.yaml")]
    assert main(["push", "dataset", REPO_ID, *common, "--dvc-lock", str(project / "dvc.lock")]) == 2
    captured = capsys.readouterr()
    assert "OfflineModeIsEnabled" in captured.err
    texts = [
        *(str(e.value) + "".join(traceback.format_exception(e.value)) for e in (echoed, offline)),
        captured.out + captured.err,
        *(r.getMessage() + str(r.args) for r in caplog.records),
        (out / "README.md").read_text() + (export / "README.md").read_text(),
    ]
    assert caplog.records and all(FAKE_TOKEN not in text for text in texts)


def test_cli_dry_run(shards: Path, project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``facekit push dataset --dry-run`` builds the folder and card and lists the files, uploading nothing."""
    export = project / "dry"
    argv = ["push", "dataset", REPO_ID, "--shards", str(shards), "--export", str(export)]
    argv += ["--dvc-lock", str(project / "dvc.lock"), "--params", str(project / "params.yaml"), "--dry-run"]
    assert main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(" (")[0] for line in lines[:2]] == [
        "would upload README.md",
        "would upload data/train-00000-of-00001.parquet",
    ]
    assert lines[2].startswith(f"push dataset: dry run, {NUM_FACES} faces in {export} -> {REPO_ID} (private)")
    assert [r.key for r in import_dataset(export)] == [r.key for r in _records(shards)]
    assert main(["push", "dataset", REPO_ID, "--shards", str(project), "--dry-run"]) == 2
    assert "no shard index here" in capsys.readouterr().err


@pytest.fixture(scope="module")
def prefect_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """A real local Prefect server (Prefect's test harness) with its home in a temporary folder."""
    home = tmp_path_factory.mktemp("prefect-home")
    settings = {PREFECT_HOME: home, PREFECT_RESULTS_LOCAL_STORAGE_PATH: home / "results"}
    with temporary_settings(updates=settings), prefect_test_harness(server_startup_timeout=60):
        yield


def test_flow_dry_run_and_retries(
    prefect_api: None, shards: Path, project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ``push-dataset`` flow: a dry run builds the folder and uploads nothing; a transient Hub failure
    is retried and the push completes; a permanent one (offline) fails after one attempt."""
    import workflows.push_dataset as flow_module

    kwargs = {
        "repo_id": REPO_ID,
        "shards": str(shards),
        "export_dir": str(project / "flow-export"),
        "dvc_lock": str(project / "dvc.lock"),
        "params_path": str(project / "params.yaml"),
    }
    summary = flow_module.push_dataset(**kwargs, dry_run=True)
    assert summary["url"] is None and summary["faces"] == NUM_FACES
    assert summary["files"] == [list(entry) for entry in upload_plan(project / "flow-export")]

    api = create_autospec(HfApi, instance=True)
    url = RepoUrl(f"https://huggingface.co/datasets/{REPO_ID}")
    api.create_repo.side_effect = [ConnectionError("connection reset"), url]
    monkeypatch.setattr(flow_module, "upload", flow_module.upload.with_options(retry_delay_seconds=0))
    monkeypatch.setattr(flow_module, "push_export", partial(push_dataset, api=api, token=FAKE_TOKEN))
    assert flow_module.push_dataset(**kwargs, public=True)["url"] == str(url)
    assert api.create_repo.call_count == 2 and api.create_repo.call_args.kwargs["private"] is False
    api.upload_folder.assert_called_once()

    offline = create_autospec(HfApi, instance=True)
    offline.create_repo.side_effect = OfflineModeIsEnabled("offline mode is enabled")
    monkeypatch.setattr(flow_module, "push_export", partial(push_dataset, api=offline, token=FAKE_TOKEN))
    with pytest.raises(HubError, match="OfflineModeIsEnabled"):
        flow_module.push_dataset(**kwargs)
    assert offline.create_repo.call_count == 1
