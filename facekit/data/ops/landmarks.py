"""Dense face landmarks: MediaPipe's 468-point face mesh run on aligned face crops.

The mesh model wants a face with margin around it, like the crops MediaPipe's own face detector hands
it. facekit's aligned crops are tight (the ArcFace 112 crop), so :func:`mesh_aligned_face` warps the crop
into a 192 x 192 frame where its five points land on the ArcFace template scaled to ``face_fraction`` of
the frame, fills the new border from the crop's edge pixels, runs the mesh and maps its points back to
crop pixels with the inverse warp.

Mesh points are ``(x, y, z)``: x, y in pixels, z a relative depth in the same pixel units (smaller is
closer to the camera). "Left" and "right" below are as seen in the image, like the ArcFace five points
(left eye = the eye on the image's left).

Index tables into the 468 mesh vertices (MediaPipe's canonical face topology):

- :data:`MESH_68`: a 68-point subset in iBUG-300W order, for code written against 68-point landmarks.
- :data:`MESH_196`: 196 well-spread vertices in 14 x 14 raster order, for LAFS's landmark tokens
  (:func:`mesh_196` reads them off a record's ``extra[DENSE_KEY]``).
- :func:`mesh_five_points`: the mesh's version of the detector's five points, to check one against the
  other (:func:`agreement`).
- :func:`mirror_landmarks`: points of a face on its horizontal mirror (the flip test of LAFS models).

Measured on the 61 deepface photos (SCRFD-500M five points, tight 112 ArcFace crops, JPEG q95): the
median :func:`agreement` is 5.2% of the inter-ocular distance when the crop fills the whole 192 frame,
3.5% with ``face_fraction=0.8`` (0.75: 3.8%, 0.7: 4.0%, 0.85: 3.8%), so 0.8 is the default. Replicated
edge pixels beat mirrored ones at 0.75-0.85 (0.75: 3.8% vs 4.1%, 0.8: 3.5% vs 3.6%) and clearly at 0.5,
where mirrored copies of the face confuse the mesh (presence down to 0.08).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import cv2
import numpy as np

from facekit.data.ops.align import alignment_template, estimate_similarity
from facekit.data.record import FaceRecord

#: Side of the square mesh input, pixels.
MESH_INPUT = 192
NUM_MESH_POINTS = 468
#: ``FaceRecord.extra`` key of a face's mesh points, float16 ``[468, 2]`` crop pixels (the landmarks stage).
DENSE_KEY = "dense_landmarks"

#: Face contour of the eye on the image's left (upper lid 33 -> 133, lower lid back), 16 vertices.
LEFT_EYE = np.array([33, 246, 161, 160, 159, 158, 157, 173, 133, 155, 154, 153, 145, 144, 163, 7])
#: The mirror image of :data:`LEFT_EYE` (eye on the image's right).
RIGHT_EYE = np.array([263, 466, 388, 387, 386, 385, 384, 398, 362, 382, 381, 380, 374, 373, 390, 249])
#: Nose tip. Vertex 4 (just above the most protruding vertex 1) is where SCRFD puts its nose point:
#: median distance 4.2% of the inter-ocular distance against 7.4% for vertex 1.
NOSE_TIP = 4
#: Outer mouth corners, image-left and image-right.
MOUTH_LEFT, MOUTH_RIGHT = 61, 291

#: [68] int64: mesh vertices in iBUG-300W 68-point order (0-indexed). Each iBUG group lies on a mesh
#: contour (face oval, upper brow edge, nose ridge, nostril base, eyelids, outer and inner lips); along
#: each contour the vertices nearest to iBUG's spacing were chosen on the mean of 61 real faces by arc
#: length (the jaw starts at the oval vertex level with the outer eye corners), then the image-right side
#: was made the exact mirror of the image-left side with MediaPipe's symmetric vertex pairs.
MESH_68 = np.array(
    [
        # 0-16 jaw, image-left ear level -> chin (8) -> image-right ear level
        *(127, 234, 93, 132, 172, 136, 149, 176, 152, 400, 378, 365, 397, 361, 323, 454, 356),
        # 17-21 image-left brow outer -> inner; 22-26 image-right brow inner -> outer (upper edge)
        *(70, 63, 105, 66, 107, 336, 296, 334, 293, 300),
        # 27-30 nose ridge, nasion -> tip; 31-35 nostril base, image-left -> image-right
        *(168, 197, 195, NOSE_TIP, 98, 97, 2, 326, 327),
        # 36-41 image-left eye: outer corner, upper lid x2, inner corner, lower lid x2
        *(33, 160, 158, 133, 153, 144),
        # 42-47 image-right eye: inner corner, upper lid x2, outer corner, lower lid x2
        *(362, 385, 387, 263, 373, 380),
        # 48-59 outer lips clockwise from the image-left corner; 60-67 inner lips likewise
        *(MOUTH_LEFT, 39, 37, 0, 267, 269, MOUTH_RIGHT, 321, 314, 17, 84, 91),
        *(78, 81, 13, 311, 308, 402, 14, 178),
    ]
)

#: [196] int64: mesh vertices for LAFS's 14 x 14 landmark tokens, row-major (token ``r * 14 + c``).
#: A plain selection gives well-spread points: farthest-point sampling over the 2-D mean mesh of 61
#: real aligned faces, started at the vertex nearest their centroid (the nose tip, 4), leaves at least
#: 3.5 px between any two picks on a 112 crop (a random 196 of the 468: 0.3 px) and no mesh vertex
#: further than 3.5 px from a pick. The picks were then sorted by y into 14 rows of 14 and each row by
#: x, so token rows run brow -> chin and columns image-left -> image-right.
MESH_196 = np.array(
    [
        *(54, 103, 67, 69, 109, 108, 151, 10, 337, 338, 299, 297, 332, 284),
        *(21, 71, 68, 63, 104, 105, 107, 336, 296, 333, 293, 298, 301, 251),
        *(162, 46, 224, 223, 65, 55, 9, 8, 285, 442, 282, 444, 300, 389),
        *(156, 160, 28, 157, 221, 193, 168, 417, 441, 385, 257, 387, 467, 353),
        *(127, 35, 130, 153, 133, 122, 6, 351, 463, 381, 374, 339, 265, 264),
        *(234, 111, 117, 228, 24, 230, 128, 196, 357, 451, 450, 449, 261, 340),
        *(118, 101, 120, 217, 195, 281, 399, 420, 277, 329, 330, 347, 346, 447),
        *(137, 50, 36, 142, 49, 220, 134, 4, 440, 279, 371, 266, 280, 366),
        *(177, 187, 205, 206, 203, 219, 238, 462, 460, 423, 426, 425, 411, 376),
        *(215, 207, 216, 186, 92, 165, 167, 164, 393, 391, 322, 436, 427, 435),
        *(192, 214, 212, 184, 80, 72, 0, 268, 303, 306, 410, 432, 434, 416),
        *(172, 135, 43, 91, 179, 86, 14, 316, 402, 405, 320, 335, 273, 397),
        *(136, 169, 210, 204, 182, 201, 84, 17, 313, 431, 430, 394, 365, 364),
        *(170, 32, 176, 208, 148, 200, 199, 152, 377, 428, 400, 262, 378, 379),
    ]
)


def mesh_196(record: FaceRecord | None) -> np.ndarray:
    """LAFS's 196 mesh landmarks ``[196, 2]`` float32 (crop pixels) of a record with dense landmarks."""
    if record is None:
        raise ValueError("LAFS mesh landmarks: the views need the FaceRecord: call views(rgb, record)")
    dense = record.extra.get(DENSE_KEY)
    if dense is None:
        raise ValueError(f"record {record.key}: no extra[{DENSE_KEY!r}] for LAFS (run the landmarks stage)")
    if dense.ndim != 2 or dense.shape[0] != NUM_MESH_POINTS or dense.shape[1] not in (2, 3):
        raise ValueError(f"record {record.key}: extra[{DENSE_KEY!r}] is {list(dense.shape)}, not [468, 2]")
    return dense[MESH_196, :2].astype(np.float32)


