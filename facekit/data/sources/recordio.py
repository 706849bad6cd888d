"""insightface / MXNet RecordIO datasets (``train.rec`` + ``train.idx`` + ``property``), without MXNet.

Binary format (dmlc-core RecordIO, little-endian):

- record: ``uint32 magic 0xCED7230A``, ``uint32 lrecord`` (low 29 bits: length, top 3 bits: cflag),
  ``length`` payload bytes, zero padding to a multiple of 4. A payload holding the magic at a 4-aligned
  offset is split there into parts (cflag 1 first, 2 middle, 3 last; 0 = whole record) and that magic is
  left out; readers join the parts with it.
- payload: IRHeader ``<IfQQ`` (flag, label, id, id2), then ``flag`` float32 labels when flag > 0 (the
  header's own label is then unused), then the encoded image.
- ``train.idx``: text lines ``<record index>\\t<byte offset>``; ``property``: ``<num_classes>,<h>,<w>``.

Two layouts, told apart by record 0 (as insightface does):

- header layout (MS1M, Glint360K, WebFace): record 0 has flag > 0 and labels ``[id_start, id_end]``;
  records ``1 .. id_start-1`` are images labelled with their identity; records ``id_start .. id_end-1``
  (one per identity, label order) hold ``[a, b)``, the image records of that identity.
- plain layout: every indexed record is an image with its label.
"""

from __future__ import annotations

import io
import itertools
import math
import os
import struct
from array import array
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np

from facekit.data.record import RawRecord, Rejection
from facekit.data.sources.base import Source, SourceError, SourceFormatError

MAGIC = 0xCED7230A
_MAGIC_BYTES = struct.pack("<I", MAGIC)
_RECORD_HEAD = struct.Struct("<II")  # magic, lrecord
_IR_HEADER = struct.Struct("<IfQQ")  # flag, label, id, id2
_LENGTH_BITS = 29
#: float32 holds every integer up to 2**24 exactly; labels and record indices are stored as float32.
_MAX_EXACT_FLOAT32_INT = 1 << 24
CHANNEL_ORDERS = ("bgr", "rgb")


class IRRecord(NamedTuple):
    """One decoded payload: ``labels`` is ``(label,)`` when ``flag`` is 0, else the ``flag`` float32 labels."""

    flag: int
    labels: tuple[float, ...]
    record_id: int
    image: bytes


