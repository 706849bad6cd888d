"""LAFS keeps its landmark path after pre-training, as the released code does (``with_land=True`` in
``train_largescale.py`` and ``IJB_evaluation.py`` of szlbiubiubiu/LAFS_CVPR2024 @ 320c57d): the exported
backbone, fine-tuning, kNN, verification and the ONNX export embed a real aligned face from the patches at its
196 landmarks exactly as the pre-training forward does (a reference wired by hand), for both landmark sources;
a backbone that needs landmarks and gets none is one clear error, never grid patches."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from facekit.data.augment import normalize_batch
from facekit.data.dataset import FaceShardDataset
from facekit.data.images import decode_jpeg_rgb
from facekit.data.ops.landmarks import mesh_196
from facekit.data.record import FaceRecord
from facekit.data.sources.verification_bin import load_verification_bin
from facekit.eval.benchmarks import embed_encoded, evaluate_bin
from facekit.eval.embedder import OnnxEmbedder
from facekit.eval.embedding_model import TorchEmbedder
from facekit.eval.export import export_run
from facekit.eval.knn import embed_faces, load_faces, representation_check
from facekit.eval.make_bin import AlignedFaces, PairList, build_bin, read_landmarks
from facekit.methods.base import StepValues
from facekit.methods.finetune import FineTune
from facekit.methods.lafs import LAFS
from facekit.nn import backbones
from facekit.nn.landmark_patches import landmark_patches
from facekit.nn.landmark_vit import LandmarkViT
from facekit.train.optim import param_groups

#: Small position embeddings: with LAFS's N(0, 1) the random network hardly sees the patches.
TINY = {"embed_dim": 32, "depth": 2, "num_heads": 2, "pos_embed_std": 0.02}
HEAD = {"out_dim": 64, "head_hidden_dim": 64, "head_bottleneck_dim": 16}
HALF = (0.5, 0.5, 0.5)
HP = StepValues(step=0, epoch=0.0, progress=0.0, lr=1e-3, weight_decay=0.0, momentum=0.0)


def tiny_lafs(landmarks: str) -> LAFS:
    """A tiny LAFS whose teacher has moved away from the student, and (learned) whose landmark network has
    BatchNorm statistics of its own."""
    torch.manual_seed(0)
    extra = {"landmarks": "learned", "train_landmark_head": True} if landmarks == "learned" else {}
    method = LAFS(backbone_kwargs=TINY, n_local=0, landmark_jitter=0.0, **HEAD, **extra)
    with torch.no_grad():
        for p in method.teacher.parameters():
            p.add_(0.02 * torch.randn_like(p))
        for m in method.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return method.eval()


def pretraining_forward(method: LAFS, images: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """The teacher's token path of LAFS pre-training on a global view without jitter, wired by hand: 8 × 8
    patches at ``points`` (the module's own sampler), Linear embedding + positions 1..196, the cls token with
    position 0 in front, the blocks, the final norm, the cls token out."""
    vit = method.teacher.backbone
    patches = landmark_patches(images, points, 8)  # [B, 196, 192]
    tokens = patches @ vit.patch_embed.proj.weight.T + vit.patch_embed.proj.bias + vit.pos_embed[:, 1:197]
    cls = (vit.cls_token + vit.pos_embed[:, :1]).expand(len(images), -1, -1)
    x = torch.cat([cls, tokens], dim=1)
    for block in vit.blocks:
        x = block(x)
    return vit.norm(x)[:, 0]


def unit(x: torch.Tensor) -> np.ndarray:
    return torch.nn.functional.normalize(x, dim=1).numpy()


def mirrored(points: torch.Tensor) -> torch.Tensor:
    """Points [..., 2] of a 112-wide face on its mirror image: x -> 111 - x, same order."""
    return torch.stack([111 - points[..., 0], points[..., 1]], dim=-1)


@pytest.fixture(scope="module")
def faces(meshed_faces: list[FaceRecord]) -> dict:
    """The four real faces: uint8 RGB [4, 112, 112, 3], normalised images [4, 3, 112, 112], mesh [4, 196, 2]."""
    rgb = np.stack([decode_jpeg_rgb(r.image) for r in meshed_faces])
    images = normalize_batch(torch.from_numpy(rgb).permute(0, 3, 1, 2), HALF, HALF)
    return {"rgb": rgb, "images": images, "mesh": torch.from_numpy(np.stack([mesh_196(r) for r in meshed_faces]))}


@pytest.fixture(scope="module", params=["mesh", "learned"])
def run(request: pytest.FixtureRequest, faces: dict, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A LAFS run folder as the pretrain stage writes it, the method, the points its pre-training cuts at and
    the reference embedding of the four faces."""
    method = tiny_lafs(request.param)
    out = tmp_path_factory.mktemp(request.param)
    exported = method.export_backbone()
    backbones.save(exported, backbones.spec_of(exported, method.mean, method.std, run="lafs", method="lafs"), out)
    (out / "train_config.json").write_text(json.dumps({"seed": 0}))
    with torch.no_grad():
        images = faces["images"]
        points = faces["mesh"] if request.param == "mesh" else method.landmark_head(images)
        reference = pretraining_forward(method, images, points)
        assert torch.allclose(method.teacher.features(method.view_patches(images, points)), reference, atol=1e-6)
        grid = method.teacher.backbone(images)  # what a plain ViT export embedded: regular-grid patches
    assert (grid - reference).abs().max() > 1e-2
    mesh = request.param == "mesh"
    return {"method": method, "dir": out, "mesh": mesh, "points": points, "reference": reference}


def given(run: dict, faces: dict) -> dict:
    """The landmarks a backbone of ``run`` is given: the faces' mesh, or none (it predicts its own)."""
    return {"landmarks": faces["mesh"]} if run["mesh"] else {}


# ---------------------------------------------------------------- export, fine-tuning, kNN, verification, ONNX


def test_the_run_folder_rebuilds_the_pretraining_forward(run: dict, faces: dict) -> None:
    spec = json.loads((run["dir"] / backbones.SPEC_FILE).read_text())
    assert (spec["backbone"], spec["kwargs"]["landmarks"]) == ("landmark_vit", "mesh" if run["mesh"] else "learned")
    loaded = backbones.load(run["dir"]).eval()
    assert isinstance(loaded, LandmarkViT) and loaded.needs_landmarks == run["mesh"]
    with torch.no_grad():
        embedded = loaded(faces["images"], **given(run, faces))
    torch.testing.assert_close(embedded, run["reference"], atol=1e-5, rtol=0)


def test_fine_tuning_starts_from_the_pretraining_forward_on_its_views(
    run: dict, faces: dict, meshed_shard: Path
) -> None:
    finetune = FineTune(num_classes=4, init_from=run["dir"]).eval()
    assert not finetune.load_report.missing and not finetune.load_report.unexpected
    with torch.no_grad():
        embedded = finetune.embed(faces["images"], **given(run, faces))
    torch.testing.assert_close(embedded, run["reference"], atol=1e-5, rtol=0)

    np.random.seed(1)
    items = [FaceShardDataset(meshed_shard, transform=finetune.views())[i] for i in range(4)]
    batch = {k: torch.stack([torch.as_tensor(item[k]) for item in items]) for k in items[0] if k != "key"}
    assert ("mesh_landmarks" in batch) == run["mesh"]
    if run["mesh"]:  # the whole face, flipped or not: the mesh, mirrored with a flipped view
        flipped = [not torch.allclose(item["image"], faces["images"][i], atol=1e-6) for i, item in enumerate(items)]
        assert 0 < sum(flipped) < 4
        for i, flip in enumerate(flipped):
            expected = mirrored(faces["mesh"][i]) if flip else faces["mesh"][i]
            np.testing.assert_allclose(batch["mesh_landmarks"][i].numpy(), expected.numpy(), atol=1e-4)
    points = batch["mesh_landmarks"] if run["mesh"] else run["method"].landmark_head(batch["image"])
    with torch.no_grad():
        torch.testing.assert_close(
            finetune.embed(batch["image"], landmarks=batch.get("mesh_landmarks")),
            pretraining_forward(run["method"], batch["image"], points),
            atol=1e-5,
            rtol=0,
        )
    assert torch.isfinite(finetune.train()(batch, HP)["loss"])


def test_knn_embeds_the_shard_faces_with_their_landmark_tokens(run: dict, meshed_shard: Path) -> None:
    shard_faces = load_faces(meshed_shard, mesh=run["mesh"])
    embedded = embed_faces(backbones.load(run["dir"]), shard_faces, (HALF, HALF))
    np.testing.assert_allclose(embedded, run["reference"].numpy(), atol=1e-5)
    assert representation_check(run["dir"], meshed_shard)["n"] == 4


def test_verification_embeds_a_set_with_its_landmarks_file(
    run: dict, faces: dict, meshed_faces: list[FaceRecord], meshed_shard: Path, tmp_path: Path
) -> None:
    model = TorchEmbedder(backbones.load(run["dir"]), HALF, HALF)  # as the verify stage builds it
    assert model.needs_landmarks == run["mesh"]
    key = [r.key for r in meshed_faces]
    same = np.array([True, True, False, False])
    pairs = PairList([key[0], key[1], key[0], key[2]], [key[0], key[1], key[1], key[3]], same)
    report = build_bin(pairs, AlignedFaces.from_shards(meshed_shard), tmp_path / "set.bin")
    assert report.landmarks == tmp_path / "set.landmarks.npy"
    order = [0, 0, 1, 1, 0, 1, 2, 3]  # the faces of the pairs, in the set's order
    np.testing.assert_array_equal(read_landmarks(report.path, 8), faces["mesh"].numpy()[order])

    images = load_verification_bin(report.path).images
    landmarks = read_landmarks(report.path, 8) if run["mesh"] else None
    flipped = faces["images"].flip(-1)
    with torch.no_grad():
        points = mirrored(faces["mesh"]) if run["mesh"] else run["method"].landmark_head(flipped)
        with_flip = run["reference"] + pretraining_forward(run["method"], flipped, points)
    for flip, expected in ((False, run["reference"]), (True, with_flip)):
        emb = embed_encoded(model, images, flip=flip, resize=False, landmarks=landmarks)
        np.testing.assert_allclose(emb, unit(expected)[order], atol=1e-5)
    assert evaluate_bin(report.path, model, n_folds=2).pairs == 4


def test_the_onnx_export_embeds_a_real_aligned_face_as_pytorch(run: dict, faces: dict, tmp_path: Path) -> None:
    report = export_run(run["dir"], tmp_path / "lafs.onnx")
    assert report.max_abs_diff <= 1e-4
    embedder = OnnxEmbedder(report.path)
    assert embedder.needs_landmarks == run["mesh"]
    landmarks = faces["mesh"].numpy() if run["mesh"] else None
    np.testing.assert_allclose(embedder.embed(faces["rgb"], landmarks=landmarks), unit(run["reference"]), atol=1e-4)
    torch_model = TorchEmbedder(backbones.load(run["dir"]), HALF, HALF)
    with_flip = torch_model.embed(faces["rgb"], flip=True, landmarks=landmarks)
    np.testing.assert_allclose(embedder.embed(faces["rgb"], flip=True, landmarks=landmarks), with_flip, atol=1e-4)


# ---------------------------------------------------------------- the landmark network in fine-tuning


def test_fine_tuning_trains_the_landmark_network_in_the_stem_group(tmp_path: Path, faces: dict) -> None:
    """Released fine-tuning loads the landmark network unfrozen (``freeze=False``) and puts it at layer 0."""
    method = tiny_lafs("learned")
    exported = method.export_backbone()
    backbones.save(exported, backbones.spec_of(exported, method.mean, method.std), tmp_path)
    finetune = FineTune(num_classes=4, init_from=tmp_path)
    finetune.embed(faces["images"]).square().sum().backward()
    head, vit = finetune.backbone.landmark_head, finetune.backbone.vit
    assert all(p.requires_grad and p.grad is not None for p in head.parameters())
    assert head.output_layer[1].weight.grad.abs().sum() > 0
    groups = param_groups(finetune, layer_decay=0.5)
    scale = {id(p): g["lr_scale"] for g in groups for p in g["params"]}
    stem = scale[id(vit.patch_embed.proj.weight)]
    assert {scale[id(p)] for p in head.parameters()} == {stem} and stem < scale[id(vit.blocks[0].attn.qkv.weight)]
    # deviation: the run's weight decay, also for the landmark network (released: 5e-2 for it, 1e-1 for the rest)
    decay = {id(p): g["wd_scale"] for g in groups for p in g["params"]}
    assert decay[id(head.output_layer[1].weight)] == decay[id(vit.blocks[0].attn.qkv.weight)] == 1.0


# ---------------------------------------------------------------- no landmarks, no grid fallback


def test_a_backbone_without_the_landmarks_it_needs_is_one_clear_error(
    faces: dict, meshed_faces: list[FaceRecord], meshed_shard: Path, tmp_path: Path
) -> None:
    method, run_dir = tiny_lafs("mesh"), tmp_path / "run"
    exported = method.export_backbone()
    backbones.save(exported, backbones.spec_of(exported, method.mean, method.std, method="lafs"), run_dir)
    backbone, needs = backbones.load(run_dir), "mesh landmarks"
    with pytest.raises(ValueError, match=needs):
        backbone(faces["images"])
    finetune = FineTune(num_classes=4, init_from=run_dir)
    with pytest.raises(ValueError, match=needs):
        finetune({"image": faces["images"], "identity": torch.arange(4)}, HP)
    with pytest.raises(ValueError, match=r"no extra\['dense_landmarks'\]"):
        finetune.views()(faces["rgb"][0], meshed_faces[0].replace(extra={}))
    with pytest.raises(ValueError, match=r"mesh=True"):
        embed_faces(backbone, load_faces(meshed_shard), (HALF, HALF))
    with pytest.raises(ValueError, match=needs):
        TorchEmbedder(backbone, HALF, HALF).embed(faces["rgb"])
    with pytest.raises(ValueError, match=needs):
        OnnxEmbedder(export_run(run_dir, tmp_path / "run.onnx").path).embed(faces["rgb"])
    bare = AlignedFaces(images={r.key: r.image for r in meshed_faces})  # faces without dense landmarks
    key = [r.key for r in meshed_faces]
    pairs = PairList(key[:2], key[2:], np.array([True, False]))
    assert build_bin(pairs, bare, tmp_path / "bare.bin").landmarks is None
    with pytest.raises(FileNotFoundError, match=r"bare\.landmarks\.npy"):
        evaluate_bin(tmp_path / "bare.bin", TorchEmbedder(backbone, HALF, HALF), n_folds=2)

    learned = tiny_lafs("learned").export_backbone()
    with pytest.raises(ValueError, match="predicts its own landmarks"):
        learned(faces["images"], faces["mesh"])
    with pytest.raises(ValueError, match="takes no landmarks"):
        TorchEmbedder(learned, HALF, HALF).embed(faces["rgb"], landmarks=faces["mesh"].numpy())
    plain = json.loads((run_dir / backbones.SPEC_FILE).read_text())  # a LAFS export as a grid-patch ViT
    plain["backbone"] = "vit_base_patch16_224"
    (run_dir / backbones.SPEC_FILE).write_text(json.dumps(plain))
    with pytest.raises(ValueError, match="grid patches"):
        backbones.read(run_dir)
