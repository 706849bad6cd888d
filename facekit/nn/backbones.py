"""Backbones: the one registry of embedding networks, and a run folder's exported backbone.

:data:`BACKBONES` names every network a method trains or fine-tunes: the ViTs (ViT-S/B, FaceT-B), LAFS's
``landmark_vit`` (a ViT over patches at 196 facial landmarks), the IR nets (``ir50``, ``ir100``) and FRA's
ResNet trunks (``resnet18/34/50``). A module built by
``BACKBONES.create`` remembers the call (``registry_spec``), so :func:`spec_of` can describe it.

A run folder's exported backbone is two files::

    backbone.safetensors   the module's state dict (CPU tensors)
    backbone.json          its BackboneSpec: registry name and keyword arguments (to rebuild it), input size,
                           mean / std (inputs are (pixels / 255 - mean) / std per RGB channel), embedding
                           size, and the run and method that trained it

:func:`save` writes them, :func:`read` parses ``backbone.json`` (this module is the only one that does),
:func:`load` rebuilds the module with its weights loaded strictly. Folders written before the one registry
existed name ``"facekit.nn.vit:BACKBONES"``, ``"facekit.nn.iresnet:BACKBONES"`` or
``"facekit.nn.resnet:RESNETS"`` and may lack the input size, mean / std and embedding size: they load all the
same (input size: the module's ``img_size``, else 112; mean / std: :data:`DEFAULT_NORMALIZATION`; embedding
size: the module's ``out_dim``). :func:`load_weights` loads any state dict non-strictly (fine-tuning).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, load_model, save_file
from torch import nn

from facekit.nn.iresnet import IResNet
from facekit.nn.landmark_vit import LandmarkSource, LandmarkViT
from facekit.nn.resnet import ResNetTrunk
from facekit.nn.vit import ViT
from facekit.registry import Registry

SPEC_FILE = "backbone.json"
WEIGHTS_FILE = "backbone.safetensors"
#: What ``backbone.json`` names as its registry.
REGISTRY = "facekit.nn.backbones:BACKBONES"
#: Registries that folders written before the one registry name; each now means :data:`BACKBONES`.
LEGACY_REGISTRIES = ("facekit.nn.vit:BACKBONES", "facekit.nn.iresnet:BACKBONES", "facekit.nn.resnet:RESNETS")
#: Input size of specs that record none (every face crop is 112 × 112).
DEFAULT_INPUT_SIZE = 112
Stats = tuple[float, float, float]
#: Input normalisation of fine-tuning (and of specs that record none): pixels to [−1, 1].
DEFAULT_NORMALIZATION: tuple[Stats, Stats] = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
#: The method of a backbone exported untrained (the "no pre-training" baseline run).
RANDOM_INIT = "random_init"

#: name -> embedding network factory; keyword arguments override the preset, e.g. ``create("facet_base", depth=2)``.
BACKBONES: Registry[nn.Module] = Registry("backbone")


@BACKBONES.register("vit_small_patch16_224")
def vit_small_patch16_224(**overrides: Any) -> ViT:
    """ViT-S/16 at 224: 384 wide, 12 blocks, 6 heads, sin-cos positions, cls token (MCF's small encoder)."""
    return ViT(**{"embed_dim": 384, "depth": 12, "num_heads": 6, **overrides})


@BACKBONES.register("vit_base_patch16_224")
def vit_base_patch16_224(**overrides: Any) -> ViT:
    """ViT-B/16 at 224: 768 wide, 12 blocks, 12 heads, sin-cos positions, cls token (MAE / MCF / CAMD)."""
    return ViT(**{"embed_dim": 768, "depth": 12, "num_heads": 12, **overrides})


@BACKBONES.register("facet_base")
def facet_base(**overrides: Any) -> ViT:
    """FaceT-B: 112×112, patch 8 (196 tokens), Linear(192 -> 768) patch embedding, zero-init learned
    positions, no cls, 12 DeepNorm blocks (768, 12 heads, MLP 4, qkv bias), mean pooling, head
    Linear(768 -> 512) + BN1d(512, affine=False), 32 prompts per block (fine-tuning). FaceT's MAE
    pre-training runs without prompts: pass ``num_prompts=0``."""
    config: dict[str, Any] = {
        "img_size": 112,
        "patch_size": 8,
        "embed_dim": 768,
        "depth": 12,
        "num_heads": 12,
        "class_token": False,
        "pos_embed": "learned",
        "pos_embed_std": 0.0,
        "patch_embed": "linear",
        "global_pool": "avg",
        "norm": "deepnorm",
        "head_dim": 512,
        "num_prompts": 32,
    }
    return ViT(**{**config, **overrides})


@BACKBONES.register("landmark_vit")
def landmark_vit(base: str, landmarks: LandmarkSource = "mesh", **overrides: Any) -> nn.Module:
    """LAFS's embedding network, a :class:`~facekit.nn.landmark_vit.LandmarkViT`: the ViT
    ``BACKBONES.create(base, **overrides)`` over 8 × 8 patches at 196 landmarks, given (``"mesh"``) or
    predicted by its landmark network (``"learned"``). (Annotated ``nn.Module`` so that the registry passes
    the ViT's keywords on; the base's own ``create`` checks them.)"""
    vit = BACKBONES.create(base, **overrides)
    if not isinstance(vit, ViT):
        raise ValueError(f"landmark_vit needs a ViT base, got {base!r} ({type(vit).__name__})")
    return LandmarkViT(vit, landmarks)


@BACKBONES.register("ir50")
def ir50(**overrides: Any) -> IResNet:
    """IR-50: stages (3, 4, 14, 3), 512-d embedding (insightface ``r50``, 43.6M parameters)."""
    return IResNet(**{"layers": (3, 4, 14, 3), **overrides})


@BACKBONES.register("ir100")
def ir100(**overrides: Any) -> IResNet:
    """IR-100: stages (3, 13, 30, 3), 512-d embedding (insightface ``r100``, FaceT's CNN baseline)."""
    return IResNet(**{"layers": (3, 13, 30, 3), **overrides})


@BACKBONES.register("resnet18")
def resnet18(**kwargs: Any) -> ResNetTrunk:
    """ResNet-18 trunk: basic blocks [2, 2, 2, 2], 512 output channels (with the default widths)."""
    return ResNetTrunk("resnet18", **kwargs)


@BACKBONES.register("resnet34")
def resnet34(**kwargs: Any) -> ResNetTrunk:
    """ResNet-34 trunk: basic blocks [3, 4, 6, 3], 512 output channels."""
    return ResNetTrunk("resnet34", **kwargs)


@BACKBONES.register("resnet50")
def resnet50(**kwargs: Any) -> ResNetTrunk:
    """ResNet-50 trunk: bottlenecks [3, 4, 6, 3], 2048 output channels (FRA's backbone)."""
    return ResNetTrunk("resnet50", **kwargs)


@dataclass(frozen=True)
class BackboneSpec:
    """How to rebuild an embedding network and what it takes and gives.

    name, kwargs: the ``BACKBONES.create(name, **kwargs)`` call (JSON values). input_size: S of the
    ``[B, 3, S, S]`` faces it embeds. mean, std: its input normalisation, ``(pixels / 255 − mean) / std`` per
    RGB channel. embedding_size: D of its ``[B, D]`` output. run, method: the run and method that trained it
    (None where unknown).
    """

    name: str
    kwargs: dict[str, Any]
    input_size: int
    mean: Stats
    std: Stats
    embedding_size: int
    run: str | None = None
    method: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The spec as ``backbone.json`` holds it (tuples as lists)."""
        return {
            "registry": REGISTRY,
            "backbone": self.name,
            "kwargs": json.loads(json.dumps(self.kwargs)),
            "input_size": self.input_size,
            "mean": list(self.mean),
            "std": list(self.std),
            "embedding_size": self.embedding_size,
            "run": self.run,
            "method": self.method,
        }


def spec_of(
    module: nn.Module,
    mean: Stats = DEFAULT_NORMALIZATION[0],
    std: Stats = DEFAULT_NORMALIZATION[1],
    *,
    run: str | None = None,
    method: str | None = None,
) -> BackboneSpec:
    """The spec of a module built by ``BACKBONES.create`` (EMA copies keep its ``registry_spec`` too), fed
    ``(pixels / 255 − mean) / std``; input size: its ``img_size`` (else 112); embedding size: its ``out_dim``."""
    made = getattr(module, "registry_spec", None)
    if made is None or made.registry is not BACKBONES:
        raise ValueError(f"a {type(module).__name__} not built by BACKBONES.create cannot be rebuilt from a spec")
    try:
        kwargs = json.loads(json.dumps(made.kwargs))
    except TypeError as e:
        raise ValueError(f"backbone arguments are not JSON-serialisable: {e}") from None
    embedding_size = getattr(module, "out_dim", None)
    if not isinstance(embedding_size, int):
        raise ValueError(f"backbone {made.name!r} ({type(module).__name__}) has no out_dim (embedding size)")
    input_size = getattr(module, "img_size", DEFAULT_INPUT_SIZE)
    normalization = _stats(mean, std, "spec_of")
    return BackboneSpec(made.name, kwargs, input_size, *normalization, embedding_size, run, method)


def spec_from_json(data: Any, source: str | Path) -> BackboneSpec:
    """Parse a ``backbone.json`` (or a model folder's ``config.json``) read from ``source``; keys other than
    the spec's are ignored. Legacy registries and missing fields are handled as the module docstring says;
    anything else that does not describe a backbone is a ValueError naming ``source``."""
    if not isinstance(data, dict):
        raise ValueError(f"{source}: not a backbone spec (expected a JSON object, got {type(data).__name__})")
    registry = data.get("registry", LEGACY_REGISTRIES[0])  # the first exports named none
    if registry != REGISTRY and registry not in LEGACY_REGISTRIES:
        raise ValueError(f"{source}: backbone registry {registry!r} is not a facekit registry (expected {REGISTRY!r})")
    name, kwargs = data.get("backbone"), data.get("kwargs", {})
    if not isinstance(name, str):
        raise ValueError(f"{source}: not a backbone spec (no 'backbone' name)")
    if name not in BACKBONES:
        raise ValueError(f"{source}: unknown backbone {name!r}; registered: {', '.join(BACKBONES.names())}")
    if not isinstance(kwargs, dict):
        raise ValueError(f"{source}: 'kwargs' must be an object of keyword arguments, got {kwargs!r}")
    if data.get("method") == "lafs" and name != "landmark_vit":
        raise ValueError(
            f"{source}: a LAFS backbone exported as {name!r} would embed grid patches, not the landmark patches "
            "it was pre-trained on; run its pre-training again (LAFS exports a 'landmark_vit')"
        )
    mean, std = data.get("mean", DEFAULT_NORMALIZATION[0]), data.get("std", DEFAULT_NORMALIZATION[1])
    normalization = _stats(mean, std, source)
    for key in ("run", "method"):
        if not isinstance(data.get(key), str | None):
            raise ValueError(f"{source}: {key!r} must be a string, got {data[key]!r}")
    input_size, embedding_size = data.get("input_size"), data.get("embedding_size")
    if input_size is None or embedding_size is None:  # written before the fields existed: ask the module
        with torch.device("meta"):  # shapes only: no memory, no init cost, no draw from the RNG
            built = _create(name, kwargs, source)
        input_size = getattr(built, "img_size", DEFAULT_INPUT_SIZE) if input_size is None else input_size
        embedding_size = getattr(built, "out_dim", None) if embedding_size is None else embedding_size
    for key, value in (("input_size", input_size), ("embedding_size", embedding_size)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{source}: {key!r} must be a positive integer, got {value!r}")
    return BackboneSpec(name, kwargs, input_size, *normalization, embedding_size, data.get("run"), data.get("method"))


def _stats(mean: Any, std: Any, source: str | Path) -> tuple[Stats, Stats]:
    """(mean, std) as float triples; ValueError unless 3 finite numbers each with std > 0."""

    def triple(values: Any) -> Stats | None:
        if not isinstance(values, list | tuple) or len(values) != 3:
            return None
        if not all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in values):
            return None
        return float(values[0]), float(values[1]), float(values[2])

    mean3, std3 = triple(mean), triple(std)
    if mean3 is None or std3 is None or not all(s > 0 for s in std3):
        raise ValueError(f"{source}: mean and std need 3 values each (std > 0), got {mean} and {std}")
    return mean3, std3


def _create(name: str, kwargs: dict[str, Any], source: str | Path) -> nn.Module:
    try:
        return BACKBONES.create(name, **kwargs)
    except TypeError as e:  # a keyword argument the backbone does not take
        raise ValueError(f"{source}: cannot build backbone {name!r} with {kwargs}: {e}") from None


def save(backbone: nn.Module, spec: BackboneSpec, out_dir: Path | str) -> Path:
    """Write ``backbone.safetensors`` (CPU weights) and ``backbone.json`` (``spec``) to ``out_dir``; returns
    the weights file."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    state = {name: t.detach().cpu().contiguous() for name, t in backbone.state_dict().items()}
    save_file(state, str(out_dir / WEIGHTS_FILE))
    (out_dir / SPEC_FILE).write_text(json.dumps({**spec.to_json(), "weights": WEIGHTS_FILE}, indent=2) + "\n")
    return out_dir / WEIGHTS_FILE


def read(run_dir: Path | str) -> BackboneSpec:
    """The spec of the backbone exported to ``run_dir`` (its ``backbone.json``)."""
    path = Path(run_dir) / SPEC_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: not a trained run folder (no exported backbone)")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON: {e}") from None
    if isinstance(data, dict) and data.get("weights", WEIGHTS_FILE) != WEIGHTS_FILE:
        raise ValueError(f"{path}: weights must be {WEIGHTS_FILE!r} next to it, got {data['weights']!r}")
    return spec_from_json(data, path)


def weights_file(run_dir: Path | str) -> Path:
    """``run_dir/backbone.safetensors``; FileNotFoundError if it is missing."""
    path = Path(run_dir) / WEIGHTS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: the run folder has a backbone spec but no weights")
    return path


def build(spec: BackboneSpec, weights: Path | str | None = None) -> nn.Module:
    """``BACKBONES.create(spec.name, **spec.kwargs)``, with ``weights`` (safetensors) loaded strictly if given;
    a missing, unexpected or mis-shaped tensor is a ValueError naming the file."""
    module = _create(spec.name, spec.kwargs, "backbone spec")
    if weights is None:
        return module
    try:
        missing, unexpected = load_model(module, str(weights), strict=False)
    except (RuntimeError, SafetensorError) as e:  # shape mismatch, not a safetensors file
        raise ValueError(f"{weights}: cannot load into {spec.name}: {e}") from None
    if missing or unexpected:
        raise ValueError(f"{weights}: missing keys {sorted(missing)}, unexpected {sorted(unexpected)}")
    return module


def load(run_dir: Path | str) -> nn.Module:
    """The backbone exported to ``run_dir``, rebuilt from its spec with its weights loaded strictly."""
    return build(read(run_dir), weights_file(run_dir))


@dataclass(frozen=True)
class LoadReport:
    """Outcome of :func:`load_weights` (names as in the target module)."""

    loaded: list[str]
    missing: list[str]
    unexpected: list[str]
    mismatched: list[str]  # present on both sides with different shapes: not loaded


def load_weights(path: Path | str, module: nn.Module, prefix_map: dict[str, str] | None = None) -> LoadReport:
    """Load weights for fine-tuning into ``module`` (non-strict) and report what matched.

    ``path``: a ``.safetensors`` file (a run's ``backbone.safetensors``, a training checkpoint's
    ``model.safetensors``) or a torch file whose dict may nest the weights under ``"model"`` /
    ``"state_dict"``. ``prefix_map`` renames keys by prefix, first match wins (``{"encoder.": ""}`` loads a
    method's encoder into a bare backbone); with a map, keys matching none of its prefixes are ignored.
    Tensors with a different shape are reported, not loaded.
    """
    source = _read_state_dict(Path(path))
    if prefix_map is not None:
        renamed = {}
        for key, tensor in source.items():
            prefix = next((p for p in prefix_map if key.startswith(p)), None)
            if prefix is not None:
                renamed[prefix_map[prefix] + key[len(prefix) :]] = tensor
        source = renamed
    target = module.state_dict()
    fits = {k: v for k, v in source.items() if k in target and v.shape == target[k].shape}
    module.load_state_dict(fits, strict=False)
    loaded_storage = {target[k].data_ptr() for k in fits}
    missing = [k for k in target if k not in fits and target[k].data_ptr() not in loaded_storage]
    return LoadReport(
        loaded=sorted(fits),
        missing=sorted(missing),
        unexpected=sorted(k for k in source if k not in target),
        mismatched=sorted(k for k in source if k in target and k not in fits),
    )


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if path.is_dir():
        raise ValueError(f"{path} is a folder: give a weights file (.safetensors, or a torch file)")
    if path.suffix == ".safetensors":
        return load_file(path)
    obj = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("model", "state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    return obj