class RecordIOSource(Source):
    """Images of an insightface ``train.rec``; keys are ``"<name>/<record index:09d>"``.

    The ``.rec`` is opened lazily, once per process (``os.pread``, so threads share it safely); the
    object pickles without its file handle, so it can be sent to DataLoader or pool workers.
    ``header_range`` is ``(id_start, id_end)`` in the header layout, ``None`` in the plain layout.
    ``channel_order`` says how the pixels inside the JPEGs are ordered (MS1MV3 stores BGR, WebFace4M
    RGB); it is passed on in ``RawRecord.meta["channel_order"]`` for the decoder to swap.
    """

    def __init__(self, path: Path, name: str, channel_order: Literal["bgr", "rgb"] = "bgr") -> None:
        if channel_order not in CHANNEL_ORDERS:
            raise SourceFormatError("bad_channel_order", f"{channel_order!r} is not one of {CHANNEL_ORDERS}")
        self.path = Path(path)
        self.name = name
        self.channel_order = channel_order
        if not self.path.is_file():
            raise SourceFormatError("missing_rec", f"{self.path} does not exist")
        self._fd: int | None = None
        self._fd_pid = -1
        self._size = 0
        indices, offsets = _read_index_file(self.path.with_suffix(".idx"))
        self._num_classes = _read_property(self.path.parent / "property")
        self.header_range = self._read_header_range(indices, offsets)
        keep = (indices >= 1) & (indices < self.header_range[0]) if self.header_range else slice(None)
        self._image_indices, self._image_offsets = indices[keep], offsets[keep]
        self.close()

    def _read_header_range(self, indices: np.ndarray, offsets: np.ndarray) -> tuple[int, int] | None:
        """``(id_start, id_end)`` from record 0 in the header layout, ``None`` in the plain layout."""
        if len(indices) == 0 or indices[0] != 0:
            return None
        try:
            header = self._read(0, int(offsets[0]))
        except SourceError as e:
            raise SourceFormatError("bad_header", f"{self.path}: record 0: {e}") from e
        if header.flag == 0:
            return None
        if header.flag < 2 or not 1 <= header.labels[0] <= header.labels[1]:
            detail = f"{self.path}: record 0 labels {header.labels} are not [id_start, id_end]"
            raise SourceFormatError("bad_header", detail)
        return int(header.labels[0]), int(header.labels[1])

    def __len__(self) -> int:
        return len(self._image_indices)

    def keys(self) -> list[str]:
        return [f"{self.name}/{i:09d}" for i in self._image_indices.tolist()]

    def identities(self) -> list[str]:
        """``["0", ..., str(num_classes - 1)]``: from ``property``, else the header's identity range, else
        the largest image label + 1 (a scan of every record header, done once)."""
        if self._num_classes is None:
            if self.header_range:
                self._num_classes = self.header_range[1] - self.header_range[0]
            else:
                self._num_classes = max(self._scan_labels(), default=-1) + 1
        return [str(i) for i in range(self._num_classes)]

    def read(self, key: str) -> RawRecord:
        index, offset = self._locate(key)
        record = self._read(index, offset)
        label = record.labels[0]
        if not math.isfinite(label) or label != int(label):
            raise SourceError("bad_record", f"{self.path} record {index}: label {label} is not an integer")
        if not record.image:
            raise SourceError("empty_record", f"{self.path} record {index} has no image bytes")
        meta = {"channel_order": self.channel_order}
        return RawRecord(key=key, data=record.image, identity=int(label), source=self.name, meta=meta)

    def close(self) -> None:
        """Close this process's handle on the ``.rec`` (reads reopen it)."""
        if self._fd is not None and self._fd_pid == os.getpid():
            os.close(self._fd)
        self._fd = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_fd": None, "_fd_pid": -1}

    def _locate(self, key: str) -> tuple[int, int]:
        """(record index, byte offset) of an image key; ``KeyError`` when the key is not one of ours."""
        prefix, _, digits = key.rpartition("/")
        if prefix != self.name or len(digits) != 9 or not digits.isdigit():
            raise KeyError(key)
        index = int(digits)
        pos = int(np.searchsorted(self._image_indices, index))
        if pos == len(self._image_indices) or self._image_indices[pos] != index:
            raise KeyError(key)
        return index, int(self._image_offsets[pos])

    def _file(self) -> tuple[int, int]:
        if self._fd is None or self._fd_pid != os.getpid():
            try:
                self._fd = os.open(self.path, os.O_RDONLY)
            except OSError as e:
                raise SourceError("unreadable", f"{self.path}: {e.strerror or e}") from e
            self._fd_pid = os.getpid()
            self._size = os.fstat(self._fd).st_size
        return self._fd, self._size

    def _read(self, index: int, offset: int) -> IRRecord:
        fd, size = self._file()
        where = f"{self.path} record {index} at byte {offset}"
        if offset >= size:
            raise SourceError("bad_index", f"{where}: the .idx offset is past the end of the file ({size} bytes)")
        return unpack_payload(read_record_payload(fd, offset, where), where)

    def _scan_labels(self) -> Iterator[int]:
        """The integer label of every image record that can be read (headers only)."""
        fd, _ = self._file()
        for index, offset in zip(self._image_indices.tolist(), self._image_offsets.tolist(), strict=True):
            try:
                record = _peek_header(fd, offset) or self._read(index, offset)
            except SourceError:
                continue  # reported by read() when the stage reaches it
            if math.isfinite(record.labels[0]):
                yield int(record.labels[0])


