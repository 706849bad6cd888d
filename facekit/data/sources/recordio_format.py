"""MXNet RecordIO bytes and the two dataset layouts built on them: parsing records, telling and checking a layout.

Binary format (dmlc-core RecordIO, little-endian):

- record: ``uint32 magic 0xCED7230A``, ``uint32 lrecord`` (low 29 bits: length, top 3 bits: cflag),
  ``length`` payload bytes, zero padding to a multiple of 4. A payload holding the magic at a 4-aligned
  offset is split there into parts (cflag 1 first, 2 middle, 3 last; 0 = whole record) and that magic is
  left out; readers join the parts with it.
- payload: IRHeader ``<IfQQ`` (flag, label, id, id2), then ``flag`` float32 labels when flag > 0 (the
  header's own label is then unused), then the encoded image.
- ``train.idx``: text lines ``<record index>\\t<byte offset>``; ``property``: ``<num_classes>,<h>,<w>``.

Two layouts, told apart by record 0 and then checked record by record (:func:`check_layout`):

- insightface layout (MS1M, Glint360K, WebFace; insightface's ``face2rec2``): record 0 holds no image,
  flag 2 and labels ``[s, e]``; records ``1 .. s-1`` are images; records ``s .. e-1`` (one per identity,
  flag 2, no image) hold ``[a, b)``, the image records of that identity. The ranges tile ``1 .. s-1`` and
  the ``.idx`` lists exactly records ``0 .. e-1``.
- plain im2rec layout (MXNet's ``im2rec``): record 0 is absent or holds an image; every record is an
  image whose label (a float, or a label array with ``flag`` = its length) has its class first.

In both, an image's class must be an integer inside the identity table. A record that cannot be read
(bad magic, truncated, offset past the end) is not a layout error: reading it raises :class:`SourceError`.
"""

from __future__ import annotations

import itertools
import os
import struct
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import NamedTuple

import numpy as np

from facekit.data.sources.base import SourceError, SourceFormatError

MAGIC = 0xCED7230A
_MAGIC_BYTES = struct.pack("<I", MAGIC)
_RECORD_HEAD = struct.Struct("<II")  # magic, lrecord
_IR_HEADER = struct.Struct("<IfQQ")  # flag, label, id, id2
_LENGTH_BITS = 29
#: float32 holds every integer up to 2**24 exactly; labels and record indices are stored as float32.
MAX_EXACT_FLOAT32_INT = 1 << 24
#: The first bytes of a record: its head, its IRHeader and its first two float32 labels.
_PEEK = np.dtype(
    [
        ("magic", "<u4"),
        ("lrecord", "<u4"),
        ("flag", "<u4"),
        ("label", "<f4"),
        ("id", "<u8"),
        ("id2", "<u8"),
        ("label0", "<f4"),
        ("label1", "<f4"),
    ]
)
#: The header scan reads the file in windows of this many bytes.
_SCAN_WINDOW = 1 << 23
#: Examples shown per problem in a layout error.
_EXAMPLES = 3
_INSIGHTFACE = "insightface layout (record 0 = [first identity record, end], images, one [a, b) record per identity)"
_PLAIN = "plain im2rec layout (every record an image, its class first in its label)"


class IRRecord(NamedTuple):
    """One decoded payload: ``labels`` is ``(label,)`` when ``flag`` is 0, else the ``flag`` float32 labels."""

    flag: int
    labels: tuple[float, ...]
    record_id: int
    image: bytes


class Layout(NamedTuple):
    """A checked file: ``header_range`` is ``(s, e)`` in the insightface layout, ``None`` in the plain one;
    ``images`` [R] bool marks the image records among the ``.idx`` entries; ``num_classes`` sizes the
    identity table (``property``'s when present, else ``e - s``, else the largest image label + 1)."""

    header_range: tuple[int, int] | None
    images: np.ndarray
    num_classes: int


