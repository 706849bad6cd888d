"""Face detection: RetinaFace (MobileNet-0.25 ONNX, decoded here) and SCRFD (insightface's model zoo).

Both detectors take a BGR uint8 image ``[H, W, 3]``, letterbox it into a square ``input_size`` input
(aspect ratio kept, padded at the bottom/right) and return :class:`Detections` in source-image pixels.
A face that fills most of the input (a tight crop, e.g. a 92x112 face photo at 640: the face becomes
~500 px) is beyond the detectors' largest anchors and is missed; so when the first pass finds nothing,
a second pass letterboxes the image into :data:`RETRY_FILL` of the input side (the face then spans at
most about half of it). Images with a face found in the first pass are unaffected.
The five landmarks are in ArcFace order: left eye, right eye, nose tip, left and right mouth corner
(left/right as seen in the image).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Literal, Protocol

import cv2
import numpy as np
import onnxruntime as ort

DetectorKind = Literal["retinaface", "scrfd"]
#: The share of the input side the image's longer side takes in the second pass (see the module docstring).
RETRY_FILL = 0.5


@dataclass(frozen=True)
class Detections:
    """Faces found in one image, sorted by score descending.

    boxes:     [N, 4] float32, x1, y1, x2, y2 in source-image pixels.
    scores:    [N] float32 detector confidence.
    landmarks: [N, 5, 2] float32 five points (x, y) in source-image pixels.
    """

    boxes: np.ndarray
    scores: np.ndarray
    landmarks: np.ndarray

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    @classmethod
    def empty(cls) -> Detections:
        return cls(np.zeros((0, 4), np.float32), np.zeros((0,), np.float32), np.zeros((0, 5, 2), np.float32))


class FaceDetector(Protocol):
    """Anything that finds faces with five landmarks in a BGR uint8 image."""

    def detect(self, img_bgr: np.ndarray) -> Detections: ...


def create_detector(
    kind: DetectorKind,
    model_path: Path,
    *,
    input_size: int = 640,
    score_threshold: float = 0.5,
    nms_threshold: float = 0.4,
    num_threads: int = 1,
) -> FaceDetector:
    """Build a detector of ``kind`` from its ONNX file (one CPU session, ``num_threads`` intra-op threads)."""
    detector_cls = {"retinaface": RetinaFaceDetector, "scrfd": SCRFDDetector}.get(kind)
    if detector_cls is None:
        raise ValueError(f"unknown detector kind {kind!r}; expected 'retinaface' or 'scrfd'")
    return detector_cls(
        model_path,
        input_size=input_size,
        score_threshold=score_threshold,
        nms_threshold=nms_threshold,
        num_threads=num_threads,
    )


def select_face(dets: Detections, *, min_size: float, policy: Literal["largest", "score"] = "largest") -> int | None:
    """Index of the face to keep among those whose shorter box side is >= ``min_size`` (None if none).

    ``policy="largest"`` keeps the biggest box (area), ``"score"`` the most confident one.
    """
    if policy not in ("largest", "score"):
        raise ValueError(f"unknown policy {policy!r}; expected 'largest' or 'score'")
    if len(dets) == 0:
        return None
    wh = dets.boxes[:, 2:4] - dets.boxes[:, 0:2]
    candidates = np.flatnonzero(wh.min(axis=1) >= min_size)
    if candidates.size == 0:
        return None
    values = wh[candidates].prod(axis=1) if policy == "largest" else dets.scores[candidates]
    return int(candidates[np.argmax(values)])


def letterbox(img_bgr: np.ndarray, size: int, fill: float = 1.0) -> tuple[np.ndarray, float]:
    """Resize keeping aspect ratio so the longer side is ``fill * size``, pad bottom/right with black.

    Returns the ``[size, size, 3]`` uint8 canvas and the scale (canvas pixels per source pixel).
    """
    h, w = img_bgr.shape[:2]
    scale = size * fill / max(h, w)
    new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
    canvas = np.zeros((size, size, 3), np.uint8)
    canvas[:new_h, :new_w] = cv2.resize(img_bgr, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    return canvas, scale


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Indices kept by greedy non-maximum suppression, by score descending.

    boxes: [N, 4] x1, y1, x2, y2; scores: [N]. Returns [K] int64.
    """
    if boxes.shape[0] == 0:
        return np.zeros((0,), np.int64)
    xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)
    keep = cv2.dnn.NMSBoxes(xywh.tolist(), scores.tolist(), 0.0, iou_threshold)
    keep = np.asarray(keep, np.int64).reshape(-1)
    return keep[np.argsort(-scores[keep], kind="stable")]