def read_record_payload(fd: int, offset: int, where: str) -> bytes:
    """The payload of the record at ``offset`` of an open ``.rec``, split parts joined."""
    parts: list[bytes] = []
    pos = offset
    while True:
        head = os.pread(fd, _RECORD_HEAD.size, pos)
        if len(head) < _RECORD_HEAD.size:
            raise SourceError("truncated_record", f"{where}: the file ends inside a record header (byte {pos})")
        magic, lrecord = _RECORD_HEAD.unpack(head)
        if magic != MAGIC:
            raise SourceError("bad_record", f"{where}: magic 0x{magic:08x} at byte {pos}, expected 0x{MAGIC:08x}")
        cflag, length = lrecord >> _LENGTH_BITS, lrecord & ((1 << _LENGTH_BITS) - 1)
        if cflag not in ((0, 1) if not parts else (2, 3)):
            raise SourceError("bad_record", f"{where}: continuation flag {cflag} out of sequence at byte {pos}")
        data = os.pread(fd, length, pos + _RECORD_HEAD.size)
        if len(data) < length:
            raise SourceError("truncated_record", f"{where}: the file ends after {len(data)} of {length} payload bytes")
        parts.append(data)
        if cflag in (0, 3):
            return _MAGIC_BYTES.join(parts)
        pos += _RECORD_HEAD.size + length + (-length % 4)


def _peek_header(fd: int, offset: int) -> IRRecord | None:
    """The IRHeader (and first label) of a whole record from its first bytes; ``None`` if they do not suffice."""
    head = os.pread(fd, _RECORD_HEAD.size + _IR_HEADER.size + 4, offset)
    if len(head) < _RECORD_HEAD.size + _IR_HEADER.size:
        return None
    magic, lrecord = _RECORD_HEAD.unpack_from(head)
    if magic != MAGIC or lrecord >> _LENGTH_BITS != 0:
        return None
    flag, label, record_id, _ = _IR_HEADER.unpack_from(head, _RECORD_HEAD.size)
    if flag == 0:
        return IRRecord(0, (label,), record_id, b"")
    if len(head) < _RECORD_HEAD.size + _IR_HEADER.size + 4:
        return None
    return IRRecord(flag, struct.unpack_from("<f", head, _RECORD_HEAD.size + _IR_HEADER.size), record_id, b"")


def unpack_payload(payload: bytes, where: str) -> IRRecord:
    """Split a payload into its IRHeader labels and image bytes."""
    if len(payload) < _IR_HEADER.size:
        raise SourceError("bad_record", f"{where}: payload of {len(payload)} bytes is shorter than an IRHeader")
    flag, label, record_id, _ = _IR_HEADER.unpack_from(payload)
    end = _IR_HEADER.size + 4 * flag
    if end > len(payload):
        raise SourceError("bad_record", f"{where}: header announces {flag} labels, payload has {len(payload)} bytes")
    labels = tuple(struct.unpack_from(f"<{flag}f", payload, _IR_HEADER.size)) if flag else (label,)
    return IRRecord(flag, labels, record_id, payload[end:])


def pack_payload(labels: float | tuple[float, ...], image: bytes, record_id: int = 0) -> bytes:
    """IRHeader + image bytes; a tuple of labels is stored as ``flag = len(labels)`` float32 values."""
    if isinstance(labels, tuple):
        return _IR_HEADER.pack(len(labels), 0.0, record_id, 0) + struct.pack(f"<{len(labels)}f", *labels) + image
    return _IR_HEADER.pack(0, labels, record_id, 0) + image


def encode_record(payload: bytes) -> bytes:
    """RecordIO bytes of one payload (split at 4-aligned magics, as dmlc-core's writer does)."""
    parts, start, hit = [], 0, payload.find(_MAGIC_BYTES)
    while hit != -1:
        if hit % 4 == 0:
            parts.append(payload[start:hit])
            start = hit + 4
        hit = payload.find(_MAGIC_BYTES, max(start, hit + 1))
    parts.append(payload[start:])
    out = bytearray()
    for i, part in enumerate(parts):
        if len(part) >= 1 << _LENGTH_BITS:
            raise ValueError(f"a RecordIO record part must be under 2**29 bytes, got {len(part)}")
        cflag = 0 if len(parts) == 1 else 1 if i == 0 else 3 if i == len(parts) - 1 else 2
        out += _RECORD_HEAD.pack(MAGIC, cflag << _LENGTH_BITS | len(part)) + part + b"\0" * (-len(part) % 4)
    return bytes(out)


