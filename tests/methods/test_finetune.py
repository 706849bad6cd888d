"""FineTune: masked-twin swaps, prompts by ismask, backbone loading reports, recipes, training on real faces."""

from __future__ import annotations

import csv
import inspect
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import facekit.methods  # noqa: F401  (registers the methods)
from facekit.config import TrainConfig
from facekit.data.augment import hflip
from facekit.data.dataset import FaceShardDataset
from facekit.data.images import decode_jpeg_rgb, encode_jpeg
from facekit.data.record import FaceRecord
from facekit.data.shards import ShardWriter
from facekit.methods.base import METHODS, StepValues
from facekit.methods.finetune import FINETUNE_RECIPES, FaceRecognitionView, FineTune, build_backbone
from facekit.nn import backbones
from facekit.nn.backbones import BACKBONES
from facekit.nn.iresnet import IResNet
from facekit.train.loop import train
from facekit.train.optim import param_groups

TINY = {"img_size": 32, "embed_dim": 32, "depth": 2, "num_heads": 2, "num_prompts": 2, "head_dim": 16}
HP = StepValues(step=0, epoch=0.0, progress=0.0, lr=1e-3, weight_decay=0.0, momentum=0.0)


def face_record(key: str, rgb: np.ndarray, identity: int, with_twin: bool = True) -> FaceRecord:
    """A FaceRecord of a 112×112 crop; its masked twin covers the lower face with a flat light-blue 'mask'."""
    twin = rgb.copy()
    twin[62:, 18:94] = (150, 190, 230)
    return FaceRecord(
        key=key,
        image=encode_jpeg(rgb[..., ::-1]),
        identity=identity,
        landmarks=np.zeros((5, 2), np.float32),
        bbox=np.zeros(4, np.float32),
        det_score=1.0,
        num_faces=1,
        source="deepface",
        source_sha256="",
        mask="surgical" if with_twin else None,
        masked_image=encode_jpeg(twin[..., ::-1]) if with_twin else None,
    )