def read_record(fd: int, size: int, index: int, offset: int, path: Path) -> IRRecord:
    """The record at ``offset`` of an open ``.rec`` of ``size`` bytes; :class:`SourceError` when it cannot be read."""
    where = f"{path} record {index} at byte {offset}"
    if offset >= size:
        raise SourceError("bad_index", f"{where}: the .idx offset is past the end of the file ({size} bytes)")
    return unpack_payload(read_record_payload(fd, offset, where), where)


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


def check_layout(
    fd: int, size: int, indices: np.ndarray, offsets: np.ndarray, property_classes: int | None, path: Path
) -> Layout:
    """Tell the layout of an open ``.rec`` from record 0, then check every ``.idx`` record against it.

    ``indices`` / ``offsets`` [R] come from the ``.idx`` (sorted by index), ``property_classes`` from
    ``property`` (``None`` without one). One pass over the record headers, in file order. Raises
    :class:`SourceFormatError` (``bad_header``: record 0 fits neither layout; ``bad_layout``: the rest
    of the file does not fit the layout record 0 announces) naming both layouts and what did not fit.
    """
    record0 = None
    if len(indices) and indices[0] == 0:
        try:
            record0 = read_record(fd, size, 0, int(offsets[0]), path)
        except SourceError as e:
            detail = (
                f"{path} fits neither layout: record 0, the header of the {_INSIGHTFACE} and an image of the {_PLAIN}"
            )
            raise SourceFormatError("bad_header", f"{detail}, cannot be read ({e.detail})") from e
    header_range, not_insightface, not_plain = _judge_record_zero(record0)
    if not_insightface and not_plain:
        raise _layout_error("bad_header", path, not_insightface, not_plain)
    headers = _scan_headers(fd, size, indices, offsets, path)
    findings = _Findings()
    if header_range is None:
        num_classes = _check_plain(headers, property_classes, findings)
        images = np.ones(len(indices), bool)
    else:
        num_classes = _check_insightface(indices, headers, header_range, property_classes, findings)
        images = (indices >= 1) & (indices < header_range[0])
    if findings:
        raise _layout_error("bad_layout", path, not_insightface or str(findings), not_plain or str(findings))
    return Layout(header_range, images, num_classes)


class _Headers(NamedTuple):
    """What the header scan found about a block of records: [n] arrays (``labels`` [n, 2])."""

    index: np.ndarray  # int64 record index
    readable: np.ndarray  # bool: whole and inside the file (else reading it raises SourceError)
    flag: np.ndarray  # int64
    labels: np.ndarray  # float32 [n, 2]: the first two labels (NaN where there are fewer)
    has_image: np.ndarray  # bool: bytes follow the labels


class _Findings:
    """What in a file does not fit its layout: per problem, the first few examples and a count."""

    def __init__(self) -> None:
        self._found: dict[str, tuple[list[str], int]] = {}

    def add(self, problem: str, examples: list[str], count: int) -> None:
        if count:
            shown, total = self._found.get(problem, ([], 0))
            self._found[problem] = ((shown + examples)[:_EXAMPLES], total + count)

    def note(
        self, problem: str, block: _Headers, mask: np.ndarray, detail: Callable[[_Headers, int], str] | None = None
    ) -> None:
        """Add the records of ``block`` where ``mask`` is set, each shown with ``detail(block, row)``."""
        rows = np.flatnonzero(mask)
        shown = [f"record {block.index[i]}" + (f" ({detail(block, i)})" if detail else "") for i in rows[:_EXAMPLES]]
        self.add(problem, shown, len(rows))

    def __bool__(self) -> bool:
        return bool(self._found)

    def __str__(self) -> str:
        parts = []
        for problem, (shown, total) in self._found.items():
            more = f" and {total - len(shown)} more" if total > len(shown) else ""
            parts.append(f"{problem}: {', '.join(shown)}{more}")
        return "; ".join(parts)


def _layout_error(reason: str, path: Path, insightface: str, plain: str) -> SourceFormatError:
    return SourceFormatError(reason, f"{path} fits neither layout. {_INSIGHTFACE}: {insightface}. {_PLAIN}: {plain}.")


def _labels_text(labels: Iterable[float]) -> str:
    return "[" + ", ".join(f"{v:g}" for v in labels) + "]"