def _check_image(img_bgr: np.ndarray) -> None:
    shape, dtype = getattr(img_bgr, "shape", None), getattr(img_bgr, "dtype", type(img_bgr).__name__)
    if dtype != np.uint8 or shape is None or len(shape) != 3 or shape[2] != 3 or min(shape[:2]) < 1:
        raise ValueError(f"expected a BGR uint8 image [H, W, 3], got {dtype} {shape}")


def _check_model_file(model_path: Path) -> Path:
    path = Path(model_path)
    if not path.is_file():
        raise FileNotFoundError(
            f"face model not found: {path}; set FACEKIT_ASSETS to the assets folder or pass model_path"
        )
    return path


def _session_options(num_threads: int) -> ort.SessionOptions:
    if num_threads < 1:
        raise ValueError(f"num_threads must be >= 1, got {num_threads}")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = num_threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3
    return opts


def _check_settings(input_size: int, score_threshold: float, nms_threshold: float) -> None:
    if input_size < 32 or input_size % 32:
        raise ValueError(f"input_size must be a positive multiple of 32, got {input_size}")
    if not 0.0 <= score_threshold <= 1.0 or not 0.0 < nms_threshold <= 1.0:
        raise ValueError(f"thresholds must lie in [0, 1], got score {score_threshold}, nms {nms_threshold}")


class _Letterboxed:
    """The two-pass :meth:`detect` of both detectors; a subclass runs one letterboxed pass in ``_detect``."""

    def detect(self, img_bgr: np.ndarray) -> Detections:
        """Faces in ``img_bgr`` ([H, W, 3] uint8 BGR), sorted by score descending."""
        _check_image(img_bgr)
        found = self._detect(img_bgr, 1.0)
        return found if len(found) else self._detect(img_bgr, RETRY_FILL)

    def _detect(self, img_bgr: np.ndarray, fill: float) -> Detections:
        raise NotImplementedError


