"""The sample schemas that flow through facekit's data lineage.

``RawRecord`` is what a raw source yields (encoded bytes of a photo, before detection).
``FaceRecord`` is one aligned face, the value stored in every LMDB shard.
Both carry a stable ``key`` (``"<source>/<relative path without extension>"``) that never changes
between runs, so shard assignment, de-duplication and content hashes are reproducible.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import msgpack
import numpy as np

#: Bumped whenever the serialised layout of ``FaceRecord`` changes; stored in each shard's metadata.
SCHEMA_VERSION = 1


@dataclass(frozen=True)
class RawRecord:
    """One raw photo as read from a source.

    ``data`` is the encoded file content (JPEG/PNG/... bytes), ``identity`` the integer label
    (-1 = unlabelled), ``meta`` free-form source metadata (e.g. a loose bbox or landmarks from a
    VGGFace2 CSV, a LAION URL).
    """

    key: str
    data: bytes
    identity: int = -1
    source: str = ""
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Rejection:
    """A record that did not make it, and why (``reason`` is a short stable code, ``detail`` free text)."""

    key: str
    reason: str
    detail: str = ""


@dataclass(frozen=True)
class FaceRecord:
    """One aligned face.

    image:      encoded aligned crop (JPEG or PNG bytes, ``align.storage``), ``size`` x ``size`` pixels, RGB.
    identity:   integer identity label (-1 = unlabelled).
    landmarks:  [5, 2] float32, the five ArcFace points in crop pixel coordinates.
    bbox:       [4] float32, x1, y1, x2, y2 of the detection in the source image.
    det_score:  detector confidence of the kept face.
    num_faces:  how many faces the detector found in the source image.
    source_sha256: hex digest of the raw file bytes (used to find duplicate files).
    mask:       type of the synthetic mask drawn on ``masked_image`` (None: the face has no masked twin).
    masked_image: encoded masked twin of ``image`` (same geometry), or None.
    extra:      optional arrays added by later stages (e.g. ``"dense_landmarks"`` [468, 2] float16 in
                crop pixels), name -> array.
    """

    key: str
    image: bytes
    identity: int
    landmarks: np.ndarray
    bbox: np.ndarray
    det_score: float
    num_faces: int
    source: str
    source_sha256: str
    mask: str | None = None
    masked_image: bytes | None = None
    extra: dict[str, np.ndarray] = field(default_factory=dict)

    def to_bytes(self) -> bytes:
        """Serialise to msgpack (arrays as dtype/shape/bytes); inverse of :meth:`from_bytes`."""
        d = dataclasses.asdict(self)
        d["landmarks"] = _pack_array(self.landmarks.astype(np.float32))
        d["bbox"] = _pack_array(self.bbox.astype(np.float32))
        d["extra"] = {k: _pack_array(v) for k, v in sorted(self.extra.items())}
        return msgpack.packb(d, use_bin_type=True)

    @classmethod
    def from_bytes(cls, buf: bytes | memoryview) -> FaceRecord:
        d = msgpack.unpackb(buf, raw=False)
        d["landmarks"] = _unpack_array(d["landmarks"])
        d["bbox"] = _unpack_array(d["bbox"])
        d["extra"] = {k: _unpack_array(v) for k, v in d["extra"].items()}
        return cls(**d)

    @staticmethod
    def read_fields(buf: bytes | memoryview, *names: str) -> tuple[Any, ...]:
        """Selected fields of a serialised record without building it (the loaders' fast path).

        ``landmarks`` / ``bbox`` come back as read-only arrays; nothing of ``buf`` is kept.
        """
        d = msgpack.unpackb(buf, raw=False)
        return tuple(_view_array(d[n]) if n in _ARRAY_FIELDS else d[n] for n in names)

    def replace(self, **changes: Any) -> FaceRecord:
        return dataclasses.replace(self, **changes)


def _pack_array(a: np.ndarray) -> dict[str, Any]:
    a = np.ascontiguousarray(a)
    return {"dtype": a.dtype.str, "shape": list(a.shape), "data": a.tobytes()}


def _view_array(d: dict[str, Any]) -> np.ndarray:
    return np.frombuffer(d["data"], dtype=np.dtype(d["dtype"])).reshape(d["shape"])


def _unpack_array(d: dict[str, Any]) -> np.ndarray:
    return _view_array(d).copy()


_ARRAY_FIELDS = frozenset({"landmarks", "bbox"})