def _label_detail(block: _Headers, row: int) -> str:
    return f"label {block.labels[row, 0]:g}"


def _range_detail(block: _Headers, row: int) -> str:
    image = "an image" if block.has_image[row] else "no image"
    return f"flag {block.flag[row]}, labels {_labels_text(block.labels[row])}, {image}"


def _judge_record_zero(record0: IRRecord | None) -> tuple[tuple[int, int] | None, str, str]:
    """``(header_range, why not the insightface layout, why not the plain layout)`` from record 0 alone
    (``None`` when the ``.idx`` has no record 0); an empty reason: that layout fits so far."""
    if record0 is None:
        return None, "the .idx has no record 0", ""
    labels = _labels_text(record0.labels)
    if record0.image:
        return None, f"record 0 holds an image ({len(record0.image)} bytes, labels {labels}), not a header", ""
    s, e = np.array([*record0.labels, np.nan], np.float32)[:2]
    if record0.flag == 2 and _is_index(np.array([s, e])).all() and 1 <= s <= e:
        return (int(s), int(e)), "", f"record 0 holds no image (a header: identity records {int(s)}..{int(e) - 1})"
    shape = f"record 0 (flag {record0.flag}, labels {labels}) is not [first identity record, end]"
    return None, shape, "record 0 holds no image"


def _is_index(values: np.ndarray) -> np.ndarray:
    """Whether float32 ``values`` are integers in ``[0, 2**24)`` (NaN is not)."""
    with np.errstate(invalid="ignore"):
        return np.isfinite(values) & (values >= 0) & (values < MAX_EXACT_FLOAT32_INT) & (values == np.floor(values))


