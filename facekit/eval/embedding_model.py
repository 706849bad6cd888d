"""One way to embed aligned faces, whatever computes the embedding: an ONNX file or a torch module.

Both follow :class:`EmbeddingModel`: ``embed(faces_rgb [N, 112, 112, 3] uint8, flip, landmarks) -> [N, D]``
float32, L2-normalised, where ``flip=True`` adds the embedding of the mirrored face before normalising (the
flip test of insightface's verification and IJB scripts). A model with ``needs_landmarks`` (a LAFS backbone
of the ``"mesh"`` source, or its ONNX export) also takes each face's 196 mesh landmarks ``[N, 196, 2]``
(mirrored with the face by :func:`~facekit.data.ops.landmarks.mirror_landmarks`); any other model takes
none. A torch module gets the pixels normalised as its
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
from facekit.data.ops.landmarks import mirror_landmarks
from facekit.eval.embedder import OnnxEmbedder, check_landmarks
from facekit.nn.backbones import Stats
from facekit.nn.landmark_vit import needs_landmarks


@runtime_checkable
class EmbeddingModel(Protocol):
    """Anything that embeds aligned RGB faces ``[N, H, W, 3]`` uint8 into L2-normalised ``[N, D]`` float32;
    ``input_hw`` is the ``(H, W)`` it takes; ``needs_landmarks``: it must also be given the faces' mesh
    landmarks ``[N, 196, 2]`` (and must not be otherwise)."""

    input_hw: tuple[int, int]
    needs_landmarks: bool

    def embed(self, faces_rgb: np.ndarray, flip: bool = False, landmarks: np.ndarray | None = None) -> np.ndarray: ...


class TorchEmbedder:
    """Embeddings from an ``nn.Module`` mapping ``[B, 3, S, S]`` normalised pixels to ``[B, D]``.

    Pixels are normalised as ``(x / 255 - mean) / std`` per RGB channel (a backbone spec's ``mean`` / ``std``),
    with the training views' arithmetic (:func:`~facekit.data.augment.normalize_batch`). The module runs in
    eval mode under ``torch.inference_mode`` in chunks of ``batch_size`` faces; its training mode is restored
    afterwards. A :class:`~facekit.nn.landmark_vit.LandmarkViT` of the ``"mesh"`` source is given the faces'
    landmarks (``needs_landmarks``).
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
        self.needs_landmarks = needs_landmarks(module)

    def embed(self, faces_rgb: np.ndarray, flip: bool = False, landmarks: np.ndarray | None = None) -> np.ndarray:
        """faces_rgb: [N, S, S, 3] uint8 RGB (landmarks: [N, 196, 2] if ``needs_landmarks``) -> [N, D]
        float32, unit rows (flip: add the mirrored face's)."""
        faces = np.asarray(faces_rgb)
        if faces.dtype != np.uint8 or faces.ndim != 4 or faces.shape[1:] != (self.size, self.size, 3):
            raise ValueError(
                f"expected aligned faces [N, {self.size}, {self.size}, 3] uint8 RGB, got {faces.dtype} {faces.shape}"
            )
        check_landmarks(self.needs_landmarks, landmarks, len(faces))
        was_training = self.module.training
        self.module.eval()
        try:
            emb = self._forward(faces, landmarks)
            if flip:
                mirrored = None if landmarks is None else mirror_landmarks(landmarks, self.size)
                emb = emb + self._forward(faces[:, :, ::-1], mirrored)
        finally:
            self.module.train(was_training)
        norms = np.linalg.norm(emb, axis=1, keepdims=True)
        return (emb / np.maximum(norms, 1e-12)).astype(np.float32)

    @torch.inference_mode()
    def _forward(self, faces: np.ndarray, landmarks: np.ndarray | None) -> np.ndarray:
        """Raw module outputs for faces [N, S, S, 3] uint8 (and their landmarks [N, 196, 2]) -> [N, D] float32."""
        out = []
        for start in range(0, faces.shape[0], self.batch_size):
            chunk = torch.from_numpy(np.ascontiguousarray(faces[start : start + self.batch_size]))
            x = normalize_batch(chunk.to(self.device).permute(0, 3, 1, 2), self.mean, self.std)
            if landmarks is None:
                out.append(self.module(x).float().cpu().numpy())
            else:
                points = torch.from_numpy(np.asarray(landmarks[start : start + self.batch_size], np.float32))
                out.append(self.module(x, points.to(self.device)).float().cpu().numpy())
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
