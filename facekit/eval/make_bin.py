"""Build insightface verification ``.bin`` sets from aligned faces and a pair list.

Pair lists:

- LFW View-2 ``pairs.txt``: a header ``<folds> <n>`` (LFW: ``10 300``), then per fold ``n`` same-person
  lines ``name idx1 idx2`` followed by ``n`` different-person lines ``name1 idx1 name2 idx2``. Image
  ``idx`` of ``name`` is ``name/name_<idx:04d>`` (any image extension).
- CSV with columns ``file_x,file_y,same`` (``same`` 1/0), names relative to the face folder.

Faces come from a folder (aligned 112 x 112 crops used as they are, other photos detected and aligned
onto the ArcFace template) or from packed shards (records matched by the end of their key, e.g.
``img38`` or ``Abel_Pacheco/Abel_Pacheco_0001``), whose masked twins give masked variants of a set.
Pairs are kept in file order, so 10 consecutive folds of a LFW ``.bin`` are the protocol's folds.

When every face of a set has dense landmarks (shards after the ``landmarks`` stage), the set gets a
companion ``<name>.landmarks.npy`` (:func:`landmarks_path`): float32 ``[2P, 196, 2]``, the MESH_196 points of
each image in its pixels (a masked twin shares its face's), which a LAFS model of the ``"mesh"`` source
embeds with (:func:`read_landmarks`).
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path, PurePosixPath
from typing import Literal

import numpy as np

from facekit.data.images import ImageError, decode_image, encode_jpeg
from facekit.data.ops.align import align_face
from facekit.data.ops.detect import FaceDetector, select_face
from facekit.data.ops.landmarks import DENSE_KEY, MESH_196, mesh_196
from facekit.data.shards import ShardError, ShardReader, read_index
from facekit.data.sources.verification_bin import write_verification_bin

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
MaskedMode = Literal["none", "second", "both"]
#: The suffix of a set's landmarks file: ``sample.bin`` -> ``sample.landmarks.npy``.
LANDMARKS_SUFFIX = ".landmarks.npy"


def landmarks_path(bin_path: Path) -> Path:
    """The landmarks file beside the set ``bin_path`` (see the module docstring)."""
    return Path(bin_path).with_suffix(LANDMARKS_SUFFIX)


def read_landmarks(bin_path: Path, n_images: int) -> np.ndarray:
    """The mesh landmarks ``[n_images, 196, 2]`` float32 of the set ``bin_path``; a FileNotFoundError that says
    how to get them when the set has none."""
    path = landmarks_path(bin_path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{bin_path}: the model embeds the patches at each face's mesh landmarks, but the set has no "
            f"{path.name} beside it; build the set from shards with dense landmarks (`facekit eval sets`, "
            "`facekit eval make-bin --shards`)"
        )
    points = np.load(path, allow_pickle=False)
    if points.shape != (n_images, len(MESH_196), 2):
        raise ValueError(
            f"{path}: expected [{n_images}, {len(MESH_196)}, 2] for the set's images, got {list(points.shape)}"
        )
    return points.astype(np.float32)


@dataclass(frozen=True)
class PairList:
    """P verification pairs: ``first``/``second`` [P] image names (no extension), ``issame`` [P] bool.

    ``n_folds`` is the protocol's fold count (LFW: 10 folds of 600 consecutive pairs), None for CSV lists.
    """

    first: list[str]
    second: list[str]
    issame: np.ndarray
    n_folds: int | None = None

    def __len__(self) -> int:
        return len(self.first)

    def names(self) -> list[str]:
        """Every image the pairs use, once, in first-use order."""
        return list(dict.fromkeys(n for pair in zip(self.first, self.second, strict=True) for n in pair))


def lfw_image_name(name: str, idx: int) -> str:
    """LFW's image naming: ``("Abel_Pacheco", 1) -> "Abel_Pacheco/Abel_Pacheco_0001"``."""
    return f"{name}/{name}_{idx:04d}"


