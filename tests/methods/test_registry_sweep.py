"""Registry sweep: every registered pre-training method, on each ViT backbone it accepts, does a forward and
backward pass on real aligned faces (through its own views) with a finite loss and finite gradients, in
fp32 and under bf16 autocast (what the engine uses on CUDA; CPU autocast casts the same ops)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import default_collate

from facekit.config import load_params
from facekit.data.images import decode_jpeg_rgb, encode_jpeg
from facekit.data.ops.align import align_face, transform_points
from facekit.data.ops.detect import create_detector, select_face
from facekit.data.ops.landmarks import FaceMesh, mesh_aligned_face
from facekit.data.record import FaceRecord
from facekit.methods.base import METHODS, StepValues
from facekit.nn.backbones import RANDOM_INIT
from facekit.stages.pretrain import build_method

PROJECT = Path(__file__).resolve().parents[2]
SAMPLE_RUNS = load_params(PROJECT / "params.yaml").pretrain
TINY = {"depth": 2, "embed_dim": 64, "num_heads": 2}
#: extra (run name, method, kwargs) pairs: the sample runs cover one backbone each; these add the others
VARIANTS: list[tuple[str, dict[str, Any]]] = [
    ("mae", {"backbone": "vit_base_patch16_224", "backbone_kwargs": {"img_size": 112, **TINY}}),
    ("mae", {"backbone": "facet_base", "backbone_kwargs": {**TINY, "num_prompts": 0, "head_dim": None}}),
    ("camd", {"backbone": "vit_base_patch16_224", "backbone_kwargs": {"img_size": 112, **TINY}}),
    ("mcf", {"backbone": "vit_base_patch16_224", "backbone_kwargs": {"img_size": 112, **TINY}}),
]


@pytest.fixture(scope="module")
def faces(assets: Path) -> list[tuple[np.ndarray, FaceRecord]]:
    """Two real aligned faces with their dense landmarks, as the shards hold them."""
    detector = create_detector("scrfd", assets / "models/scrfd_500m_bnkps.onnx")
    mesh = FaceMesh(assets / "models/mediapipe_face_landmark_468.tflite")
    out = []
    for name in ("img1.jpg", "img2.jpg"):
        img = cv2.imread(str(assets / "faces/deepface" / name))
        dets = detector.detect(img)
        i = select_face(dets, min_size=20)
        crop, m = align_face(img, dets.landmarks[i], size=112)
        landmarks = transform_points(dets.landmarks[i], m).astype(np.float32)
        rgb = np.ascontiguousarray(crop[:, :, ::-1])
        dense = mesh_aligned_face(mesh, rgb, landmarks).points[:, :2].astype(np.float16)
        record = FaceRecord(
            key=f"t/{name}", image=encode_jpeg(crop), identity=0, landmarks=landmarks,
            bbox=dets.boxes[i], det_score=float(dets.scores[i]), num_faces=len(dets), source="t",
            source_sha256="0" * 64, extra={"dense_landmarks": dense},
        )  # fmt: skip
        out.append((decode_jpeg_rgb(record.image), record))
    return out


def _batch(views: Any, faces: list[tuple[np.ndarray, FaceRecord]]) -> dict[str, Any]:
    items = [views(rgb, record) if getattr(views, "takes_record", False) else views(rgb) for rgb, record in faces]
    batch = default_collate(items)
    batch["identity"] = torch.zeros(len(faces), dtype=torch.long)
    batch["landmarks"] = torch.from_numpy(np.stack([r.landmarks for _, r in faces]))
    return batch


#: the sample's runs that train a method (``random_init`` exports an untrained backbone)
TRAINED_RUNS = [name for name, run in SAMPLE_RUNS.runs.items() if run.method != RANDOM_INIT]


def _cases() -> list[tuple[str, dict[str, Any]]]:
    return [(name, {}) for name in TRAINED_RUNS] + VARIANTS


@pytest.mark.parametrize("amp", [False, True], ids=["fp32", "bf16"])
@pytest.mark.parametrize(("run", "overrides"), _cases(), ids=lambda c: c if isinstance(c, str) else c.get("backbone"))
def test_forward_and_backward_are_finite(run: str, overrides: dict[str, Any], amp: bool, faces: list) -> None:
    torch.manual_seed(0)
    np.random.seed(0)
    config = SAMPLE_RUNS.runs[run]
    method, _ = build_method(dataclasses.replace(config, method_kwargs={**config.method_kwargs, **overrides}))
    extra = {k: float(v[0]) for k, v in method.schedules(10, 5).items()}
    hp = StepValues(step=0, epoch=0.0, progress=0.0, lr=1e-3, weight_decay=0.05, momentum=0.99, extra=extra)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
        out = method(_batch(method.views(), faces), hp)
    assert out["loss"].dtype == torch.float32 and torch.isfinite(out["loss"]), out
    out["loss"].backward()
    grads = [p.grad for p in method.parameters() if p.requires_grad and p.grad is not None]
    assert grads, "no parameter received a gradient"
    assert all(torch.isfinite(g).all() for g in grads)


def test_every_pretraining_method_is_swept() -> None:
    swept = {SAMPLE_RUNS.runs[name].method for name in TRAINED_RUNS}
    assert swept == set(METHODS.names()) - {"finetune"}