@pytest.fixture(scope="module")
def faces(assets: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A shard of 26 real deepface photos (2 per identity, centre crops at 112 px) with masked twins."""
    rows = list(csv.DictReader((assets / "faces" / "deepface" / "identities.csv").open()))
    by_id: dict[int, list[str]] = {}
    for row in rows:
        by_id.setdefault(int(row["identity_id"]), []).append(row["file"])
    path = tmp_path_factory.mktemp("faces") / "part-00000.lmdb"
    with ShardWriter(path, meta={"identities": [str(i) for i in sorted(by_id)]}) as writer:
        for identity, files in sorted(by_id.items()):
            for name in files[:2]:
                bgr = cv2.imread(str(assets / "faces" / "deepface" / name), cv2.IMREAD_REDUCED_COLOR_2)
                h, w = bgr.shape[:2]
                side = min(h, w)
                top, left = max(0, (h - side) // 3), (w - side) // 2
                crop = cv2.resize(bgr[top : top + side, left : left + side], (112, 112), interpolation=cv2.INTER_AREA)
                writer.put(face_record(f"deepface/{name}", crop[..., ::-1].copy(), identity))
    return path


def normalised(rgb: np.ndarray) -> torch.Tensor:
    return (torch.from_numpy(rgb).permute(2, 0, 1).float() / 255 - 0.5) / 0.5


def matches(image: torch.Tensor, rgb: np.ndarray) -> bool:
    """Whether ``image`` is ``rgb`` normalised, flipped or not."""
    return any(torch.allclose(image, normalised(x), atol=1e-6) for x in (rgb, hflip(rgb)))


def test_masked_twin_is_swapped_in_at_the_configured_rate_and_sets_ismask() -> None:
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (112, 112, 3), dtype=np.uint8)
    record = face_record("x", rgb, 0)
    original, twin = decode_jpeg_rgb(record.image), decode_jpeg_rgb(record.masked_image)
    view = FaceRecognitionView(112, masked_faces=0.1)
    np.random.seed(0)
    draws = 3000
    flags = []
    for i in range(draws):
        out = view(original, record)
        flags.append(int(out["ismask"]))
        if i < 50:
            assert out["ismask"].dtype == torch.long and out["image"].shape == (3, 112, 112)
            assert matches(out["image"], twin if flags[-1] else original)
    rate = sum(flags) / draws
    assert abs(rate - 0.1) < 4 * (0.1 * 0.9 / draws) ** 0.5  # within 4 sigma (seeded: deterministic)
    no_twin = face_record("y", rgb, 0, with_twin=False)
    assert all(int(view(original, no_twin)["ismask"]) == 0 for _ in range(200))
    assert int(FaceRecognitionView(112, masked_faces=1.0)(original)["ismask"]) == 0  # no record, no swap
    with pytest.raises(ValueError, match="masked_faces"):
        FaceRecognitionView(112, masked_faces=1.5)


def test_shard_dataset_hands_the_record_to_the_view(faces: Path) -> None:
    dataset = FaceShardDataset(faces, transform=FaceRecognitionView(112, masked_faces=1.0))
    item = dataset[3]
    reader_twin = decode_jpeg_rgb(dataset.readers[0][3].masked_image)
    assert int(item["ismask"]) == 1 and matches(item["image"], reader_twin)
    plain = FaceShardDataset(faces, transform=FaceRecognitionView(112))[3]
    assert int(plain["ismask"]) == 0 and matches(plain["image"], decode_jpeg_rgb(dataset.readers[0][3].image))


def test_facet_prompts_follow_ismask_in_the_method() -> None:
    torch.manual_seed(0)
    method = FineTune(num_classes=4, backbone="facet_base", backbone_kwargs=TINY).eval()
    x = torch.randn(3, 3, 32, 32)
    holistic, masked = method.embed(x, torch.zeros(3)), method.embed(x, torch.ones(3))
    assert holistic.shape == (3, 16) and not torch.allclose(holistic, masked, atol=1e-3)
    mixed = method.embed(x, torch.tensor([0, 1, 0]))
    torch.testing.assert_close(mixed[1], masked[1])
    torch.testing.assert_close(mixed[[0, 2]], holistic[[0, 2]])
    batch = {"image": x, "identity": torch.tensor([0, 1, 3])}
    losses = [method({**batch, "ismask": torch.full((3,), v)}, HP)["loss"] for v in (0, 1)]
    assert losses[0].item() != pytest.approx(losses[1].item())


def test_iresnet_finetune_ignores_ismask() -> None:
    torch.manual_seed(0)
    ir = {"layers": (1, 1, 1, 1), "embedding_size": 16, "img_size": 32}
    method = FineTune(num_classes=4, backbone="ir50", backbone_kwargs=ir, margin="cosface").eval()
    assert isinstance(method.export_backbone(), IResNet) and method.views().recipe.size == 32
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(method.embed(x, torch.ones(2)), method.embed(x))


def test_loading_a_pretrain_export_reports_missing_keys(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    torch.manual_seed(0)
    pretrained = BACKBONES.create("facet_base", **{**TINY, "num_prompts": 0, "head_dim": None})
    backbones.save(pretrained, backbones.spec_of(pretrained, run="facet_mae"), tmp_path)
    method = FineTune(num_classes=4, init_from=tmp_path, backbone_kwargs={"num_prompts": 2, "head_dim": 16})
    report = method.load_report
    assert report.missing == [
        "head.0.bias",
        "head.0.weight",
        "head.1.num_batches_tracked",
        "head.1.running_mean",
        "head.1.running_var",
        "prompts",
        "prompts_pool.key_proj.bias",
        "prompts_pool.key_proj.weight",
        "prompts_pool.queries",
    ]
    assert report.unexpected == [] and len(report.loaded) == len(pretrained.state_dict())
    torch.testing.assert_close(method.backbone.blocks[1].mlp.fc2.weight, pretrained.blocks[1].mlp.fc2.weight)
    out = capsys.readouterr().out
    assert "9 new tensors (head, prompts, prompts_pool) added by backbone_kwargs" in out
    assert "missing" not in out and "unexpected" not in out and "mismatch" not in out
    with pytest.raises(ValueError, match="differs from 'facet_base'"):
        FineTune(num_classes=4, init_from=tmp_path, backbone="ir50")


def test_loading_a_state_dict_with_a_prefix_map_reports_unexpected_keys(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    torch.manual_seed(0)
    source = BACKBONES.create("facet_base", **TINY)
    state = {f"encoder.{k}": v for k, v in source.state_dict().items()}
    state |= {"encoder.cls_token": torch.zeros(1, 1, 32), "decoder.pred.weight": torch.zeros(3, 3)}
    torch.save({"model": state}, tmp_path / "mae.pth")
    method = FineTune(num_classes=4, backbone="facet_base", backbone_kwargs=TINY, init_from=tmp_path / "mae.pth",
                      prefix_map={"encoder.": ""})  # fmt: skip
    assert method.load_report.unexpected == ["cls_token"] and method.load_report.missing == []
    assert capsys.readouterr().out.strip().endswith("mae.pth; unexpected ['cls_token']")
    torch.testing.assert_close(method.backbone.prompts, source.prompts)
    with pytest.raises(ValueError, match="backbone name"):
        FineTune(num_classes=4, init_from=tmp_path / "mae.pth")
    with pytest.raises(FileNotFoundError, match="init_from"):
        FineTune(num_classes=4, backbone="facet_base", init_from=tmp_path / "nothing.pth")


def test_recipes_are_valid_finetune_runs(tmp_path: Path) -> None:
    for recipe in FINETUNE_RECIPES.values():
        kwargs = {k: v for k, v in recipe.items() if k not in ("method", "train")}
        inspect.signature(METHODS.get(recipe["method"])).bind(num_classes=10, **kwargs)
        TrainConfig(**recipe["train"], out_dir=tmp_path)
    facet = FINETUNE_RECIPES["facet_base"]
    assert (facet["margin"], facet["sample_rate"], facet["masked_faces"]) == ("magface", 0.1, 0.1)
    assert FINETUNE_RECIPES["ir100"]["train"]["optimizer"] == "sgd"  # timm: Nesterov
    ir100 = TrainConfig(**FINETUNE_RECIPES["ir100"]["train"], out_dir=tmp_path)
    assert (ir100.lr_schedule, ir100.lr_milestones, ir100.lr_gamma) == ("step", (8, 12, 16), 0.1)  # FaceT's decay
    assert (ir100.warmup_epochs, ir100.clip_grad, FINETUNE_RECIPES["ir100"]["margin"]) == (1, None, "magface")
    tiny = {k: v for k, v in facet.items() if k not in ("method", "train")}
    method = FineTune(num_classes=10, **{**tiny, "backbone_kwargs": {**facet["backbone_kwargs"], **TINY}})
    groups = param_groups(method, layer_decay=facet["train"]["layer_decay"])
    scale = {id(p): g["lr_scale"] for g in groups for p in g["params"]}
    backbone = method.backbone
    stem, block0, block1 = (backbone.patch_embed.proj.weight, *(b.attn.qkv.weight for b in backbone.blocks))
    assert scale[id(stem)] < scale[id(block0)] < scale[id(block1)] < 1.0
    assert scale[id(method.head.weight)] == 1.0  # Partial FC sits above the backbone: full lr


def test_a_few_steps_on_real_faces_lower_the_loss(faces: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    method = FineTune(num_classes=13, backbone="facet_base", backbone_kwargs=TINY, sample_rate=0.5, masked_faces=0.3)
    dataset = FaceShardDataset(faces, transform=method.views())
    cfg = TrainConfig(epochs=8, batch_size=8, out_dir=tmp_path, lr=2e-3, weight_decay=0.0, layer_decay=0.75,
                      log_every=1, checkpoint_every=None, progress=False)  # fmt: skip
    result = train(method, dataset, cfg)
    assert result.steps == 24 and result.skipped_steps == 0
    with (tmp_path / "train_log.csv").open() as f:
        losses = [float(r["loss"]) for r in csv.DictReader(f)]
    first, last = np.mean(losses[:3]), np.mean(losses[-3:])
    assert last < 0.8 * first, losses
    saved = load_file(tmp_path / "checkpoints" / "last" / "model.safetensors")
    assert saved["head.weight"].shape == (13, 16)
    print(f"losses {losses[0]:.3f} -> {losses[-1]:.3f}")


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
