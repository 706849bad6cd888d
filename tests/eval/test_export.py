"""ONNX export of embedding networks: parity with PyTorch within 1e-4, dynamic batch, a run folder from the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from facekit.cli import main
from facekit.eval.embedder import ONNX_PIXEL_MEAN, ONNX_PIXEL_STD, OnnxEmbedder
from facekit.eval.embedding_model import EmbeddingModel, TorchEmbedder
from facekit.eval.export import OnnxParityError, check_onnx_parity, export_onnx
from facekit.nn import backbones
from facekit.nn.backbones import BACKBONES
from facekit.nn.vit import ViT

TINY_VIT = {"patch_size": 16, "embed_dim": 64, "depth": 2, "num_heads": 4, "head_dim": 32}
#: ONNX's input convention, (x - 127.5) / 128, as a per-channel (mean, std) of pixels / 255.
ONNX_MEAN, ONNX_STD = (ONNX_PIXEL_MEAN / 255,) * 3, (ONNX_PIXEL_STD / 255,) * 3
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def tiny_vit() -> ViT:
    torch.manual_seed(0)
    return ViT(img_size=112, **TINY_VIT)


def tiny_cnn() -> nn.Module:
    """Conv-BN-PReLU stages, global pooling, a linear 48-d embedding; BN with non-trivial running stats."""
    torch.manual_seed(1)
    net = nn.Sequential(
        nn.Conv2d(3, 16, 3, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(16),
        nn.PReLU(16),
        nn.Conv2d(16, 32, 3, stride=2, padding=1, groups=2, bias=False),
        nn.BatchNorm2d(32),
        nn.PReLU(32),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 48),
        nn.BatchNorm1d(48),
    )
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return net


@pytest.mark.parametrize("make", [tiny_vit, tiny_cnn], ids=["vit", "cnn"])
def test_export_parity_and_dynamic_batch(make, tmp_path: Path) -> None:
    module = make().train()  # export and parity switch to eval and restore the mode
    path = export_onnx(module, tmp_path / "model.onnx", batch_size=2)
    assert module.training
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (inp,), (out,) = session.get_inputs(), session.get_outputs()
    assert (inp.name, out.name) == ("input", "embedding")
    assert isinstance(inp.shape[0], str) and inp.shape[1:] == [3, 112, 112]  # symbolic batch
    x5 = torch.randn(5, 3, 112, 112, generator=torch.Generator().manual_seed(2))
    diff = check_onnx_parity(module, path, x5)
    print(f"{make.__name__}: max |onnx - torch| at batch 5 = {diff:.2e}")
    assert diff <= 1e-4
    assert session.run(None, {"input": x5.numpy()})[0].shape == (5, module.eval()(x5[:1]).shape[1])


def test_parity_check_can_fail(tmp_path: Path) -> None:
    module = tiny_cnn()
    path = export_onnx(module, tmp_path / "cnn.onnx")
    with torch.no_grad():
        module[-2].bias.add_(1e-2)  # the file no longer matches the module
    with pytest.raises(OnnxParityError, match="differs from PyTorch"):
        check_onnx_parity(module, path, torch.randn(3, 3, 112, 112))


def test_parity_tolerance_follows_the_output_scale(tmp_path: Path) -> None:
    """Outputs of ~2000: a bias moved by 0.1 (5e-5 relative) passes, by 0.5 (2.5e-4) fails."""
    torch.manual_seed(4)
    module = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 4))
    with torch.no_grad():
        module[2].weight.zero_()
        module[2].bias.copy_(torch.tensor([2000.0, -1000.0, 3.0, 0.5]))
    path = export_onnx(module, tmp_path / "big.onnx")
    x = torch.randn(2, 3, 112, 112)
    with torch.no_grad():
        module[2].bias[0] += 0.1
    assert check_onnx_parity(module, path, x) == pytest.approx(0.1, rel=1e-3)
    with torch.no_grad():
        module[2].bias[0] += 0.4
    with pytest.raises(OnnxParityError, match="output scale 2e\\+03"):
        check_onnx_parity(module, path, x)


def test_export_refuses_non_embedding_modules(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"\[B, D\]"):
        export_onnx(nn.Conv2d(3, 4, 3), tmp_path / "conv.onnx")


def test_torch_and_onnx_embedders_agree(tmp_path: Path) -> None:
    """The same network through TorchEmbedder and, exported, through OnnxEmbedder gives the same embeddings."""
    module = tiny_vit()
    onnx_model = OnnxEmbedder(export_onnx(module, tmp_path / "vit.onnx"))
    torch_model = TorchEmbedder(module, ONNX_MEAN, ONNX_STD, batch_size=3)
    assert isinstance(torch_model, EmbeddingModel) and isinstance(onnx_model, EmbeddingModel)
    faces = np.random.default_rng(3).integers(0, 256, (7, 112, 112, 3), dtype=np.uint8)
    for flip in (False, True):
        np.testing.assert_allclose(torch_model.embed(faces, flip=flip), onnx_model.embed(faces, flip=flip), atol=1e-5)
    # Flip-summed embedding = normalised sum of the raw embeddings of the face and its mirror.
    raw = module.eval()(torch.from_numpy((faces.astype(np.float32) - 127.5) / 128).permute(0, 3, 1, 2))
    mirror = module(torch.from_numpy((faces[:, :, ::-1].astype(np.float32) - 127.5) / 128).permute(0, 3, 1, 2))
    expected = (raw + mirror).detach().numpy()
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    np.testing.assert_allclose(torch_model.embed(faces, flip=True), expected, atol=1e-5)
    with pytest.raises(ValueError, match="uint8"):
        torch_model.embed(faces.astype(np.float32))


def test_cli_exports_a_run_folder_and_prints_parity(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``facekit export onnx RUN_DIR`` needs only the folder: the spec rebuilds the network, and the file takes
    ONNX's (x - 127.5) / 128 whatever the run was trained with, so it embeds as TorchEmbedder does on the spec."""
    torch.manual_seed(0)
    vit = BACKBONES.create("vit_small_patch16_224", img_size=112, **TINY_VIT)
    run = tmp_path / "run"
    backbones.save(vit, backbones.spec_of(vit, *IMAGENET, run="mae", method="mae"), run)
    out = tmp_path / "vit.onnx"
    assert main(["export", "onnx", str(run), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"{len(vit.state_dict())} tensors -> {out}" in printed and "max |diff|" in printed
    faces = np.random.default_rng(5).integers(0, 256, (4, 112, 112, 3), dtype=np.uint8)
    onnx_input = torch.from_numpy((faces.astype(np.float32) - 127.5) / 128).permute(0, 3, 1, 2)
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in IMAGENET)
    spec_input = (torch.from_numpy(faces).permute(0, 3, 1, 2).float() / 255 - mean) / std
    np.testing.assert_allclose(
        OnnxEmbedder(out).session.run(None, {"input": onnx_input.numpy()})[0],
        vit.eval()(spec_input).detach().numpy(),
        atol=1e-4,
    )
    torch_model = TorchEmbedder(backbones.load(run), *IMAGENET)
    onnx_model = OnnxEmbedder(out)
    np.testing.assert_allclose(onnx_model.embed(faces, flip=True), torch_model.embed(faces, flip=True), atol=1e-5)
    # Weights that do not fit the spec: a one-line error naming the file, exit status 2.
    spec = json.loads((run / "backbone.json").read_text())
    (run / "backbone.json").write_text(json.dumps({**spec, "kwargs": {**spec["kwargs"], "embed_dim": 32}}))
    assert main(["export", "onnx", str(run), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"facekit: error: {run / 'backbone.safetensors'}: cannot load into vit_small_patch16_224")
