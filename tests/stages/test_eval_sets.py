"""The ``eval_sets`` stage on the real sample: the verification sets hold the pairs of the shards, their
counts reconcile, and held-out sets pair only the people fine-tuning leaves out."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import yaml

from facekit.config import load_params
from facekit.data.dataset import FaceShardDataset
from facekit.data.shards import ShardReader, read_index
from facekit.data.sources.verification_bin import load_verification_bin
from facekit.eval.make_bin import AlignedFaces, landmarks_path, read_pairs
from facekit.stages import eval_sets, split
from facekit.stages.eval_sets import set_paths


def test_sets_hold_the_pairs_of_the_shards_and_counts_reconcile(in_project: Path, assets: Path) -> None:
    params = yaml.safe_load(Path("params.yaml").read_text())
    params["verify"]["pairs"] = "faces/deepface/pairs.csv"
    params["split"]["holdout_identities"] = []  # every pair of the list
    Path("all.yaml").write_text(yaml.safe_dump(params))
    params = load_params("all.yaml")
    summary = eval_sets.run(params, params.paths)
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
    raw = yaml.safe_load(Path("params.yaml").read_text())
    raw["verify"]["pairs"] = "faces/deepface/pairs.csv"
    raw["split"].update(holdout_identities=["id00", "id01", "id02", "id03", "id09"], file="held_split.json")
    Path("held.yaml").write_text(yaml.safe_dump(raw))
    params = load_params("held.yaml")
    split.run(params, params.paths)
    held = set(split.held_out(params))
    assert held == set(params.split.holdout_identities)
    eval_sets.run(params, params.paths)
    counts = json.loads(Path("metrics/eval_sets.json").read_text())
    index = read_index(Path("data/shards"))
    records = [r for e in index["shards"] for r in ShardReader(Path("data/shards") / e["name"])]
    held_images = {r.image for r in records if index["identities"][r.identity] in held}
    held_twins = {r.masked_image for r in records if index["identities"][r.identity] in held} - {None}
    for name, path in set_paths(params).items():
        assert counts[name]["pairs"] + counts[name]["dropped"] + counts["other_identities"] == 280, name
        vbin = load_verification_bin(path)
        assert all(img in held_images | held_twins for img in vbin.images)
        # the faces' mesh points go with them (LAFS mesh models embed with them)
        assert np.load(landmarks_path(path)).shape == (len(vbin.images), 196, 2), name
    assert counts["sample"]["pairs"] == 139  # pairs of two held-out photos in pairs.csv (102 same)
    assert counts["sample"]["same"] == 102
    dataset = FaceShardDataset(Path("data/shards"))
    train = split.training_subset(dataset, sorted(held))
    labels = {index["identities"][dataset[i]["identity"]] for i in train.indices}
    assert len(train) == 61 - len(held_images) == 27 and not labels & held
    for setting, message in ((["nobody"], "not in the shards' identity table"), (13, "13 of 13 identities")):
        raw["split"]["holdout_identities"] = setting
        Path("bad.yaml").write_text(yaml.safe_dump(raw))
        bad = load_params("bad.yaml")
        with pytest.raises(ValueError, match=rf"split.holdout_identities: .*{message}"):
            split.run(bad, bad.paths)


def test_auto_sets_pair_the_people_held_out_by_hash(in_project: Path) -> None:
    """The defaults (pairs: auto, split.holdout_identities: 5, seed 0) work on any labelled shards: the 5
    identities with the smallest SHA-256 of "0:<name>" are held out, and the sets pair only their faces, same
    and different pairs balanced, every same pair of them present."""
    params = load_params()
    assert (params.verify.pairs, params.split.holdout_identities, params.split.seed) == ("auto", 5, 0)
    split.run(params, params.paths)
    eval_sets.run(params, params.paths)
    index = read_index(Path("data/shards"))
    names = index["identities"]
    held = set(sorted(names, key=lambda n: hashlib.sha256(f"0:{n}".encode()).hexdigest())[:5])
    records = [r for e in index["shards"] for r in ShardReader(Path("data/shards") / e["name"])]
    identity_of_image = {r.image: names[r.identity] for r in records}
    per_identity = Counter(names[r.identity] for r in records if names[r.identity] in held)
    same_pairs = sum(n * (n - 1) // 2 for n in per_identity.values())
    counts = json.loads(Path("metrics/eval_sets.json").read_text())
    assert counts["pair_list"] == 2 * same_pairs and counts["other_identities"] == 0
    holistic = load_verification_bin(set_paths(params)["sample"])
    assert len(holistic) == counts["sample"]["pairs"] == 2 * same_pairs and counts["sample"]["same"] == same_pairs
    for a, b, same in zip(holistic.images[0::2], holistic.images[1::2], holistic.issame, strict=True):
        assert identity_of_image[a] in held and identity_of_image[b] in held
        assert (identity_of_image[a] == identity_of_image[b]) == bool(same)
    dataset = FaceShardDataset(Path("data/shards"))
    train_labels = {names[dataset[i]["identity"]] for i in split.training_subset(dataset, sorted(held)).indices}
    assert not train_labels & held and len(train_labels) == len(names) - 5
