"""One way to embed aligned faces, whatever computes the embedding: an ONNX file or a torch module.

Both follow :class:`EmbeddingModel`: ``embed(faces_rgb [N, 112, 112, 3] uint8, flip) -> [N, D]`` float32,
L2-normalised, where ``flip=True`` adds the embedding of the mirrored face before normalising (the flip
test of insightface's verification and IJB scripts). A torch module gets the pixels normalised as its
backbone spec says (``(x / 255 - mean) / std``, as it was trained); an ONNX file gets ArcFace's
``(x - 127.5) / 128``, and ``facekit export onnx`` folds the conversion between the two into the file, so a
run and its ONNX export give the same embeddings.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from torch import nn

from facekit.data.augment import normalize_batch
from facekit.eval.embedder import OnnxEmbedder
from facekit.nn.backbones import Stats


@runtime_checkable
class EmbeddingModel(Protocol):
    """Anything that embeds aligned RGB faces ``[N, H, W, 3]`` uint8 into L2-normalised ``[N, D]`` float32;
    ``input_hw`` is the ``(H, W)`` it takes."""

    input_hw: tuple[int, int]

    def embed(self, faces_rgb: np.ndarray, flip: bool = False) -> np.ndarray: ...


class TorchEmbedder:
    """Embeddings from an ``nn.Module`` mapping ``[B, 3, S, S]`` normalised pixels to ``[B, D]``.

    Pixels are normalised as ``(x / 255 - mean) / std`` per RGB channel (a backbone spec's ``mean`` / ``std``),
    with the training views' arithmetic (:func:`~facekit.data.augment.normalize_batch`). The module runs in
    eval mode under ``torch.inference_mode`` in chunks of ``batch_size`` faces; its training mode is restored
    afterwards.
    """

    def __init__(
        self,
        module: nn.Module,
        mean: Stats,
        std: Stats,
        *,
        size: int = 112,
        batch_size: int = 64,
        device: str = "cpu",
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.module = module
        self.mean, self.std = mean, std
        self.size = size
        self.input_hw = (size, size)
        self.batch_size = batch_size
        self.device = torch.device(device)

    def embed(self, faces_rgb: np.ndarray, flip: bool = False) -> np.ndarray:
        """faces_rgb: [N, S, S, 3] uint8 RGB -> [N, D] float32, unit rows (flip: add the mirrored face's)."""
        faces = np.asarray(faces_rgb)
        if faces.dtype != np.uint8 or faces.ndim != 4 or faces.shape[1:] != (self.size, self.size, 3):
            raise ValueError(
                f"expected aligned faces [N, {self.size}, {self.size}, 3] uint8 RGB, got {faces.dtype} {faces.shape}"
            )
        was_training = self.module.training
        self.module.eval()
        try:
            emb = self._forward(faces)
            if flip:
                emb = emb + self._forward(faces[:, :, ::-1])
        finally:
            self.module.train(was_training)
        norms = np.linalg.norm(emb, axis=1, keepdims=True)
        return (emb / np.maximum(norms, 1e-12)).astype(np.float32)

    @torch.inference_mode()
    def _forward(self, faces: np.ndarray) -> np.ndarray:
        """Raw module outputs for faces [N, S, S, 3] uint8 -> [N, D] float32."""
        out = []
        for start in range(0, faces.shape[0], self.batch_size):
            chunk = torch.from_numpy(np.ascontiguousarray(faces[start : start + self.batch_size]))
            x = normalize_batch(chunk.to(self.device).permute(0, 3, 1, 2), self.mean, self.std)
            out.append(self.module(x).float().cpu().numpy())
        if not out:
            raise ValueError("no faces to embed")
        return np.concatenate(out).reshape(faces.shape[0], -1)


def load_embedding_model(path: Path, *, num_threads: int = 1) -> EmbeddingModel:
    """The embedding model stored at ``path``: an ``.onnx`` file ([B, 3, 112, 112] -> [B, D])."""
    path = Path(path)
    if path.suffix.lower() != ".onnx":
        raise ValueError(
            f"{path}: expected an .onnx embedding model; export a run folder first with `facekit export onnx RUN_DIR`"
        )
    return OnnxEmbedder(path, num_threads=num_threads)
