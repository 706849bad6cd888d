"""MXNet RecordIO datasets (``train.rec`` + ``train.idx`` [+ ``property``]), without MXNet: read and write.

The byte format and the two layouts (insightface's, with a header record and identity ranges, and plain
im2rec) are described in :mod:`facekit.data.sources.recordio_format`; a file is checked against its
layout when it is opened, so it is either read whole or refused with a :class:`SourceFormatError`.
"""

from __future__ import annotations

import io
import itertools
import os
from array import array
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np

from facekit.data.record import RawRecord, Rejection
from facekit.data.sources.base import Source, SourceError, SourceFormatError
from facekit.data.sources.recordio_format import (
    MAX_EXACT_FLOAT32_INT,
    check_layout,
    encode_record,
    pack_payload,
    read_record,
)

CHANNEL_ORDERS = ("bgr", "rgb")


class RecordIOSource(Source):
    """Images of a RecordIO ``.rec`` in either layout; keys are ``"<name>/<record index:09d>"``.

    The layout is detected and the whole file checked when the source is opened (one pass over the record
    headers). The ``.rec`` is then opened lazily, once per process (``os.pread``, so threads share it
    safely); the object pickles without its file handle, so it can be sent to DataLoader or pool workers.
    ``header_range`` is ``(s, e)`` from record 0 in the insightface layout, ``None`` in the plain layout.
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
        property_classes = _read_property(self.path.parent / "property")
        try:
            fd, size = self._file()
        except SourceError as e:
            raise SourceFormatError(e.reason, e.detail) from e
        self.header_range, images, self._num_classes = check_layout(
            fd, size, indices, offsets, property_classes, self.path
        )
        self._image_indices, self._image_offsets = indices[images], offsets[images]
        self.close()

    def __len__(self) -> int:
        return len(self._image_indices)

    def keys(self) -> list[str]:
        return [f"{self.name}/{i:09d}" for i in self._image_indices.tolist()]

    def identities(self) -> list[str]:
        """``["0", ..., str(num_classes - 1)]``: from ``property``, else the insightface identity range,
        else the largest image label + 1."""
        return [str(i) for i in range(self._num_classes)]

    def read(self, key: str) -> RawRecord:
        index, offset = self._locate(key)
        record = read_record(*self._file(), index, offset, self.path)  # label and image checked at open
        meta = {"channel_order": self.channel_order}
        return RawRecord(key=key, data=record.image, identity=int(record.labels[0]), source=self.name, meta=meta)

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


def write_recordio(
    rec_path: Path,
    items: Iterable[tuple[int, bytes]],
    *,
    header_layout: bool = True,
    image_size: int = 112,
    num_classes: int | None = None,
) -> int:
    """Write ``rec_path`` (``.rec``), its ``.idx`` and ``property`` from ``(label, encoded image)`` items.

    Items are streamed to disk (memory holds two ints per image). In the insightface (header) layout images are stored
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
            if not isinstance(label, int | np.integer) or not 0 <= label < MAX_EXACT_FLOAT32_INT:
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
    if id_end > MAX_EXACT_FLOAT32_INT:
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