def write_recordio(
    rec_path: Path,
    items: Iterable[tuple[int, bytes]],
    *,
    header_layout: bool = True,
    image_size: int = 112,
    num_classes: int | None = None,
) -> int:
    """Write ``rec_path`` (``.rec``), its ``.idx`` and ``property`` from ``(label, encoded image)`` items.

    Items are streamed to disk (memory holds two ints per image). In the header layout images are stored
    grouped by label, ascending (stably re-sorted through a temporary file when the input is not), with
    one identity record per label ``0 .. num_classes-1`` (``[a, a)`` for a label with no image).
    ``num_classes`` defaults to the largest label + 1. Each image's IRHeader ``id`` is its position in
    ``items``. The files appear only when everything was written. Returns the number of images.
    """
    rec_path = Path(rec_path)
    scratch = [rec_path.with_name(rec_path.name + suffix) for suffix in (".partial", ".sorted.partial")]
    try:
        rec_path.parent.mkdir(parents=True, exist_ok=True)
        working = scratch[0]
        labels, offsets = _write_images(working, items, reserve_header=header_layout)
        num_classes = _check_num_classes(num_classes, labels)
        if not header_layout:
            index = list(enumerate(offsets))
        else:
            if any(a > b for a, b in itertools.pairwise(labels)):
                offsets = _copy_sorted_by_label(working, scratch[1], labels, offsets)
                labels = array("q", sorted(labels))
                working = scratch[1]
            index = _append_identity_records(working, labels, offsets, num_classes)
        rec_path.with_suffix(".idx").write_text("".join(f"{i}\t{o}\n" for i, o in index))
        (rec_path.parent / "property").write_text(f"{num_classes},{image_size},{image_size}\n")
        os.replace(working, rec_path)
    finally:
        for path in scratch:
            path.unlink(missing_ok=True)
    return len(labels)


def source_to_recordio(source: Source, rec_path: Path, **kw: Any) -> tuple[int, list[Rejection]]:
    """Copy every record of ``source`` into a ``.rec`` (see :func:`write_recordio` for ``kw``).

    Returns ``(written, rejections)``: a record whose read raises ``SourceError`` or that has no identity
    (-1) is a rejection, so ``written + len(rejections) == len(source.keys())``. ``num_classes`` defaults
    to ``len(source.identities())``. The bytes are copied as they are: JPEGs from ordinary photo folders
    hold RGB pixels, so read the result back with ``channel_order="rgb"``.
    """
    rejections: list[Rejection] = []

    def items() -> Iterator[tuple[int, bytes]]:
        for key in source.keys():
            try:
                record = source.read(key)
            except SourceError as e:
                rejections.append(Rejection(key, e.reason, e.detail))
                continue
            if record.identity < 0:
                rejections.append(Rejection(key, "unlabelled", "RecordIO needs an identity label >= 0"))
                continue
            yield record.identity, record.data

    kw.setdefault("num_classes", len(source.identities()))
    return write_recordio(rec_path, items(), **kw), rejections


def _write_images(path: Path, items: Iterable[tuple[int, bytes]], reserve_header: bool) -> tuple[array, array]:
    """Write image records in input order; returns (labels, record offsets)."""
    labels, offsets = array("q"), array("q")
    with path.open("wb") as out:
        if reserve_header:
            out.write(encode_record(pack_payload((0.0, 0.0), b"")))  # record 0, rewritten at the end
        for position, (label, image) in enumerate(items):
            if not isinstance(label, int | np.integer) or not 0 <= label < _MAX_EXACT_FLOAT32_INT:
                raise ValueError(f"item {position}: label {label!r} must be an int in [0, 2**24)")
            if not isinstance(image, bytes) or not image:
                raise ValueError(f"item {position}: the image must be non-empty bytes, got {type(image).__name__}")
            offsets.append(out.tell())
            labels.append(int(label))
            out.write(encode_record(pack_payload(float(label), image, record_id=position)))
    return labels, offsets