class RetinaFaceDetector(_Letterboxed):
    """RetinaFace MobileNet-0.25 (biubug6-style ONNX export: outputs ``loc``, ``conf``, ``iou``).

    The network sees BGR minus the mean (104, 117, 123), unscaled; box and landmark offsets are decoded
    against SSD-style prior boxes (min_sizes [[16, 32], [64, 128], [256, 512]], steps [8, 16, 32],
    variances [0.1, 0.2]).
    """

    MEAN_BGR = (104.0, 117.0, 123.0)
    MIN_SIZES = ((16, 32), (64, 128), (256, 512))
    STEPS = (8, 16, 32)
    VARIANCES = (0.1, 0.2)

    def __init__(
        self,
        model_path: Path,
        *,
        input_size: int = 640,
        score_threshold: float = 0.5,
        nms_threshold: float = 0.4,
        num_threads: int = 1,
    ) -> None:
        path = _check_model_file(model_path)
        _check_settings(input_size, score_threshold, nms_threshold)
        try:
            self.session = ort.InferenceSession(
                str(path), _session_options(num_threads), providers=["CPUExecutionProvider"]
            )
        except Exception as err:  # ORT raises its own opaque types for unreadable files
            raise ValueError(f"cannot load RetinaFace ONNX model {path}: {err}") from err
        outputs = {o.name for o in self.session.get_outputs()}
        if not {"loc", "conf", "iou"} <= outputs:
            raise ValueError(f"{path} is not a RetinaFace export: outputs {sorted(outputs)}, expected loc, conf, iou")
        self.input_name = self.session.get_inputs()[0].name
        self.input_size = input_size
        self.score_threshold = score_threshold
        self.nms_threshold = nms_threshold

    @cached_property
    def priors(self) -> np.ndarray:
        """[P, 4] float32 prior boxes (cx, cy, w, h) in input pixels, in the network's output order."""
        size = self.input_size
        per_level = []
        for step, min_sizes in zip(self.STEPS, self.MIN_SIZES, strict=True):
            n = -(-size // step)
            ys, xs = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
            centres = (np.stack([xs, ys], axis=-1).reshape(-1, 1, 2) + 0.5) * step
            sizes = np.array(min_sizes, np.float32).reshape(1, -1, 1).repeat(2, axis=2)
            centres, sizes = np.broadcast_arrays(centres, sizes)
            per_level.append(np.concatenate([centres, sizes], axis=2).reshape(-1, 4))
        return np.concatenate(per_level).astype(np.float32)

    def _detect(self, img_bgr: np.ndarray, fill: float) -> Detections:
        canvas, scale = letterbox(img_bgr, self.input_size, fill)
        blob = cv2.dnn.blobFromImage(canvas, 1.0, mean=self.MEAN_BGR, swapRB=False)
        loc, conf, lmk = self.session.run(["loc", "conf", "iou"], {self.input_name: blob})
        scores = conf[0, :, 1]
        hit = np.flatnonzero(scores >= self.score_threshold)
        if hit.size == 0:
            return Detections.empty()
        boxes, landmarks = self._decode(loc[0, hit], lmk[0, hit], self.priors[hit])
        scores = scores[hit]
        keep = nms(boxes, scores, self.nms_threshold)
        return Detections(
            (boxes[keep] / scale).astype(np.float32),
            scores[keep].astype(np.float32),
            (landmarks[keep] / scale).astype(np.float32),
        )

    def _decode(self, loc: np.ndarray, lmk: np.ndarray, priors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Offsets to input-pixel geometry: loc [K, 4], lmk [K, 10], priors [K, 4] -> [K, 4], [K, 5, 2]."""
        v0, v1 = self.VARIANCES
        centre, wh = priors[:, None, :2], priors[:, None, 2:]
        box_centre = centre[:, 0] + loc[:, :2] * v0 * wh[:, 0]
        box_wh = wh[:, 0] * np.exp(loc[:, 2:] * v1)
        boxes = np.concatenate([box_centre - box_wh / 2, box_centre + box_wh / 2], axis=1)
        landmarks = centre + lmk.reshape(-1, 5, 2) * v0 * wh
        return boxes, landmarks


class SCRFDDetector(_Letterboxed):
    """SCRFD with keypoints (e.g. ``scrfd_500m_bnkps.onnx``) through ``insightface.model_zoo``.

    insightface decodes the anchors and runs NMS; this class letterboxes the image the same way as
    :class:`RetinaFaceDetector`, fixes the CPU session options and converts the output to :class:`Detections`.
    """

    def __init__(
        self,
        model_path: Path,
        *,
        input_size: int = 640,
        score_threshold: float = 0.5,
        nms_threshold: float = 0.4,
        num_threads: int = 1,
    ) -> None:
        from insightface.model_zoo import SCRFD, get_model

        path = _check_model_file(model_path)
        _check_settings(input_size, score_threshold, nms_threshold)
        try:
            model = get_model(str(path), providers=["CPUExecutionProvider"], sess_options=_session_options(num_threads))
        except Exception as err:  # the router fails with assorted errors on non-detector files
            raise ValueError(f"{path} is not a loadable SCRFD model: {err}") from err
        if not isinstance(model, SCRFD) or not model.use_kps:
            raise ValueError(f"{path} is not an SCRFD detector with keypoints (got {type(model).__name__})")
        model.prepare(
            ctx_id=-1,
            input_size=(input_size, input_size),
            det_thresh=score_threshold,
            nms_thresh=nms_threshold,
        )
        self.model = model
        self.input_size = input_size

    def _detect(self, img_bgr: np.ndarray, fill: float) -> Detections:
        canvas, scale = letterbox(img_bgr, self.input_size, fill)
        det, kps = self.model.detect(canvas, input_size=(self.input_size, self.input_size))
        if det.shape[0] == 0:
            return Detections.empty()
        order = np.argsort(-det[:, 4], kind="stable")
        return Detections(
            (det[order, :4] / scale).astype(np.float32),
            np.ascontiguousarray(det[order, 4], np.float32),
            (kps[order] / scale).astype(np.float32),
        )