def _scan_headers(fd: int, size: int, indices: np.ndarray, offsets: np.ndarray, path: Path) -> Iterator[_Headers]:
    """The headers of every ``.idx`` record, in blocks of records ordered by offset (one pass over the file)."""
    order = np.argsort(offsets, kind="stable")
    indices, offsets = indices[order], offsets[order]
    cuts = [0, *(np.flatnonzero(np.diff(offsets // _SCAN_WINDOW)) + 1).tolist(), len(offsets)]
    for lo, hi in itertools.pairwise(cuts):
        start, stop = int(offsets[lo]), int(offsets[hi - 1]) + _PEEK.itemsize
        data = os.pread(fd, stop - start, start)
        data += bytes(stop - start - len(data))  # bytes past the end of the file read as 0: no magic
        windows = np.lib.stride_tricks.sliding_window_view(np.frombuffer(data, np.uint8), _PEEK.itemsize)
        peeks = windows[offsets[lo:hi] - start].view(_PEEK)[:, 0]
        yield _decode_peeks(fd, size, indices[lo:hi], offsets[lo:hi], peeks, path)


def _decode_peeks(fd: int, size: int, index: np.ndarray, offset: np.ndarray, peeks: np.ndarray, path: Path) -> _Headers:
    """Header facts from each record's first bytes; a record split into parts is read whole."""
    cflag = peeks["lrecord"] >> _LENGTH_BITS
    length = (peeks["lrecord"] & ((1 << _LENGTH_BITS) - 1)).astype(np.int64)
    flag = peeks["flag"].astype(np.int64)
    labels_end = _IR_HEADER.size + 4 * flag
    magic = peeks["magic"] == MAGIC
    readable = magic & (cflag == 0) & (offset + _RECORD_HEAD.size + length <= size) & (length >= labels_end)
    first = np.where(flag == 0, peeks["label"], peeks["label0"])
    labels = np.stack([first, np.where(flag >= 2, peeks["label1"], np.nan)], axis=1).astype(np.float32)
    has_image = length > labels_end
    for i in np.flatnonzero(magic & (cflag == 1)):
        try:
            record = read_record(fd, size, int(index[i]), int(offset[i]), path)
        except SourceError:
            continue  # read() raises it when a stage reaches this record
        readable[i], flag[i], has_image[i] = True, record.flag, bool(record.image)
        labels[i] = [*record.labels, np.nan, np.nan][:2]
    return _Headers(index, readable, flag, labels, has_image)


def _check_images(
    block: _Headers, mask: np.ndarray, table: int | None, table_text: str, findings: _Findings, noun: str
) -> int:
    """Check the image records of ``block`` where ``mask`` is set: an image, a class inside ``[0, table)``
    (any class when ``table`` is ``None``). Returns their largest class (-1 if none)."""
    label = block.labels[:, 0]
    is_class = _is_index(label)
    findings.note(f"{noun} that hold no image", block, mask & ~block.has_image)
    findings.note(f"{noun} whose label is not a class index", block, mask & ~is_class, _label_detail)
    if table is not None:
        outside = mask & is_class & (label >= table)
        findings.note(f"labels outside the identity table [0, {table}) ({table_text})", block, outside, _label_detail)
    classes = label[mask & is_class]
    return int(classes.max()) if len(classes) else -1


def _check_plain(headers: Iterable[_Headers], property_classes: int | None, findings: _Findings) -> int:
    """Check a plain im2rec file; returns ``num_classes``."""
    top = -1
    for block in headers:
        top = max(top, _check_images(block, block.readable, property_classes, "property", findings, "records"))
    return property_classes if property_classes is not None else top + 1


def _check_insightface(
    indices: np.ndarray,
    headers: Iterable[_Headers],
    header_range: tuple[int, int],
    property_classes: int | None,
    findings: _Findings,
) -> int:
    """Check an insightface-layout file whose record 0 says ``(s, e)``; returns ``num_classes``."""
    s, e = header_range
    table, table_text = e - s, f"{e - s} identity records"
    if property_classes is not None and property_classes < table:
        table, table_text = property_classes, f"property: {property_classes} identities"
    missing = np.setdiff1d(np.arange(e), indices, assume_unique=True)
    for problem, hits in [
        ("image records missing from the .idx", missing[missing < s]),
        (f"identity records missing from the .idx (record 0 says {s}..{e - 1})", missing[missing >= s]),
        (f"records after the identity table (end {e}) that nothing reaches", indices[indices >= e]),
    ]:
        findings.add(problem, [f"record {i}" for i in hits[:_EXAMPLES]], len(hits))
    ranges = np.full((e - s, 2), -1, np.int64)  # [a, b) of each identity record; -1: none
    for block in headers:
        image = (block.index >= 1) & (block.index < s)
        _check_images(block, image & block.readable, table, table_text, findings, "image records")
        identity = (block.index >= s) & (block.index < e)
        findings.note("identity records that cannot be read", block, identity & ~block.readable)
        is_range = identity & block.readable & (block.flag == 2) & ~block.has_image & _is_index(block.labels).all(1)
        findings.note(
            "identity records that are not an [a, b) range", block, identity & block.readable & ~is_range, _range_detail
        )
        ranges[block.index[is_range] - s] = block.labels[is_range]
    if (ranges >= 0).all():
        _check_ranges(ranges, s, findings)
    return property_classes if property_classes is not None else e - s


def _check_ranges(ranges: np.ndarray, s: int, findings: _Findings) -> None:
    """The ranges ``[a, b)`` ([I, 2], of identity records ``s .. s+I-1``) must tile the image records ``1 .. s-1``."""
    a, b = ranges[:, 0], ranges[:, 1]
    outside = np.flatnonzero((a < 1) | (a > b) | (b > s))
    shown = [f"record {s + i} [{a[i]}, {b[i]})" for i in outside[:_EXAMPLES]]
    findings.add(f"identity ranges outside the image records 1..{s - 1}", shown, len(outside))
    if len(outside):
        return
    depth = np.zeros(s + 1, np.int64)  # how many ranges hold each image record 1 .. s-1
    np.add.at(depth, a, 1)
    np.add.at(depth, b, -1)
    depth = np.cumsum(depth)[1:s]
    for problem, hits in [
        ("image records in no identity range", np.flatnonzero(depth == 0) + 1),
        ("image records in more than one identity range", np.flatnonzero(depth > 1) + 1),
    ]:
        findings.add(problem, [f"record {i}" for i in hits[:_EXAMPLES]], len(hits))