def _check_num_classes(num_classes: int | None, labels: array) -> int:
    needed = max(labels, default=-1) + 1
    if num_classes is None:
        return needed
    if num_classes < needed:
        raise ValueError(f"num_classes={num_classes} but the items have label {needed - 1}")
    return num_classes


def _copy_sorted_by_label(src: Path, dst: Path, labels: array, offsets: array) -> array:
    """Copy record 0 and the image records of ``src`` into ``dst``, images sorted by label (stable)."""
    order = sorted(range(len(labels)), key=labels.__getitem__)
    bounds = [*offsets, src.stat().st_size]
    new_offsets = array("q")
    with src.open("rb") as inp, dst.open("wb") as out:
        out.write(inp.read(offsets[0]))
        for i in order:
            new_offsets.append(out.tell())
            inp.seek(bounds[i])
            out.write(inp.read(bounds[i + 1] - bounds[i]))
    return new_offsets


def _append_identity_records(path: Path, labels: array, offsets: array, num_classes: int) -> list[tuple[int, int]]:
    """Append one ``[a, b)`` record per label to a label-sorted image file, fill in record 0; returns the index."""
    id_start = len(labels) + 1
    id_end = id_start + num_classes
    if id_end > _MAX_EXACT_FLOAT32_INT:
        raise ValueError(f"{id_end} records do not fit float32 header labels (at most 2**24)")
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes)
    starts = 1 + np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    index = [(0, 0)] + [(i + 1, o) for i, o in enumerate(offsets)]
    with path.open("r+b") as out:
        out.seek(0, os.SEEK_END)
        for label in range(num_classes):
            index.append((id_start + label, out.tell()))
            a = int(starts[label])
            out.write(encode_record(pack_payload((float(a), float(a + counts[label])), b"", record_id=label)))
        out.seek(0)
        # Same size as the placeholder: flag 2 and positive float labels never contain the magic.
        out.write(encode_record(pack_payload((float(id_start), float(id_end)), b"")))
    return index


def _read_index_file(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(record indices, byte offsets) from a ``.idx``, sorted by index: [R] int64 each."""
    try:
        text = path.read_bytes()
    except OSError as e:
        raise SourceFormatError("missing_index", f"{path}: {e.strerror or e} (every .rec needs its .idx)") from e
    if not text.strip():
        raise SourceFormatError("bad_index_file", f"{path} is empty")
    try:
        table = np.loadtxt(io.BytesIO(text), dtype=np.int64, delimiter="\t", ndmin=2)
    except ValueError as e:
        raise SourceFormatError("bad_index_file", f"{path}: {e}") from e
    if table.shape[1] != 2:
        raise SourceFormatError("bad_index_file", f"{path}: expected 2 tab-separated columns, got {table.shape[1]}")
    table = table[np.argsort(table[:, 0], kind="stable")]
    indices, offsets = table[:, 0].copy(), table[:, 1].copy()
    if (indices < 0).any() or (offsets < 0).any():
        raise SourceFormatError("bad_index_file", f"{path}: negative record index or offset")
    if (np.diff(indices) == 0).any():
        raise SourceFormatError("bad_index_file", f"{path}: a record index appears twice")
    return indices, offsets


def _read_property(path: Path) -> int | None:
    """``num_classes`` from an insightface ``property`` file (``"85742,112,112"``), ``None`` if absent."""
    if not path.exists():
        return None
    fields = path.read_text().strip().split(",")
    if len(fields) != 3 or not all(f.strip().isdigit() for f in fields):
        raise SourceFormatError("bad_property", f"{path}: expected 'num_classes,height,width', got {fields}")
    return int(fields[0])
