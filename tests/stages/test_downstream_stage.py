"""``facekit eval <task>`` and ``facekit eval board`` on tiny shards of synthetic faces with a synthetic mesh: the
result JSON, the joined board and the README block, and every user error as one ``facekit: error:`` line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from facekit.cli import main
from facekit.data.downstream.derived import identity_split
from facekit.data.images import encode_jpeg
from facekit.data.ops.landmarks import DENSE_KEY
from facekit.data.record import FaceRecord
from facekit.data.shards import ShardWriter, write_index
from facekit.nn import backbones
from facekit.stages import downstream_board
from tests.data.test_derived_labels import synthetic_mesh

ROOT = Path(__file__).resolve().parents[2]
SIZE = 32


def _names() -> list[str]:
    """Six identities: four in the train split, two in the test split."""
    train = [f"p{i}" for i in range(200) if identity_split(f"p{i}") == "train"][:4]
    test = [f"p{i}" for i in range(200) if identity_split(f"p{i}") == "test"][:2]
    return train + test


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Shards of 24 noise faces (32 px) with jittered synthetic meshes, and a tiny ViT run folder."""
    root = tmp_path_factory.mktemp("downstream")
    rng = np.random.default_rng(0)
    names = _names()
    with ShardWriter(root / "shards" / "shard-00000.lmdb", meta={"identities": names}) as writer:
        for i in range(24):
            mesh = synthetic_mesh() * SIZE / 112 + rng.normal(0, 0.5, (468, 2))
            writer.put(
                FaceRecord(
                    key=f"t/{i}", image=encode_jpeg(rng.integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8)),
                    identity=i % len(names), landmarks=np.zeros((5, 2), np.float32), bbox=np.zeros(4, np.float32),
                    det_score=1.0, num_faces=1, source="t", source_sha256="0" * 64,
                    extra={DENSE_KEY: mesh.astype(np.float16)},
                )
            )  # fmt: skip
    write_index(root / "shards", [writer.close()], identities=names, params_hash="t")
    vit = backbones.BACKBONES.create(
        "vit_small_patch16_224", img_size=SIZE, patch_size=8, depth=1, embed_dim=16, num_heads=2
    )
    backbones.save(vit, backbones.spec_of(vit, run="tiny", method="mae"), root / "run")
    (root / "run" / "train_config.json").write_text(json.dumps({"seed": 0}))
    return {"root": root, "shards": root / "shards", "run": root / "run"}


def _eval(tiny: dict[str, Path], task: str, backbone: str, *extra: str) -> dict:
    out = tiny["root"] / "results" / f"{task}_{backbone.replace(':', '_').replace('/', '_')[-20:]}.json"
    args = ["eval", task, "--backbone", backbone, "--data", str(tiny["shards"]), "--epochs", "2", "--quiet"]
    assert main([*args, "--out", str(out), *extra]) == 0
    return json.loads(out.read_text())


def test_eval_alignment_writes_its_scores_and_the_board_joins_them(tiny: dict[str, Path], tmp_path: Path) -> None:
    report = _eval(tiny, "alignment", str(tiny["run"]))
    assert report["task"] == "alignment" and report["primary"] == "nme" and not report["higher_is_better"]
    assert report["n_train"] == 16 and report["n_test"] == 8 and report["image_size"] == SIZE
    assert {"nme", "fr_0.08", "auc_0.10"} <= report["trained"].keys()
    assert report["backbone"]["init"] == "trained"
    random = _eval(tiny, "expression", f"random:{tiny['run']}", "--few-shot", "0.5")
    assert random["backbone"]["init"] == "random" and random["n_train"] == 8
    recognition = tmp_path / "leaderboard.json"
    recognition.write_text(json.dumps({"run": {"holistic_accuracy": 0.75}}))
    summary = downstream_board.run(tiny["root"] / "results", recognition, tmp_path / "board")
    assert "2 backbones x 2 tasks" in summary
    board = json.loads((tmp_path / "board.json").read_text())
    assert board["run"]["recognition"] == {"accuracy": 0.75}
    assert set(board) == {"run", "run (random init)"} and "alignment" in board["run"]
    table = (tmp_path / "board.md").read_text()
    assert "| run | 0.7500 |" in table and "prior (no image)" in table
    probe_lineage = {"runs": {"run": {"finetuned": {"accuracy": 0.5}}, "mae": {"learned": {}}}, "controls": {}}
    assert downstream_board.recognition_scores(probe_lineage) == {"run": {"accuracy": 0.5}}
    text = "a\n<!-- downstream-medium:start -->\nold\n<!-- downstream-medium:end -->\nb\n"
    rendered = downstream_board.render_readme(text, board)
    assert "old" not in rendered and downstream_board.render_readme(rendered, board) == rendered


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--dataset", "nope"], "unknown dataset 'nope'"),
        (["--dataset", "celeba"], "'celeba' is a attributes dataset, not alignment"),
        (["--backbone", "reference", "--protocol", "finetune"], "only --protocol linear"),
        (["--backbone", "missing_run"], "missing_run/backbone.json not found"),
        (["--data", "no_such_shards"], "no_such_shards not found"),
        (["--few-shot", "1.5"], "few_shot must be a fraction"),
    ],
)
def test_user_errors_are_one_line(
    tiny: dict[str, Path], args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    base = {"--backbone": str(tiny["run"]), "--data": str(tiny["shards"])}
    for key, value in zip(args[::2], args[1::2], strict=True):
        base[key] = value
    assert main(["eval", "alignment", *[x for kv in base.items() for x in kv], "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("facekit: error:") and message in err[0], err


def test_the_lineage_scores_every_task_on_every_backbone() -> None:
    lineage = ROOT / "lineages/downstream"
    params = yaml.safe_load((lineage / "params.yaml").read_text())
    stages = yaml.safe_load((lineage / "dvc.yaml").read_text())["stages"]
    assert set(params["tasks"]) == {"expression", "attributes", "alignment", "parsing", "pose"}
    assert stages["evaluate"]["matrix"] == {"task": "${tasks}", "backbone": "${backbones}"}
    assert params["shards"] == "../medium/data/shards" and "${shards}" in stages["evaluate"]["deps"]
    runs = [b["dep"] for b in params["backbones"] if b["backbone"] != "reference"]
    assert runs and all(dep.startswith("../medium/data/runs/pretrain/") for dep in runs)
    assert "metrics/downstream" in stages["board"]["deps"]


def test_a_lafs_backbone_of_the_mesh_source_gets_each_faces_mesh_points(tiny: dict[str, Path], tmp_path: Path) -> None:
    lafs = backbones.BACKBONES.create(
        "landmark_vit", base="facet_base", depth=1, embed_dim=16, num_heads=2, num_prompts=0, head_dim=None
    )
    backbones.save(lafs, backbones.spec_of(lafs, run="lafs", method="lafs"), tmp_path / "lafs")
    out = tmp_path / "lafs.json"
    args = ["eval", "alignment", "--backbone", str(tmp_path / "lafs"), "--data", str(tiny["shards"])]
    assert main([*args, "--epochs", "1", "--quiet", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["image_size"] == 112 and report["backbone"]["architecture"] == "landmark_vit"