def read_lfw_pairs(path: Path) -> PairList:
    """Parse a LFW View-2 ``pairs.txt`` (see the module docstring); checks the header's counts."""
    path = Path(path)
    lines = [line.split() for line in path.read_text().splitlines() if line.strip()]
    if not lines or len(lines[0]) != 2 or not all(v.isdigit() for v in lines[0]):
        raise ValueError(f"{path}: line 1 must be the header '<folds> <pairs per class>', e.g. '10 300'")
    n_folds, per_class = int(lines[0][0]), int(lines[0][1])
    first, second, issame = [], [], []
    for lineno, fields in enumerate(lines[1:], start=2):
        try:
            if len(fields) == 3:
                pair = (lfw_image_name(fields[0], int(fields[1])), lfw_image_name(fields[0], int(fields[2])), True)
            elif len(fields) == 4:
                pair = (lfw_image_name(fields[0], int(fields[1])), lfw_image_name(fields[2], int(fields[3])), False)
            else:
                raise ValueError(f"expected 'name idx1 idx2' or 'name1 idx1 name2 idx2', got {len(fields)} fields")
        except ValueError as e:
            raise ValueError(f"{path}: line {lineno}: {e}") from e
        first.append(pair[0])
        second.append(pair[1])
        issame.append(pair[2])
    expected = n_folds * 2 * per_class
    if len(first) != expected:
        raise ValueError(f"{path}: header announces {n_folds} x 2 x {per_class} = {expected} pairs, found {len(first)}")
    labels = np.array(issame, dtype=bool)
    per_fold = labels.reshape(n_folds, 2 * per_class)
    if not (per_fold[:, :per_class].all() and not per_fold[:, per_class:].any()):
        raise ValueError(f"{path}: each fold must list {per_class} same pairs, then {per_class} different pairs")
    return PairList(first, second, labels, n_folds)


def read_pairs_csv(path: Path) -> PairList:
    """Parse a ``file_x,file_y,same`` CSV (``same`` 1/0 or true/false); names lose their extension."""
    path = Path(path)
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        missing = {"file_x", "file_y", "same"} - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{path}: missing column(s) {sorted(missing)}; expected file_x,file_y,same")
        first, second, issame = [], [], []
        for lineno, row in enumerate(reader, start=2):
            same = row["same"].strip().lower()
            if same not in ("0", "1", "true", "false"):
                raise ValueError(f"{path}: line {lineno}: same must be 1/0 or true/false, got {row['same']!r}")
            first.append(face_name(row["file_x"]))
            second.append(face_name(row["file_y"]))
            issame.append(same in ("1", "true"))
    if not first:
        raise ValueError(f"{path}: no pairs")
    return PairList(first, second, np.array(issame, dtype=bool))


def read_pairs(path: Path) -> PairList:
    """A pair list by its format: ``.csv`` -> :func:`read_pairs_csv`, anything else LFW ``pairs.txt``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pair list not found: {path}")
    return read_pairs_csv(path) if path.suffix.lower() == ".csv" else read_lfw_pairs(path)


def face_name(file: str) -> str:
    """The name a face is looked up by: its relative POSIX path without an image extension."""
    pure = PurePosixPath(file.strip().replace("\\", "/"))
    return str(pure.with_suffix("")) if pure.suffix.lower() in IMAGE_EXTENSIONS else str(pure)


@dataclass
class AlignedFaces:
    """Encoded aligned faces (and masked twins) by name; ``landmarks``: name -> MESH_196 points ``[196, 2]``
    of the faces that have dense landmarks; ``failed`` holds name -> reason for faces not found."""

    images: dict[str, bytes]
    masked: dict[str, bytes] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    landmarks: dict[str, np.ndarray] = field(default_factory=dict)

    @classmethod
    def from_folder(
        cls, folder: Path, names: Iterable[str], *, detector: FaceDetector | None = None, size: int = 112
    ) -> AlignedFaces:
        """Faces ``names`` under ``folder``: ``size``-square images are taken as aligned crops (their bytes
        kept), others are detected with ``detector`` (largest face) and aligned onto the ArcFace template."""
        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"face folder not found: {folder}")
        faces = cls(images={})
        for name in names:
            path = _find_image(folder, name)
            if path is None:
                faces.failed[name] = f"no image {folder / name}.* ({'/'.join(IMAGE_EXTENSIONS)})"
                continue
            data = path.read_bytes()
            try:
                img = decode_image(data)
            except ImageError as e:
                faces.failed[name] = f"{path}: {e}"
                continue
            if img.shape[:2] == (size, size):
                faces.images[name] = data
                continue
            if detector is None:
                raise ValueError(
                    f"{path}: {img.shape[1]}x{img.shape[0]} is not an aligned {size}x{size} face; pass a detector"
                )
            dets = detector.detect(img)
            best = select_face(dets, min_size=0)
            if best is None:
                faces.failed[name] = f"{path}: no face detected"
                continue
            crop, _ = align_face(img, dets.landmarks[best], size=size)
            faces.images[name] = encode_jpeg(crop)
        return faces

    @classmethod
    def from_shards(cls, shards: Path) -> AlignedFaces:
        """Every record of packed shards, by key: a folder with ``index.json``, or one ``.lmdb`` shard; with
        the MESH_196 points of the records that have dense landmarks."""
        shards = Path(shards)
        if not shards.exists():
            raise FileNotFoundError(f"shards not found: {shards}")
        faces = cls(images={})
        try:
            is_folder = (shards / "index.json").is_file()
            paths = [shards / e["name"] for e in read_index(shards)["shards"]] if is_folder else [shards]
            for path in paths:
                for record in ShardReader(path):
                    faces.images[record.key] = record.image
                    if record.masked_image is not None:
                        faces.masked[record.key] = record.masked_image
                    if DENSE_KEY in record.extra:
                        faces.landmarks[record.key] = mesh_196(record)
        except ShardError as e:
            raise ValueError(f"cannot read faces from {shards}: {e}") from e
        return faces

    def get(self, name: str, masked: bool = False) -> bytes | None:
        """The face called ``name`` (exactly, or the key ending in ``/name``), or its masked twin; None if absent."""
        key = self.key(name)
        return (self.masked if masked else self.images).get(key) if key else None

    def landmarks_of(self, name: str) -> np.ndarray | None:
        """The MESH_196 points of the face called ``name`` (found as :meth:`get` finds it); None if it has none."""
        key = self.key(name)
        return self.landmarks.get(key) if key else None

    def key(self, name: str) -> str | None:
        """The key of the face called ``name``: itself, or the one key ending in ``/name``; None if absent."""
        if name in self.images:
            return name
        key = self._key_tails.get(name)
        if key == "":
            raise ValueError(f"face name {name!r} is ambiguous: several keys end with '/{name}'")
        return key

    @cached_property
    def _key_tails(self) -> dict[str, str]:
        """Every trailing part of every key (``a/b/c`` -> ``b/c``, ``c``) -> that key; '' when keys share it."""
        tails: dict[str, str] = {}
        for key in self.images:
            parts = key.split("/")
            for i in range(1, len(parts)):
                tail = "/".join(parts[i:])
                tails[tail] = "" if tails.get(tail, key) != key else key
        return tails


def _find_image(folder: Path, name: str) -> Path | None:
    direct = folder / name
    if direct.suffix.lower() in IMAGE_EXTENSIONS and direct.is_file():
        return direct
    return next((p for ext in IMAGE_EXTENSIONS if (p := folder / f"{name}{ext}").is_file()), None)


@dataclass(frozen=True)
class BinReport:
    """What :func:`build_bin` wrote: ``pairs`` written (``same`` of them same-person), ``dropped`` pair indices
    with the reason (a face not found, or no masked twin), and the set's landmarks file (None without)."""

    path: Path
    pairs: int
    same: int
    dropped: dict[int, str]
    landmarks: Path | None = None

    def summary(self) -> str:
        extra = f" (+ {self.landmarks.name})" if self.landmarks else ""
        return f"make-bin: {self.pairs} pairs ({self.same} same), {len(self.dropped)} dropped -> {self.path}{extra}"