def mirror_landmarks(points: np.ndarray, width: int) -> np.ndarray:
    """Points ``[..., 2]`` (x, y) of an image ``width`` pixels wide → the same points on its horizontal mirror
    (``x' = width − 1 − x``; the order is kept, as a flipped crop keeps it in
    :func:`~facekit.nn.landmark_patches.landmarks_in_view`)."""
    out = np.array(points, dtype=np.float32)
    out[..., 0] = width - 1 - out[..., 0]
    return out


_BORDERS = {"replicate": cv2.BORDER_REPLICATE, "reflect": cv2.BORDER_REFLECT_101, "constant": cv2.BORDER_CONSTANT}
Border = Literal["replicate", "reflect", "constant"]


class FaceMesh:
    """MediaPipe's face-mesh TFLite model (``mediapipe_face_landmark_468.tflite``) on the CPU.

    One interpreter, not thread-safe: make one per process (or thread).
    """

    def __init__(self, model_path: Path, *, num_threads: int = 1) -> None:
        from ai_edge_litert.interpreter import Interpreter

        model_path = Path(model_path)
        if not model_path.is_file():
            raise FileNotFoundError(f"face-mesh model not found: {model_path}")
        self.model_path = model_path
        self._interp = Interpreter(model_path=str(model_path), num_threads=num_threads)
        self._interp.allocate_tensors()
        inputs = {d["name"]: d for d in self._interp.get_input_details()}
        outputs = {d["name"]: d for d in self._interp.get_output_details()}
        if "input_1" not in inputs or not {"conv2d_21", "conv2d_31"} <= outputs.keys():
            raise ValueError(
                f"{model_path}: not the MediaPipe 468-point face mesh (inputs {sorted(inputs)}, "
                f"outputs {sorted(outputs)})"
            )
        shape = tuple(inputs["input_1"]["shape"])
        if shape != (1, MESH_INPUT, MESH_INPUT, 3):
            raise ValueError(f"{model_path}: input shape {shape}, expected (1, {MESH_INPUT}, {MESH_INPUT}, 3)")
        self._input = inputs["input_1"]["index"]
        self._points = outputs["conv2d_21"]["index"]
        self._presence = outputs["conv2d_31"]["index"]

    def __call__(self, frame_rgb: np.ndarray) -> tuple[np.ndarray, float]:
        """Run the mesh on one frame.

        frame_rgb: [192, 192, 3] uint8 RGB. Returns points [468, 3] float32 in frame pixels and the
        face-presence probability (sigmoid of the model's logit).
        """
        if frame_rgb.shape != (MESH_INPUT, MESH_INPUT, 3) or frame_rgb.dtype != np.uint8:
            raise ValueError(
                f"expected a uint8 frame [{MESH_INPUT}, {MESH_INPUT}, 3], got {frame_rgb.dtype} {frame_rgb.shape}"
            )
        x = (frame_rgb.astype(np.float32) / 255.0)[None]
        self._interp.set_tensor(self._input, x)
        self._interp.invoke()
        points = self._interp.get_tensor(self._points).reshape(NUM_MESH_POINTS, 3).astype(np.float32)
        logit = float(self._interp.get_tensor(self._presence).reshape(()))
        return points, float(1.0 / (1.0 + np.exp(-logit)))


