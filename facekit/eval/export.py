"""ONNX export of embedding networks (``[B, 3, S, S]`` normalised pixels -> ``[B, D]``) with a dynamic batch.

Uses ``torch.onnx.export``'s TorchScript exporter (``dynamo=False``): it needs no extra package and
traces timm's attention and facekit's ViT exactly; the batch axis is declared dynamic, so the file runs
at any batch size. :func:`export_run` (``facekit export onnx RUN_DIR``) exports a run folder's backbone
as its spec describes it, behind :class:`OnnxInput`: the file takes ``(x - 127.5) / 128`` RGB, as
:class:`~facekit.eval.embedder.OnnxEmbedder` feeds it, whatever normalisation the backbone was trained with.
:func:`check_onnx_parity` runs the file in ONNX Runtime and compares it with PyTorch.

A LAFS backbone (:class:`~facekit.nn.landmark_vit.LandmarkViT`) is exported with its landmark path: with
``landmarks="learned"`` the landmark network is in the file (one input, a bare aligned face); with
``"mesh"`` the file has a second input ``landmarks`` ``[B, 196, 2]`` (the face's mesh points, pixels).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from facekit.eval.embedder import LANDMARKS_INPUT, ONNX_PIXEL_MEAN, ONNX_PIXEL_STD
from facekit.nn import backbones
from facekit.nn.backbones import Stats
from facekit.nn.landmark_vit import NUM_LANDMARKS, needs_landmarks

INPUT_NAME = "input"
OUTPUT_NAME = "embedding"
DEFAULT_OPSET = 17


class OnnxParityError(AssertionError):
    """ONNX Runtime's output differs from PyTorch's by more than the tolerance."""


class OnnxInput(nn.Module):
    """``module`` fed ONNX's input convention: x = ``(pixels - 127.5) / 128`` [B, 3, S, S] becomes
    ``(pixels / 255 - mean) / std`` (the backbone's own normalisation, per RGB channel) in one affine map;
    ``landmarks`` (pixels, unchanged) are passed on when given."""

    def __init__(self, module: nn.Module, mean: Stats, std: Stats) -> None:
        super().__init__()
        self.module = module
        scale = [ONNX_PIXEL_STD / (255 * s) for s in std]
        shift = [(ONNX_PIXEL_MEAN / 255 - m) / s for m, s in zip(mean, std, strict=True)]
        self.register_buffer("scale", torch.tensor(scale).view(1, 3, 1, 1))
        self.register_buffer("shift", torch.tensor(shift).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor, landmarks: torch.Tensor | None = None) -> torch.Tensor:
        x = x * self.scale + self.shift
        return self.module(x) if landmarks is None else self.module(x, landmarks)


def example_landmarks(batch_size: int, img_size: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random points ``[batch_size, 196, 2]`` spread over an ``img_size`` square (for tracing and parity)."""
    return torch.rand(batch_size, NUM_LANDMARKS, 2, generator=generator) * (img_size - 1)


def export_onnx(
    module: nn.Module,
    path: Path,
    *,
    img_size: int = 112,
    batch_size: int = 2,
    opset: int = DEFAULT_OPSET,
    landmarks: bool = False,
) -> Path:
    """Export ``module`` (in eval mode; its mode is restored) to ``path`` with a dynamic batch axis.

    The trace runs on a random ``[batch_size, 3, img_size, img_size]`` input (and, with ``landmarks``, random
    points ``[batch_size, 196, 2]`` as a second input); inputs / output are named ``input`` (``landmarks``) /
    ``embedding``. The module must return one ``[B, D]`` tensor.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    device = next(iter(module.parameters()), torch.zeros(())).device
    example = (torch.randn(batch_size, 3, img_size, img_size, device=device),)
    names = [INPUT_NAME]
    if landmarks:
        example += (example_landmarks(batch_size, img_size).to(device),)
        names.append(LANDMARKS_INPUT)
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            out = module(*example)
        if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != batch_size:
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(f"an embedding module must map [B, 3, {img_size}, {img_size}] to [B, D], got {got}")
        with warnings.catch_warnings():
            # The TorchScript exporter is deprecated in favour of torch.export (which needs onnxscript), and
            # tracing warns about shape arithmetic that the dynamic-batch check in the tests covers.
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module,
                example,
                str(path),
                input_names=names,
                output_names=[OUTPUT_NAME],
                dynamic_axes={**{name: {0: "batch"} for name in names}, OUTPUT_NAME: {0: "batch"}},
                opset_version=opset,
                do_constant_folding=True,
                dynamo=False,
            )
    finally:
        module.train(was_training)
    return path


def run_onnx(onnx_path: Path, inputs: np.ndarray, landmarks: np.ndarray | None = None) -> np.ndarray:
    """Run an exported embedding model on ``inputs`` [B, 3, S, S] float32 (and ``landmarks`` [B, 196, 2] for a
    file with that input) with ONNX Runtime (CPU) -> [B, D]."""
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    try:
        session = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # ORT raises its own opaque types for unreadable files
        raise ValueError(f"cannot load ONNX model {onnx_path}: {e}") from e
    arrays = [inputs] if landmarks is None else [inputs, landmarks]
    names = [i.name for i in session.get_inputs()]
    if len(names) != len(arrays):
        raise ValueError(f"{onnx_path}: takes inputs {names}, got {len(arrays)} array(s)")
    return session.run(
        None, {n: np.ascontiguousarray(a, dtype=np.float32) for n, a in zip(names, arrays, strict=True)}
    )[0]


def check_onnx_parity(
    module: nn.Module,
    onnx_path: Path,
    inputs: torch.Tensor,
    atol: float = 1e-4,
    landmarks: torch.Tensor | None = None,
) -> float:
    """Largest |ONNX Runtime - PyTorch| over ``inputs`` [B, 3, S, S] (and ``landmarks`` [B, 196, 2], for a
    module and file that take them); raises :class:`OnnxParityError` above ``atol`` times the output scale
    ``max(1, max |PyTorch output|)``.

    float32 rounding grows with the values: an un-normalised head with outputs in the thousands (e.g. a
    freshly initialised IR-50) differs by ~1e-6 relative, which an absolute 1e-4 would call a failure.
    """
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            expected = (module(inputs) if landmarks is None else module(inputs, landmarks)).float().cpu().numpy()
    finally:
        module.train(was_training)
    points = None if landmarks is None else landmarks.detach().float().cpu().numpy()
    got = run_onnx(onnx_path, inputs.detach().float().cpu().numpy(), points)
    if got.shape != expected.shape:
        raise OnnxParityError(f"{onnx_path}: ONNX output {got.shape} != PyTorch {expected.shape}")
    diff = float(np.abs(got - expected).max())
    scale = max(1.0, float(np.abs(expected).max()))
    if not diff <= atol * scale:
        raise OnnxParityError(
            f"{onnx_path}: ONNX Runtime differs from PyTorch by {diff:.3g} (> {atol:g} x output scale {scale:.3g})"
        )
    return diff


@dataclass(frozen=True)
class ExportReport:
    """What :func:`export_run` did: the file, the backbone's tensors and the parity measured at ``batch``."""

    path: Path
    tensors: int
    max_abs_diff: float
    batch: int

    def summary(self) -> str:
        return (
            f"export: {self.tensors} tensors -> {self.path}; ONNX Runtime vs PyTorch at batch {self.batch}: "
            f"max |diff| {self.max_abs_diff:.2e} (tolerance 1e-4 x max(1, max |output|))"
        )


def export_run(run_dir: Path, out: Path, *, parity_batch: int = 5) -> ExportReport:
    """Export the backbone of ``run_dir`` (rebuilt from its spec, weights loaded strictly, behind
    :class:`OnnxInput`; a LAFS ``"mesh"`` backbone with its ``landmarks`` input) to ``out`` at the spec's input
    size and check ONNX Runtime against PyTorch at ``parity_batch`` (random faces and points)."""
    spec = backbones.read(run_dir)
    backbone = backbones.build(spec, backbones.weights_file(run_dir))
    module, size, mesh = OnnxInput(backbone, spec.mean, spec.std), spec.input_size, needs_landmarks(backbone)
    path = export_onnx(module, out, img_size=size, landmarks=mesh)
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(parity_batch, 3, size, size, generator=generator)
    points = example_landmarks(parity_batch, size, generator) if mesh else None
    diff = check_onnx_parity(module, path, inputs, landmarks=points)
    return ExportReport(path=path, tensors=len(backbone.state_dict()), max_abs_diff=diff, batch=parity_batch)
