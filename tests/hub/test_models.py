"""Publishing models: run folder → model folder with a card, the round trip, the Hub calls, token hygiene.

No Hub exists here (``HF_HUB_OFFLINE=1``): what would be uploaded is checked as the local folder, the Hub
calls on an ``HfApi`` spec (``create_autospec``) and downloads through a stand-in ``snapshot_download``.
The run folder holds a tiny ViT exported as pre-training exports it; the round trip embeds a real face.
"""

from __future__ import annotations

import hashlib
import json
import logging
import traceback
from pathlib import Path
from unittest.mock import ANY, create_autospec

import cv2
import huggingface_hub.constants
import pytest
import torch
import yaml
from huggingface_hub import HfApi, ModelCard, RepoUrl, metadata_load
from huggingface_hub.utils import filter_repo_objects

import facekit.hub.models as models
from facekit import __version__
from facekit.cli import main
from facekit.data.augment import normalize_to_tensor
from facekit.data.ops.align import align_face
from facekit.data.ops.detect import create_detector, select_face
from facekit.data.views import IMAGENET_MEAN, IMAGENET_STD
from facekit.eval.benchmarks import write_metrics
from facekit.eval.verification import far_key
from facekit.hub.cards import LINEAGE_STAGES
from facekit.hub.models import MODEL_FILES, from_pretrained, model_files, push_model, save_model_folder
from facekit.hub.tokens import HubError
from facekit.nn import backbones
from facekit.nn.backbones import BACKBONES

FAKE_TOKEN = "hf_FakeTokenForTestsOnly0123456789abcd"
REPO_ID = "facekit-tests/tiny-vit"
RUN = "tiny"
KWARGS = {"img_size": 112, "depth": 1, "embed_dim": 64, "num_heads": 2}
PARAMS = {
    "sample": {"photos": "faces/deepface", "out": "data/raw/sample"},
    "masks": {"fraction": 0.5, "seed": 0},
    "pretrain": {"train": {"epochs": 2, "lr": 0.001}, "runs": {RUN: {"method": "mae"}, "other": {"method": "mcf"}}},
    "finetune": {"runs": {RUN: {"epochs": 1}}},
}
#: What DVC records per stage (dotted names for foreach stages' parameters).
STAGE_PARAMS = {
    "sample": {"sample": PARAMS["sample"]},
    "masks": {"masks": PARAMS["masks"]},
    f"pretrain@{RUN}": {"pretrain.train": PARAMS["pretrain"]["train"], f"pretrain.runs.{RUN}": {"method": "mae"}},
    f"finetune@{RUN}": {f"finetune.runs.{RUN}": {"epochs": 1}},
}
PRETRAINED, FINETUNED = f"runs/pretrain/{RUN}", f"runs/finetune/{RUN}"
VERIFY_METRICS = f"metrics/verify/{RUN}.json"
#: (deps, outs) of the run stages besides their source files, as dvc.yaml's foreach stages record them.
RUN_STAGE_PATHS = {
    f"pretrain@{RUN}": (["out/pack"], [PRETRAINED]),
    f"finetune@{RUN}": (["out/pack", PRETRAINED], [FINETUNED]),
    f"verify@{RUN}": ([FINETUNED], [VERIFY_METRICS]),
    "pretrain@other": (["out/pack"], ["runs/pretrain/other"]),
}
#: Two sets as the verify stage writes them (write_metrics, far_key).
METRICS = {
    "sample": {"accuracy": 0.985714, "accuracy_std": 0.012345, "pairs": 280, "auc": 0.99,
               far_key(1e-2): 0.914286, far_key(1e-1): 0.971429},
    "sample_masked": {"accuracy": 0.871429, "accuracy_std": 0.054321, "pairs": 280, far_key(1e-1): 0.6},
}  # fmt: skip


def _md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


