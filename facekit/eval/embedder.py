"""Face embeddings from an ONNX recognition model (ArcFace-style: NCHW RGB input, (x - 127.5) / 128).

A LAFS model of the ``"mesh"`` source (``facekit export onnx``) has a second input, ``landmarks``
``[B, 196, 2]``: each face's mesh points in its pixels; :class:`OnnxEmbedder` then needs them
(``needs_landmarks``) and mirrors them with the face for the flip test.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from facekit.data.ops.landmarks import MESH_196, mirror_landmarks

_DYNAMIC_BATCH = 256
#: The input of an ONNX embedding model: ``(pixels - ONNX_PIXEL_MEAN) / ONNX_PIXEL_STD`` (ArcFace's).
ONNX_PIXEL_MEAN = 127.5
ONNX_PIXEL_STD = 128.0
#: The name of the landmarks input of a LAFS ``"mesh"`` model's ONNX file.
LANDMARKS_INPUT = "landmarks"


class OnnxEmbedder:
    """L2-normalised embeddings of aligned face crops, on one CPU ONNX Runtime session.

    Models with a fixed batch dimension (e.g. MobileFaceNet exported with batch 1) are run in chunks of
    that size; dynamic-batch models in chunks of up to 256 faces. A second input named ``landmarks`` makes
    ``needs_landmarks`` true.
    """

    def __init__(self, model_path: Path, *, num_threads: int = 1) -> None:
        path = Path(model_path)
        if not path.is_file():
            raise FileNotFoundError(
                f"embedding model not found: {path}; set FACEKIT_ASSETS to the assets folder or pass model_path"
            )
        if num_threads < 1:
            raise ValueError(f"num_threads must be >= 1, got {num_threads}")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = num_threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        except Exception as err:  # ORT raises its own opaque types for unreadable files
            raise ValueError(f"cannot load embedding ONNX model {path}: {err}") from err
        inp, *others = self.session.get_inputs()
        if len(inp.shape) != 4 or inp.shape[1] != 3:
            raise ValueError(f"{path}: expected an NCHW RGB input, got shape {inp.shape}")
        if [o.name for o in others] not in ([], [LANDMARKS_INPUT]):
            raise ValueError(f"{path}: inputs after the image must be [{LANDMARKS_INPUT!r}] or none, got {others}")
        self.input_name = inp.name
        self.needs_landmarks = bool(others)
        self.batch_size = inp.shape[0] if isinstance(inp.shape[0], int) else _DYNAMIC_BATCH
        self.fixed_batch = isinstance(inp.shape[0], int)
        h, w = inp.shape[2], inp.shape[3]
        self.input_hw = (h, w) if isinstance(h, int) and isinstance(w, int) else (112, 112)
        self.dim = int(self.session.get_outputs()[0].shape[-1])

    def embed(self, faces_rgb: np.ndarray, flip: bool = False, landmarks: np.ndarray | None = None) -> np.ndarray:
        """Embed aligned faces ``[N, H, W, 3]`` uint8 RGB (H, W = the model's input, 112) -> [N, D] float32.

        ``flip=True`` adds the embedding of the horizontally flipped face before normalising. ``landmarks``:
        ``[N, 196, 2]``, exactly when ``needs_landmarks``.
        """
        faces = np.asarray(faces_rgb)
        if faces.dtype != np.uint8 or faces.ndim != 4 or faces.shape[1:] != (*self.input_hw, 3):
            raise ValueError(
                f"expected aligned faces [N, {self.input_hw[0]}, {self.input_hw[1]}, 3] uint8 RGB, "
                f"got {faces.dtype} {faces.shape}"
            )
        check_landmarks(self.needs_landmarks, landmarks, len(faces))
        if faces.shape[0] == 0:
            return np.zeros((0, self.dim), np.float32)
        emb = self._forward(faces, landmarks)
        if flip:
            mirrored = None if landmarks is None else mirror_landmarks(landmarks, self.input_hw[1])
            emb = emb + self._forward(faces[:, :, ::-1], mirrored)
        norms = np.linalg.norm(emb, axis=1, keepdims=True)
        return (emb / np.maximum(norms, 1e-12)).astype(np.float32)

    def _forward(self, faces: np.ndarray, landmarks: np.ndarray | None) -> np.ndarray:
        """Raw model outputs for faces [N, H, W, 3] uint8 RGB (and their landmarks [N, 196, 2]) -> [N, D]."""
        out = []
        for start in range(0, faces.shape[0], self.batch_size):
            chunk = faces[start : start + self.batch_size]
            points = None if landmarks is None else np.asarray(landmarks[start : start + self.batch_size], np.float32)
            n = chunk.shape[0]
            if self.fixed_batch and n < self.batch_size:  # pad with copies of the last face
                pad = np.minimum(np.arange(self.batch_size), n - 1)
                chunk, points = chunk[pad], None if points is None else points[pad]
            blob = ((chunk.astype(np.float32) - ONNX_PIXEL_MEAN) / ONNX_PIXEL_STD).transpose(0, 3, 1, 2)
            feed = {self.input_name: np.ascontiguousarray(blob)}
            if points is not None:
                feed[LANDMARKS_INPUT] = np.ascontiguousarray(points)
            out.append(self.session.run(None, feed)[0][:n])
        return np.concatenate(out).reshape(faces.shape[0], -1).astype(np.float32)


def check_landmarks(needed: bool, landmarks: np.ndarray | None, n: int) -> None:
    """ValueError unless ``landmarks`` is ``[n, 196, 2]`` when ``needed``, and None otherwise."""
    if not needed:
        if landmarks is not None:
            raise ValueError("this embedding model takes no landmarks (only a LAFS model of the 'mesh' source does)")
        return
    points = len(MESH_196)
    if landmarks is None:
        raise ValueError(
            f"this model (LAFS, landmarks='mesh') embeds the patches at each face's {points} mesh landmarks: "
            f"pass landmarks [N, {points}, 2] (a verification set built from shards with dense landmarks has "
            "them beside it)"
        )
    if np.shape(landmarks) != (n, points, 2):
        raise ValueError(f"landmarks must be [{n}, {points}, 2] for {n} faces, got {list(np.shape(landmarks))}")