@dataclass(frozen=True)
class MeshResult:
    """The mesh on one aligned crop: points [468, 3] float32 (x, y in crop pixels, z in the same scale)
    and the face-presence probability in [0, 1]."""

    points: np.ndarray
    presence: float


def mesh_frame(crop_landmarks: np.ndarray, face_fraction: float) -> np.ndarray:
    """The similarity M ([2, 3] float64, crop pixels -> mesh frame pixels) that puts the crop's five
    points ([5, 2]) on the ArcFace template scaled to ``face_fraction`` of the 192 frame."""
    return estimate_similarity(crop_landmarks, alignment_template(MESH_INPUT, face_fraction))


def mesh_aligned_face(
    mesh: FaceMesh,
    crop_rgb: np.ndarray,
    crop_landmarks: np.ndarray,
    *,
    face_fraction: float = 0.8,
    border: Border = "replicate",
) -> MeshResult:
    """Dense landmarks of an aligned face crop.

    crop_rgb: [S, S, 3] uint8 RGB (any S, e.g. the 112 ArcFace crop); crop_landmarks: [5, 2] its five
    ArcFace points in crop pixels. The crop is warped so those points sit on the ArcFace template at
    ``face_fraction`` of the 192 frame; pixels outside the crop come from its ``border``.
    """
    M = mesh_frame(crop_landmarks, face_fraction)
    frame = cv2.warpAffine(crop_rgb, M, (MESH_INPUT, MESH_INPUT), flags=cv2.INTER_LINEAR, borderMode=_BORDERS[border])
    pts, presence = mesh(frame)
    inv = cv2.invertAffineTransform(M)
    scale = float(np.sqrt(abs(np.linalg.det(inv[:, :2]))))
    out = np.empty_like(pts)
    out[:, :2] = pts[:, :2] @ inv[:, :2].T + inv[:, 2]
    out[:, 2] = pts[:, 2] * scale
    return MeshResult(out, presence)


def mesh_five_points(points: np.ndarray) -> np.ndarray:
    """The mesh's five ArcFace points: [468, 2 or 3] -> [5, 2] float32 (eye centres = mean of each eye
    contour, nose tip, outer mouth corners), in the points' pixel frame."""
    xy = np.asarray(points, dtype=np.float32)[:, :2]
    if xy.shape[0] != NUM_MESH_POINTS:
        raise ValueError(f"expected {NUM_MESH_POINTS} mesh points, got {xy.shape[0]}")
    return np.stack([xy[LEFT_EYE].mean(0), xy[RIGHT_EYE].mean(0), xy[NOSE_TIP], xy[MOUTH_LEFT], xy[MOUTH_RIGHT]])


def inter_ocular(five: np.ndarray) -> float:
    """Distance between the two eye points of five ArcFace points [5, 2], pixels."""
    five = np.asarray(five, dtype=np.float64)
    return float(np.linalg.norm(five[1] - five[0]))


def agreement(points: np.ndarray, five: np.ndarray) -> float:
    """Mean distance of :func:`mesh_five_points` of ``points`` ([468, 2 or 3]) to the detector's ``five``
    ([5, 2], same frame), as a fraction of the detector's inter-ocular distance (0 = perfect)."""
    five = np.asarray(five, dtype=np.float64)
    iod = inter_ocular(five)
    if not iod > 0:
        raise ValueError(f"degenerate five points (inter-ocular distance {iod})")
    return float(np.linalg.norm(mesh_five_points(points) - five, axis=1).mean() / iod)