def _lock() -> dict:
    """A dvc.lock with the data stages, the run's pretrain / finetune / verify stages and another run's,
    with a distinct md5 for every (stage, path)."""
    paths = {stage: ([f"src/{stage}"], [f"out/{stage}"]) for stage in LINEAGE_STAGES}
    paths |= {stage: ([f"src/{stage}", *deps], outs) for stage, (deps, outs) in RUN_STAGE_PATHS.items()}
    stages = {}
    for stage, (dep_paths, out_paths) in paths.items():
        deps = [{"path": path, "hash": "md5", "md5": _md5(f"{stage}:{path}"), "size": 1} for path in dep_paths]
        outs = [{"path": path, "hash": "md5", "md5": _md5(f"{stage}:{path}") + ".dir", "size": 2} for path in out_paths]
        entry = {"cmd": f"run {stage}", "deps": deps, "outs": outs}
        if stage in STAGE_PARAMS:
            entry["params"] = {"params.yaml": STAGE_PARAMS[stage]}
        stages[stage] = entry
    return {"schema": "2.0", "stages": stages}


def _export_run(out: Path, seed: int, method: str = "mae", **kwargs: int) -> Path:
    torch.manual_seed(seed)
    backbone = BACKBONES.create("vit_small_patch16_224", **{**KWARGS, **kwargs})
    backbones.save(backbone, backbones.spec_of(backbone, run=RUN, method=method), out)
    return out


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A project folder: params.yaml, dvc.lock, the run's pre-training and fine-tuning folders (tiny ViTs
    exported as the stages export them) and its verification metrics."""
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(PARAMS, sort_keys=False))
    (tmp_path / "dvc.lock").write_text(yaml.safe_dump(_lock(), sort_keys=False))
    _export_run(tmp_path / PRETRAINED, seed=0)
    _export_run(tmp_path / FINETUNED, seed=1, method="finetune")
    write_metrics(METRICS, tmp_path / VERIFY_METRICS)
    return tmp_path


@pytest.fixture
def run_dir(project: Path) -> Path:
    """The fine-tuned run folder: backbone.safetensors + backbone.json."""
    return project / FINETUNED


def _save(run_dir: Path, project: Path, out: str = "model") -> Path:
    return save_model_folder(
        run_dir,
        project / out,
        [project / VERIFY_METRICS],
        project / "dvc.lock",
        project / "params.yaml",
        license="mit",
        repo_id=REPO_ID,
    )


def _argv(run_dir: Path, project: Path) -> list[str]:
    """``facekit push model`` arguments for the run with the project's metrics, lineage and params."""
    metrics = str(project / VERIFY_METRICS)
    lineage = ["--dvc-lock", str(project / "dvc.lock"), "--params", str(project / "params.yaml")]
    return ["push", "model", str(run_dir), "--repo-id", REPO_ID, "--metrics", metrics, *lineage]


def test_model_folder_and_card(run_dir: Path, project: Path) -> None:
    """The folder holds exactly weights (the run's bytes), config and card; the card's front-matter parses
    with the verification results as a model-index, and its body has the table, usage, parameters and
    the md5 of every input and output of the data stages and this run's stages (not another run's)."""
    folder = _save(run_dir, project)
    assert sorted(p.name for p in folder.iterdir()) == sorted(MODEL_FILES)
    assert (folder / "model.safetensors").read_bytes() == (run_dir / "backbone.safetensors").read_bytes()
    config = json.loads((folder / "config.json").read_text())
    assert config == {
        "library_name": "facekit",
        "facekit_version": __version__,
        "registry": "facekit.nn.backbones:BACKBONES",
        "backbone": "vit_small_patch16_224",
        "kwargs": KWARGS,
        "input_size": 112,
        "mean": [0.5, 0.5, 0.5],
        "std": [0.5, 0.5, 0.5],
        "embedding_size": 64,
        "num_parameters": sum(p.numel() for p in backbones.load(run_dir).parameters()),
        "landmark_input": False,
        "run": RUN,
        "method": "finetune",
    }

    meta = metadata_load(folder / "README.md")
    assert meta["library_name"] == "facekit" and meta["license"] == "mit"
    assert {"face-recognition", "facekit", "vit_small_patch16_224", "finetune"} <= set(meta["tags"])
    assert meta["model-index"][0]["name"] == "tiny-vit"
    card = ModelCard.load(folder / "README.md")
    got = {(r.dataset_name, r.metric_type, r.metric_value) for r in card.data.eval_results}
    assert got == {
        ("sample", "accuracy", 0.985714),
        ("sample", "tar_at_far_1e-2", 0.914286),
        ("sample", "tar_at_far_1e-1", 0.971429),
        ("sample_masked", "accuracy", 0.871429),
        ("sample_masked", "tar_at_far_1e-1", 0.6),
    }
    body = card.text
    assert "| set | pairs | accuracy | TAR@FAR=1e-2 | TAR@FAR=1e-1 |" in body
    assert "| sample | 280 | 0.9857 ± 0.0123 | 0.9143 | 0.9714 |" in body
    assert "| sample_masked | 280 | 0.8714 ± 0.0543 | – | 0.6000 |" in body
    assert f'from_pretrained("{REPO_ID}")' in body and VERIFY_METRICS in body
    assert _lineage_rows(body) == _lock_rows(exclude="pretrain@other")
    shown = yaml.safe_load(body.split("```yaml\n")[1].split("```")[0])
    assert shown == {"sample": PARAMS["sample"], "masks": PARAMS["masks"], **STAGE_PARAMS[f"pretrain@{RUN}"]} | {
        f"finetune.runs.{RUN}": {"epochs": 1}
    }
    assert "trained outside DVC" not in body