def build_bin(
    pairs: PairList, faces: AlignedFaces, out: Path, *, masked: MaskedMode = "none", strict: bool = True
) -> BinReport:
    """Write ``out`` (insightface ``.bin``) with the faces of ``pairs``, and its landmarks file when every face
    written has landmarks (else an old landmarks file there is removed).

    masked: ``"second"`` substitutes the masked twin for the second face of each pair, ``"both"`` for both
    faces. A pair whose face or twin is missing raises ``ValueError`` when ``strict``; otherwise it is
    dropped (listed in the report; later pairs shift, so a LFW set no longer has the protocol's folds).
    """
    if masked not in ("none", "second", "both"):
        raise ValueError(f"masked must be 'none', 'second' or 'both', got {masked!r}")
    images: list[bytes] = []
    points: list[np.ndarray | None] = []
    issame: list[bool] = []
    dropped: dict[int, str] = {}
    for i, (a, b, same) in enumerate(zip(pairs.first, pairs.second, pairs.issame, strict=True)):
        want = ((a, masked == "both"), (b, masked != "none"))
        found = [faces.get(name, twin) for name, twin in want]
        if all(f is not None for f in found):
            images.extend(found)  # type: ignore[arg-type]
            points.extend(faces.landmarks_of(name) for name in (a, b))
            issame.append(bool(same))
            continue
        name, twin = next(w for w, f in zip(want, found, strict=True) if f is None)
        reason = faces.failed.get(name) or (f"{name}: no masked twin" if twin else f"{name}: face not found")
        if strict:
            raise ValueError(f"pair {i} ({a}, {b}): {reason}")
        dropped[i] = reason
    if not issame:
        raise ValueError(f"no pair of {len(pairs)} could be built (first problem: {next(iter(dropped.values()))})")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_verification_bin(out, images, issame)
    sidecar: Path | None = landmarks_path(out)
    if all(p is not None for p in points):
        np.save(sidecar, np.stack(points).astype(np.float32))  # type: ignore[arg-type]
    else:
        sidecar.unlink(missing_ok=True)
        sidecar = None
    return BinReport(path=out, pairs=len(issame), same=int(sum(issame)), dropped=dropped, landmarks=sidecar)
