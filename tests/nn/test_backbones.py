"""The one backbone registry and a run folder's exported backbone: every backbone rebuilds from its spec, the
spec round trip, folders written before the one registry, malformed specs, and non-strict weight loading."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from facekit.methods.lafs import LAFS_BACKBONE
from facekit.nn import backbones
from facekit.nn.backbones import BACKBONES, DEFAULT_NORMALIZATION, BackboneSpec
from facekit.nn.iresnet import IResNet
from facekit.nn.landmark_vit import LandmarkViT
from facekit.nn.resnet import ResNetTrunk
from facekit.nn.vit import ViT
from facekit.train.checkpoint import MODEL_FILE, find_checkpoint, save_checkpoint

TINY_VIT = {"img_size": 112, "depth": 1, "embed_dim": 48, "num_heads": 2}
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


#: The arguments a backbone needs beyond its defaults: LAFS's network names its ViT (LAFS's ViT-B, both sources).
REQUIRED = {"landmark_vit": {"base": "vit_base_patch16_224", "landmarks": "learned", **LAFS_BACKBONE}}


@pytest.mark.parametrize("name", BACKBONES.names())
def test_every_backbone_rebuilds_from_its_spec(name: str) -> None:
    """Full size, on the meta device: the spec (through its JSON) rebuilds the same state-dict keys and shapes."""
    with torch.device("meta"):
        module = BACKBONES.create(name, **REQUIRED.get(name, {}))
        spec = backbones.spec_of(module)
        rebuilt = backbones.build(backbones.spec_from_json(json.loads(json.dumps(spec.to_json())), "memory"))
    assert isinstance(module, ViT | IResNet | ResNetTrunk | LandmarkViT) and spec.name == name
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in module.state_dict().items()}
    assert spec.embedding_size == module.out_dim and spec.input_size == getattr(module, "img_size", 112)


def test_spec_round_trip_through_a_run_folder(tmp_path: Path) -> None:
    torch.manual_seed(0)
    vit = BACKBONES.create("vit_small_patch16_224", **TINY_VIT, head_dim=16)
    spec = backbones.spec_of(vit, *IMAGENET, run="mae", method="mae")
    assert spec == BackboneSpec("vit_small_patch16_224", {**TINY_VIT, "head_dim": 16}, 112, *IMAGENET, 16, "mae", "mae")
    backbones.save(vit, spec, tmp_path)
    written = json.loads((tmp_path / "backbone.json").read_text())
    assert written["registry"] == "facekit.nn.backbones:BACKBONES" and written["weights"] == "backbone.safetensors"
    assert {"input_size", "mean", "std", "embedding_size"} <= written.keys()  # no inference needed on reading
    assert backbones.read(tmp_path) == spec
    loaded = backbones.load(tmp_path).eval()
    x = torch.randn(2, 3, 112, 112)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), vit.eval()(x), rtol=0, atol=0)


def test_spec_of_needs_a_module_built_by_the_registry() -> None:
    with pytest.raises(ValueError, match=r"a Linear not built by BACKBONES\.create"):
        backbones.spec_of(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="not JSON-serialisable"):
        backbones.spec_of(BACKBONES.create("resnet18", channels=(8, 16, 32, 64), act_layer=nn.ReLU))
    with pytest.raises(ValueError, match="mean and std need 3 values"):
        backbones.spec_of(BACKBONES.create("ir50", layers=(1, 1, 1, 1)), (0.5, 0.5), (0.5, 0.5))


def _write_legacy(folder: Path, module: nn.Module, spec: dict) -> Path:
    """A run folder as pretrain / finetune wrote it before the one registry."""
    folder.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in module.state_dict().items()}, str(folder / "backbone.safetensors"))
    (folder / "backbone.json").write_text(json.dumps({**spec, "weights": "backbone.safetensors"}, indent=2))
    return folder


def test_legacy_run_folders_still_load(tmp_path: Path) -> None:
    """Each old registry string means the one registry; the fields they lack are inferred from the module."""
    torch.manual_seed(0)
    vit = BACKBONES.create("vit_small_patch16_224", **TINY_VIT)
    ir = BACKBONES.create("ir50", layers=(1, 1, 1, 1), embedding_size=24, img_size=32)
    trunk = BACKBONES.create("resnet18", channels=(8, 16, 32, 64))
    narrow = {"channels": [8, 16, 32, 64]}
    cases = [
        (vit, {"backbone": "vit_small_patch16_224", "kwargs": TINY_VIT, "registry": "facekit.nn.vit:BACKBONES"}),
        (vit, {"backbone": "vit_small_patch16_224", "kwargs": TINY_VIT}),  # the first exports named no registry
        (ir, {"backbone": "ir50", "kwargs": ir.registry_spec.kwargs, "registry": "facekit.nn.iresnet:BACKBONES"}),
        (trunk, {"backbone": "resnet18", "kwargs": narrow, "registry": "facekit.nn.resnet:RESNETS"}),
    ]
    expected = [(112, 48), (112, 48), (32, 24), (112, 64)]  # (input size, embedding size)
    for i, ((module, spec), (size, dim)) in enumerate(zip(cases, expected, strict=True)):
        folder = _write_legacy(tmp_path / str(i), module, {**spec, "run": "old", "method": "mae"})
        read = backbones.read(folder)
        assert (read.name, read.input_size, read.embedding_size) == (spec["backbone"], size, dim)
        assert (read.mean, read.std) == DEFAULT_NORMALIZATION and (read.run, read.method) == ("old", "mae")
        loaded = backbones.load(folder).eval()
        x = torch.randn(2, 3, size, size)
        with torch.no_grad():
            torch.testing.assert_close(loaded(x), module.eval()(x), rtol=0, atol=0)
    rng = torch.get_rng_state()
    backbones.read(tmp_path / "0")
    assert torch.equal(torch.get_rng_state(), rng)  # inferring the sizes draws nothing


def test_a_recorded_normalisation_is_kept_and_checked(tmp_path: Path) -> None:
    spec = {"backbone": "ir50", "kwargs": {"layers": [1, 1, 1, 1]}, "mean": [0.1, 0.2, 0.3], "std": [0.4, 0.5, 0.6]}
    read = backbones.spec_from_json(spec, "spec.json")
    assert (read.mean, read.std) == ((0.1, 0.2, 0.3), (0.4, 0.5, 0.6))
    assert DEFAULT_NORMALIZATION == ((0.5,) * 3, (0.5,) * 3)  # what older exports get
    for bad in ({"mean": [0.5, 0.5]}, {"std": [0.5, 0.0, 0.5]}, {"mean": ["a", 0.5, 0.5]}):
        with pytest.raises(ValueError, match=r"spec\.json: mean and std need 3 values"):
            backbones.spec_from_json({**spec, **bad}, "spec.json")


VIT_SPEC = {"backbone": "vit_small_patch16_224", "kwargs": TINY_VIT, "registry": "facekit.nn.backbones:BACKBONES"}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "not a backbone spec \\(expected a JSON object, got list\\)"),
        (json.dumps({"kwargs": {}}), "not a backbone spec \\(no 'backbone' name\\)"),
        (json.dumps({**VIT_SPEC, "registry": "os:path"}), "backbone registry 'os:path' is not a facekit registry"),
        (json.dumps({**VIT_SPEC, "backbone": "vit_smal"}), "unknown backbone 'vit_smal'; registered: facet_base"),
        (json.dumps({**VIT_SPEC, "kwargs": [1]}), "'kwargs' must be an object"),
        (json.dumps({**VIT_SPEC, "kwargs": {"dpth": 1}}), "cannot build backbone 'vit_small_patch16_224'.*dpth"),
        (json.dumps({**VIT_SPEC, "input_size": "112"}), "'input_size' must be a positive integer"),
        (json.dumps({**VIT_SPEC, "embedding_size": 0}), "'embedding_size' must be a positive integer"),
        (json.dumps({**VIT_SPEC, "method": 3}), "'method' must be a string"),
        (json.dumps({**VIT_SPEC, "weights": "other.safetensors"}), "weights must be 'backbone.safetensors'"),
    ],
)
def test_a_malformed_spec_names_the_file_and_the_problem(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "backbone.json").write_text(text)
    with pytest.raises(ValueError, match=f"^{tmp_path / 'backbone.json'}: {message}"):
        backbones.read(tmp_path)


def test_missing_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"backbone\.json not found: not a trained run folder"):
        backbones.read(tmp_path)
    (tmp_path / "backbone.json").write_text(json.dumps(VIT_SPEC))
    with pytest.raises(FileNotFoundError, match="has a backbone spec but no weights"):
        backbones.load(tmp_path)
    save_file({"w": torch.zeros(2)}, str(tmp_path / "backbone.safetensors"))
    with pytest.raises(ValueError, match=r"backbone\.safetensors: missing keys \['blocks\.0"):
        backbones.load(tmp_path)


def test_load_weights_with_prefix_map_reports_keys(tmp_path: Path) -> None:
    method = nn.ModuleDict({"encoder": nn.Sequential(nn.Linear(4, 6), nn.Linear(6, 3)), "decoder": nn.Linear(3, 4)})
    save_checkpoint(tmp_path, method, torch.optim.SGD(method.parameters(), lr=0.1), step=1, epoch=0)
    weights = find_checkpoint(tmp_path) / MODEL_FILE  # a training checkpoint's weights file
    backbone = nn.Sequential(nn.Linear(4, 6), nn.Linear(6, 2), nn.LayerNorm(2))  # another head width, a new norm
    report = backbones.load_weights(weights, backbone, prefix_map={"encoder.": ""})
    assert report.loaded == ["0.bias", "0.weight"]
    assert report.mismatched == ["1.bias", "1.weight"]
    assert report.missing == ["1.bias", "1.weight", "2.bias", "2.weight"]
    assert report.unexpected == []
    assert torch.equal(backbone[0].weight, method["encoder"][0].weight)

    loose = backbones.load_weights(tmp_path / "last" / "model.safetensors", nn.Sequential(nn.Linear(4, 6)))
    assert loose.loaded == [] and loose.missing == ["0.bias", "0.weight"]
    assert loose.unexpected == [
        "decoder.bias",
        "decoder.weight",
        *[f"encoder.{i}.{p}" for i in (0, 1) for p in ("bias", "weight")],
    ]
    with pytest.raises(ValueError, match="is a folder: give a weights file"):
        backbones.load_weights(tmp_path, backbone)


def test_load_weights_from_a_torch_file_with_a_model_key(tmp_path: Path) -> None:
    source = nn.Linear(3, 3)
    torch.save({"model": source.state_dict(), "epoch": 9}, tmp_path / "ckpt.pth")
    target = nn.Linear(3, 3)
    report = backbones.load_weights(tmp_path / "ckpt.pth", target)
    assert (report.loaded, report.missing, report.unexpected) == (["bias", "weight"], [], [])
    assert torch.equal(target.weight, source.weight)
