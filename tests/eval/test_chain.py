"""The evaluation end of the chain on the real sample: verification sets from the shards, a random-init
baseline fine-tuned and scored, the external reference model scored, and the leaderboard over them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import save_file

from facekit.cli import main
from facekit.config import load_params
from facekit.data.dataset import FaceShardDataset
from facekit.data.shards import ShardReader, read_index
from facekit.data.sources.verification_bin import load_verification_bin
from facekit.eval.chain import make_sets, set_paths, verify_run
from facekit.eval.leaderboard import build_leaderboard, write_leaderboard
from facekit.eval.make_bin import AlignedFaces, read_pairs
from facekit.methods.finetune import build_backbone
from facekit.nn import backbones
from facekit.nn.backbones import BACKBONES
from facekit.stages import detect_align, landmarks, masks, pack, sample
from facekit.stages.shard_map import process_map
from facekit.train.finetune import resolve_finetune_run, without_identities

TINY_VIT = {"img_size": 112, "depth": 1, "embed_dim": 64, "num_heads": 2}


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, assets: Path) -> Path:
    """A project folder whose params.yaml is the repo's with one tiny random-init run, and its shards
    (sample → detect_align → landmarks → masks → pack on the 61 shared photos)."""
    root = tmp_path_factory.mktemp("chain")
    params = yaml.safe_load((Path(__file__).resolve().parents[2] / "params.yaml").read_text())
    params["sharding"]["num_shards"] = 1
    params["masks"]["quality_pairs"] = ""
    params["pretrain"]["runs"] = {"scratch": {"method": "random_init", "backbone": "vit_small_patch16_224"}}
    params["pretrain"]["runs"]["scratch"]["backbone_kwargs"] = TINY_VIT
    params["finetune"]["runs"] = {"scratch": {}}
    params["finetune"]["train"].update(epochs=2)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("FACEKIT_ASSETS", str(assets))
        loaded = load_params()
        paths, inline = loaded.paths, process_map(1)
        sample.run(loaded, paths)
        detect_align.run(loaded, paths, shard_map=inline, progress=False)
        landmarks.run(loaded, paths, shard_map=inline, progress=False)
        masks.run(loaded, paths, shard_map=inline, progress=False)
        pack.run(loaded, paths, shard_map=inline, progress=False)
    return root


@pytest.fixture
def in_project(project: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(project)
    return project


def test_sets_hold_the_pairs_of_the_shards_and_counts_reconcile(in_project: Path, assets: Path) -> None:
    params = yaml.safe_load(Path("params.yaml").read_text())
    params["verify"]["holdout_identities"] = []  # every pair of the list
    Path("all.yaml").write_text(yaml.safe_dump(params))
    params = load_params("all.yaml")
    summary = make_sets(params)
    counts = json.loads(Path("metrics/eval_sets.json").read_text())
    pairs = read_pairs(assets / "faces/deepface/pairs.csv")
    assert counts["pair_list"] == len(pairs) == 280 and counts["other_identities"] == 0
    faces = AlignedFaces.from_shards(Path(params.finetune.shards))
    for name, path in set_paths(params).items():
        assert counts[name]["pairs"] + counts[name]["dropped"] == 280, name
        vbin = load_verification_bin(path)
        assert len(vbin) == counts[name]["pairs"] and int(np.sum(vbin.issame)) == counts[name]["same"]
        assert f"{name} {counts[name]['pairs']} pairs" in summary
    holistic, masked = (load_verification_bin(p) for p in set_paths(params).values())
    assert counts["sample"]["dropped"] <= 2  # every photo has a face; the mesh may reject one
    # the same pairs as the list (faces from the shards), shuffled so that every fold mixes same and different
    listed = sorted(
        (faces.get(a), faces.get(b), same) for a, b, same in zip(pairs.first, pairs.second, pairs.issame, strict=True)
    )
    built = list(zip(holistic.images[0::2], holistic.images[1::2], holistic.issame, strict=True))
    assert sorted(built) == listed and built != [tuple(x) for x in listed]
    folds = np.array_split(np.asarray(holistic.issame), 10)
    assert all(0 < f.sum() < len(f) for f in folds)
    # the masked set: first faces holistic, second faces their masked twins, only pairs with a twin
    twins = {faces.get(n, masked=True) for n in pairs.names()} - {None}
    assert all(img in twins for img in masked.images[1::2])
    assert not any(img in twins for img in masked.images[0::2])
    expected = sum(
        faces.get(a) is not None and faces.get(b, masked=True) is not None
        for a, b in zip(pairs.first, pairs.second, strict=True)
    )
    assert counts["sample_masked"]["pairs"] == expected > 50


def test_held_out_sets_pair_only_the_people_fine_tuning_leaves_out(in_project: Path, assets: Path) -> None:
    params = load_params()
    held = set(params.verify.holdout_identities)
    assert held == {"id00", "id01", "id02", "id03", "id09"}
    make_sets(params)
    counts = json.loads(Path("metrics/eval_sets.json").read_text())
    index = read_index(Path("data/shards"))
    records = [r for e in index["shards"] for r in ShardReader(Path("data/shards") / e["name"])]
    held_images = {r.image for r in records if index["identities"][r.identity] in held}
    held_twins = {r.masked_image for r in records if index["identities"][r.identity] in held} - {None}
    for name, path in set_paths(params).items():
        assert counts[name]["pairs"] + counts[name]["dropped"] + counts["other_identities"] == 280, name
        vbin = load_verification_bin(path)
        assert all(img in held_images | held_twins for img in vbin.images)
    assert counts["sample"]["pairs"] == 139  # pairs of two held-out photos in pairs.csv (102 same)
    assert counts["sample"]["same"] == 102
    dataset = FaceShardDataset(Path("data/shards"))
    train = without_identities(dataset, sorted(held))
    labels = {index["identities"][dataset[i]["identity"]] for i in train.indices}
    assert len(train) == 61 - len(held_images) == 27 and not labels & held
    with pytest.raises(ValueError, match="not in the shards' identity table"):
        without_identities(dataset, ["nobody"])


def test_reference_model_scores_the_sets_as_on_the_raw_photos(in_project: Path) -> None:
    params = load_params()
    make_sets(params)
    line = verify_run(params, "reference")
    scores = json.loads(Path("metrics/verify/reference.json").read_text())
    assert scores["sample"]["accuracy"] >= 0.97  # MobileFaceNet on the aligned sample: ≈0.99
    assert 0.8 <= scores["sample_masked"]["accuracy"] <= scores["sample"]["accuracy"]
    assert f"sample {scores['sample']['accuracy']:.4f}" in line
    assert Path("plots/verify/reference/roc_sample.csv").is_file() and Path("plots/verify/reference/roc.png").is_file()


def test_scratch_run_is_fine_tuned_scored_and_ranked_below_the_reference(in_project: Path, capsys) -> None:
    assert main(["pretrain", "scratch", "--quiet"]) == 0
    random_init = json.loads(Path("metrics/pretrain_scratch.json").read_text())
    assert random_init["steps"] == 0 and random_init["method"] == "random_init"
    assert main(["finetune", "scratch", "--quiet"]) == 0
    finetune = json.loads(Path("metrics/finetune_scratch.json").read_text())
    assert finetune["num_classes"] == len(read_index(Path("data/shards"))["identities"]) == 13
    assert finetune["steps"] == 2 * (27 // 16)  # 2 epochs of the 27 faces fine-tuning may see
    assert finetune["init_from"] == "data/runs/pretrain/scratch"
    assert finetune["holdout_identities"] == ["id00", "id01", "id02", "id03", "id09"]
    assert finetune["init_load"]["missing"] and all(k.startswith("head.") for k in finetune["init_load"]["missing"])
    backbone = backbones.load("data/runs/finetune/scratch")
    assert backbone(torch.zeros(2, 3, 112, 112)).shape == (2, 128)  # the 128-d head of finetune.method
    for args in (["eval", "sets"], ["verify", "scratch"], ["verify", "reference"], ["leaderboard"]):
        assert main([*args, "--quiet"] if args[0] != "eval" else args) == 0
    board = json.loads(Path("metrics/leaderboard.json").read_text())
    assert list(board) == ["reference", "scratch"]  # ranked: MobileFaceNet far above a 2-step tiny ViT
    assert [r["rank"] for r in board.values()] == [1, 2]
    verify = json.loads(Path("metrics/verify/scratch.json").read_text())
    assert board["scratch"]["holistic_accuracy"] == verify["sample"]["accuracy"]
    assert board["scratch"]["masked_accuracy"] == verify["sample_masked"]["accuracy"]
    assert board["scratch"]["finetune_images_per_s"] > 0 and board["scratch"]["pretrain_images_per_s"] is None
    table = Path("metrics/leaderboard.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| 1 ") or line.startswith("| 2 ")]
    assert rows[0].startswith("| 1 | reference |") and rows[1].startswith("| 2 | scratch | random_init |")
    assert f"{verify['sample']['accuracy']:.4f}" in rows[1]
    assert "leaderboard: 2 runs; best reference" in capsys.readouterr().out


def test_leaderboard_needs_every_run_scored(in_project: Path) -> None:
    params = yaml.safe_load(Path("params.yaml").read_text())
    params["finetune"]["runs"] = {"not_scored": {}}
    Path("other.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(FileNotFoundError, match="run `facekit verify not_scored` first"):
        build_leaderboard(load_params("other.yaml"))
    params["finetune"]["runs"], params["verify"]["reference"] = {}, ""
    Path("other.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(ValueError, match="nothing to rank"):
        write_leaderboard(load_params("other.yaml"))


def test_finetune_runs_name_their_missing_pre_training_and_stage_keys(in_project: Path) -> None:
    params = yaml.safe_load(Path("params.yaml").read_text())
    params["finetune"]["runs"] = {"mae": {}}
    Path("other.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(FileNotFoundError, match="facekit pretrain mae"):
        resolve_finetune_run(load_params("other.yaml"), "mae")
    params["finetune"]["runs"] = {"scratch": {"num_classes": 5}}
    Path("other.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(ValueError, match=r"finetune\.runs\.scratch\.num_classes is set by the stage"):
        resolve_finetune_run(load_params("other.yaml"), "scratch")


def test_a_resnet_export_fine_tunes_from_its_legacy_registry(tmp_path: Path) -> None:
    """A run folder written when ResNet trunks had their own registry (``RESNETS``) fine-tunes as before."""
    trunk = BACKBONES.create("resnet18", channels=(8, 16, 32, 64))
    (tmp_path / "fra").mkdir()
    save_file({k: v.contiguous() for k, v in trunk.state_dict().items()}, str(tmp_path / "fra/backbone.safetensors"))
    spec = {"backbone": "resnet18", "kwargs": {"channels": [8, 16, 32, 64]}, "registry": "facekit.nn.resnet:RESNETS"}
    legacy = {**spec, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "run": "fra", "method": "fra"}
    (tmp_path / "fra/backbone.json").write_text(json.dumps({**legacy, "weights": "backbone.safetensors"}))
    backbone, report = build_backbone(None, {}, tmp_path / "fra")
    assert report is not None and not report.missing and not report.mismatched
    assert backbone.out_dim == 64
    x = torch.randn(2, 3, 112, 112)
    trunk.eval(), backbone.eval()
    assert torch.equal(backbone(x), trunk(x))