def test_config_and_card_give_the_normalisation_the_run_records(project: Path) -> None:
    """A pre-training export with ImageNet statistics (MAE's views) is published with them, in config.json and
    in the card's usage code, not with fine-tuning's [−1, 1]."""
    run = project / PRETRAINED
    spec = json.loads((run / "backbone.json").read_text())
    (run / "backbone.json").write_text(json.dumps({**spec, "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}))
    folder = _save(run, project, "pretrained_model")
    config = json.loads((folder / "config.json").read_text())
    assert (config["mean"], config["std"]) == (list(IMAGENET_MEAN), list(IMAGENET_STD))
    assert (
        f"torch.tensor({list(IMAGENET_MEAN)}), torch.tensor({list(IMAGENET_STD)})" in (folder / "README.md").read_text()
    )


def _lock_rows(exclude: str) -> set[tuple[str, str, str, str]]:
    """(stage, dep|out, path, md5) of every recorded file of the stages that do not start with ``exclude``."""
    return {
        (stage, kind[:-1], item["path"], item["md5"])
        for stage, entry in _lock()["stages"].items()
        if not stage.startswith(exclude)
        for kind in ("deps", "outs")
        for item in entry[kind]
    }


def _lineage_rows(body: str) -> set[tuple[str, str, str, str]]:
    """The rows of the card's lineage table."""
    table = body.split("| stage | kind | path | md5 |\n|---|---|---|---|\n")[1].split("\n\n")[0]
    return {tuple(cell.strip().strip("`") for cell in line.strip("|").split("|")) for line in table.splitlines()}


def test_pretrained_run_lineage_stops_at_the_run(project: Path) -> None:
    """Publishing the pre-training run of the same name leaves out the fine-tuning and verification that
    came after it (and the other run), keeping the data stages and its own stage."""
    folder = save_model_folder(project / PRETRAINED, project / "m", [], project / "dvc.lock", project / "params.yaml")
    body = (folder / "README.md").read_text()
    assert _lineage_rows(body) == _lock_rows(exclude=("pretrain@other", f"finetune@{RUN}", f"verify@{RUN}"))
    assert "finetune.runs" not in body and f"pretrain.runs.{RUN}" in body


def _aligned_face(assets: Path) -> torch.Tensor:
    """A real face, detected and aligned onto the ArcFace template: float32 [1, 3, 112, 112], mean/std 0.5."""
    detector = create_detector("scrfd", assets / "models/scrfd_500m_bnkps.onnx")
    img = cv2.imread(str(assets / "faces/deepface/img1.jpg"))
    dets = detector.detect(img)
    crop, _ = align_face(img, dets.landmarks[select_face(dets, min_size=20)], size=112)
    return normalize_to_tensor(cv2.cvtColor(crop, cv2.COLOR_BGR2RGB), (0.5,) * 3, (0.5,) * 3)[None]


def test_from_pretrained_round_trip(run_dir: Path, project: Path, assets: Path) -> None:
    """The published folder embeds a real face exactly as the run folder's backbone does (and not as
    other weights do); it comes back in eval mode and takes a str path too."""
    folder = _save(run_dir, project)
    face = _aligned_face(assets)
    model = from_pretrained(str(folder))
    assert not model.training
    with torch.no_grad():
        got = model(face)
        want = backbones.load(run_dir).eval()(face)
        other = backbones.load(project / PRETRAINED).eval()(face)  # the same network, other weights
    assert got.shape == (1, 64) and torch.isfinite(got).all()
    assert torch.equal(got, want)
    assert not torch.allclose(got, other, atol=1e-3)


def test_from_pretrained_downloads_repo(run_dir: Path, project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A repo id goes through snapshot_download with the revision, cache and token, fetching only the
    config and weights; a failed download is a redacted HubError; a bad name is refused clearly."""
    folder = _save(run_dir, project)
    calls = []

    def fake_download(repo_id: str, **kwargs: object) -> str:
        calls.append((repo_id, kwargs))
        return str(folder)

    monkeypatch.setattr(models, "snapshot_download", fake_download)
    model = from_pretrained(REPO_ID, revision="v1", cache_dir=project / "cache", token=FAKE_TOKEN)
    assert calls == [
        (
            REPO_ID,
            {
                "revision": "v1",
                "cache_dir": project / "cache",
                "token": FAKE_TOKEN,
                "allow_patterns": ["config.json", "model.safetensors"],
            },
        )
    ]
    assert model(torch.zeros(2, 3, 112, 112)).shape == (2, 64)

    monkeypatch.undo()  # the real snapshot_download, offline with an empty cache
    with pytest.raises(HubError, match=f"download model {REPO_ID} failed") as offline:
        from_pretrained(REPO_ID, cache_dir=project / "empty-cache", token=FAKE_TOKEN)
    assert FAKE_TOKEN not in str(offline.value) and offline.value.__context__ is None
    with pytest.raises(ValueError, match="no such model folder, and invalid Hub repo id"):
        from_pretrained(str(project / "missing" / "model"))
    with pytest.raises(FileNotFoundError, match="not a facekit model folder"):
        from_pretrained(project / "metrics")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "registry": "os:path"}))
    with pytest.raises(ValueError, match="registry 'os:path' is not a facekit registry"):
        from_pretrained(folder)


def test_bad_inputs_are_refused(run_dir: Path, project: Path, tmp_path: Path) -> None:
    """No backbone spec, no weights, weights of another shape, malformed metrics, params changed since
    DVC recorded them, or an output folder holding other files: each refused with a message naming it."""
    metrics = project / "metrics" / "bad.json"
    save = [run_dir, project / "out", [metrics], project / "dvc.lock", project / "params.yaml"]
    with pytest.raises(FileNotFoundError, match=r"backbone\.json not found: not a trained run folder"):
        save_model_folder(project, project / "out")
    no_weights = tmp_path / "no-weights"
    no_weights.mkdir()
    (no_weights / "backbone.json").write_text((run_dir / "backbone.json").read_text())
    with pytest.raises(FileNotFoundError, match="has a backbone spec but no weights"):
        save_model_folder(no_weights, project / "out")
    wrong = _export_run(tmp_path / "wrong", seed=0, embed_dim=32)
    spec = json.loads((wrong / "backbone.json").read_text())
    (wrong / "backbone.json").write_text(json.dumps({**spec, "kwargs": KWARGS}))
    with pytest.raises(ValueError, match="cannot load into vit_small_patch16_224"):
        save_model_folder(wrong, project / "out")

    for text, message in [
        ("{not json", "not valid JSON"),
        ("[]", "expected a JSON object"),
        ('{"lfw": {"accuracy": "high"}}', "set 'lfw' is not a mapping of metric names to numbers"),
        ('{"lfw": {"auc": 0.9}}', "set 'lfw' has no 'accuracy'"),
        ('{"lfw": {"accuracy": 0.9, "tar_at_far_x": 0.5}}', "'tar_at_far_x' names no FAR"),
        ('{"sample": {"accuracy": 0.9}}', "set 'sample' also comes from an earlier metrics file"),
    ]:
        metrics.write_text(text)
        files = [project / VERIFY_METRICS, metrics]
        with pytest.raises(ValueError, match=message):
            save_model_folder(run_dir, project / "out", files)
    with pytest.raises(FileNotFoundError, match="metrics file not found"):
        save_model_folder(run_dir, project / "out", [project / "missing.json"])

    metrics.write_text(json.dumps({"lfw": {"accuracy": 0.9}}))
    changed = {**PARAMS, "pretrain": {**PARAMS["pretrain"], "train": {"epochs": 3, "lr": 0.001}}}
    (project / "params.yaml").write_text(yaml.safe_dump(changed))
    recorded = rf"'pretrain\.train' differs from what dvc\.lock recorded for stage 'pretrain@{RUN}'"
    with pytest.raises(ValueError, match=recorded):
        save_model_folder(*save)
    (project / "params.yaml").write_text(yaml.safe_dump(PARAMS))
    (project / "out").mkdir()
    (project / "out" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match=r"out: not an earlier model folder \(holds \['notes\.txt'\]\)"):
        save_model_folder(*save)
    assert not (project / "out" / "config.json").exists()


def test_card_notes_a_run_outside_dvc(project: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    """A run folder that no stage of dvc.lock wrote (trained outside DVC, though its name has stages) keeps
    only the data lineage, and the card says so."""
    elsewhere = _export_run(tmp_path_factory.mktemp("elsewhere") / RUN, seed=0)
    card = save_model_folder(elsewhere, project / "m", [], project / "dvc.lock") / "README.md"
    body = ModelCard.load(card).text
    assert _lineage_rows(body) == _lock_rows(exclude=("pretrain@", "finetune@", "verify@"))
    assert f"The run `{RUN}` itself is not in `dvc.lock`" in body
    assert "No verification results" in body and "model-index" not in (project / "m" / "README.md").read_text()


def test_push_calls(run_dir: Path, project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """create_repo and upload_folder get exactly the repo, type, folder, visibility and token; the upload
    patterns select exactly the three model files (by huggingface_hub's own filter)."""
    folder = _save(run_dir, project)
    (folder / "stray.txt").write_text("not uploaded")
    api = create_autospec(HfApi, instance=True)
    api.create_repo.return_value = RepoUrl(f"https://huggingface.co/{REPO_ID}")
    assert push_model(folder, REPO_ID, api=api, token=FAKE_TOKEN) == f"https://huggingface.co/{REPO_ID}"
    api.create_repo.assert_called_once_with(
        repo_id=REPO_ID, repo_type="model", private=True, exist_ok=True, token=FAKE_TOKEN
    )
    api.upload_folder.assert_called_once_with(
        repo_id=REPO_ID,
        repo_type="model",
        folder_path=folder,
        allow_patterns=list(MODEL_FILES),
        delete_patterns=[],
        commit_message=ANY,
        token=FAKE_TOKEN,
    )
    local = sorted(p.name for p in folder.iterdir())
    assert sorted(filter_repo_objects(local, allow_patterns=list(MODEL_FILES))) == sorted(MODEL_FILES)
    assert [name for name, _ in model_files(folder)] == list(MODEL_FILES)

    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN + "env")
    public = create_autospec(HfApi, instance=True)
    push_model(folder, REPO_ID, private=False, api=public)
    assert public.create_repo.call_args.kwargs["private"] is False
    assert public.create_repo.call_args.kwargs["token"] == FAKE_TOKEN + "env"

    monkeypatch.delenv("HF_TOKEN")
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(project / "no-token"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_STORED_TOKENS_PATH", str(project / "no-tokens"))
    with pytest.raises(HubError, match="no Hugging Face token"):
        push_model(folder, REPO_ID, api=create_autospec(HfApi, instance=True))
    with pytest.raises(ValueError, match="invalid Hub repo id"):
        push_model(folder, "not a repo", api=api, token=FAKE_TOKEN)
    (folder / "config.json").unlink()
    untouched = create_autospec(HfApi, instance=True)
    with pytest.raises(FileNotFoundError, match=r"no \['config.json'\]"):
        push_model(folder, REPO_ID, api=untouched, token=FAKE_TOKEN)
    assert not untouched.method_calls


def test_token_never_leaks(
    run_dir: Path,
    project: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A Hub error that echoes the token, and the CLI against the real (offline) Hub: the token appears
    in no exception text or traceback, no log record, no output and not in the folder."""
    caplog.set_level(logging.DEBUG)
    folder = _save(run_dir, project)
    api = create_autospec(HfApi, instance=True)
    api.upload_folder.side_effect = ConnectionError(f"refused: {{'authorization': 'Bearer {FAKE_TOKEN}'}}")
    with pytest.raises(HubError) as echoed:
        push_model(folder, REPO_ID, api=api, token=FAKE_TOKEN)
    assert echoed.value.transient and echoed.value.__context__ is None

    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    argv = _argv(run_dir, project)
    assert main([*argv, "--out", str(project / "cli")]) == 2
    captured = capsys.readouterr()
    assert "OfflineModeIsEnabled" in captured.err
    texts = [
        str(echoed.value) + "".join(traceback.format_exception(echoed.value)),
        captured.out + captured.err,
        *(r.getMessage() + str(r.args) for r in caplog.records),
        *(p.read_bytes().decode(errors="replace") for p in (project / "cli").iterdir()),
    ]
    assert caplog.records and all(FAKE_TOKEN not in text for text in texts)


def test_cli_dry_run(run_dir: Path, project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``facekit push model --dry-run`` builds the folder (kept with --out) and lists the files; bad input
    exits with status 2 and one line."""
    out = project / "dry"
    argv = [*_argv(run_dir, project), "--dry-run"]
    assert main([*argv, "--out", str(out), "--public"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(" (")[0] for line in lines[:3]] == [f"would upload {name}" for name in MODEL_FILES]
    assert lines[3].startswith("push model: dry run, 3 files, ") and f"in {out} -> {REPO_ID} (public)" in lines[3]
    assert sorted(p.name for p in out.iterdir()) == sorted(MODEL_FILES)
    assert "| sample | 280 | 0.9857 ± 0.0123 |" in (out / "README.md").read_text()
    assert main(argv) == 0
    assert "(pass --out DIR to keep the folder)" in capsys.readouterr().out
    assert main(["push", "model", str(project), "--repo-id", REPO_ID, "--dry-run"]) == 2
    assert "not a trained run folder" in capsys.readouterr().err


@pytest.mark.parametrize("landmarks", ["mesh", "learned"])
def test_a_lafs_model_card_shows_its_landmark_input(tmp_path: Path, landmarks: str) -> None:
    """A LAFS model of the mesh source takes each face's 196 mesh points as a second input: its config.json
    says so and the card's usage code passes them; the learned source embeds a bare face."""
    tiny = {"img_size": 112, "patch_size": 8, "patch_embed": "linear", "depth": 1, "embed_dim": 32, "num_heads": 2}
    module = BACKBONES.create("landmark_vit", base="vit_small_patch16_224", landmarks=landmarks, **tiny)
    run = tmp_path / "lafs"
    backbones.save(module, backbones.spec_of(module, run="lafs", method="lafs"), run)
    folder = save_model_folder(run, tmp_path / "model", [], None, None)
    config = json.loads((folder / "config.json").read_text())
    usage = (folder / "README.md").read_text().split("## Usage")[1].split("```python")[1].split("```")[0]
    assert config["landmark_input"] is (landmarks == "mesh")
    if landmarks == "mesh":
        assert "model(x, landmarks)" in usage and "MESH_196" in usage
    else:
        assert "model(x)" in usage and "landmarks" not in usage
    model = from_pretrained(folder)
    x = torch.zeros(1, 3, 112, 112)
    points = torch.rand(1, 196, 2) * 111
    assert model(x, points if landmarks == "mesh" else None).shape == (1, 32)
