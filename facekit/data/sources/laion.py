"""LAION-Face as distributed: img2dataset-style tar shards plus a metadata parquet.

A shard ``00000.tar`` holds, per sample, ``<key>.jpg`` (or ``.png``/``.webp``/...), ``<key>.json``
(``url``, ``caption``, optional ``face_boxes`` and img2dataset's other fields) and maybe ``<key>.txt``
(the caption). :class:`LaionTarSource` reads such shards without extracting them:

- keys are ``"<name>/<tar stem>/<member key>"``, the member key being the member's path without its
  extension; identities are empty and every record's ``identity`` is -1 (LAION has no labels).
- each tar is indexed once, at construction (headers only), into ``key -> (offset, size)`` per member, so
  ``read`` is one ``pread``; the object pickles without its open files, for worker processes.
- members are never extracted, and are checked: an absolute name or one with a ``..`` part, a link
  (symbolic or hard), a device, FIFO or sparse member is listed as a record that fails with
  ``unsafe_member`` (its key is ``"<name>/<tar stem>/unsafe:<percent-encoded member name>"``); a member over
  ``max_member_bytes`` fails with ``too_large``. Directories are ignored. Nothing vanishes silently.
- pairing rule: an image with no ``.json`` is a normal record (its meta has the ``.txt`` caption if any, and
  ``url``/``face_boxes`` are absent); a ``.json`` (or ``.txt``) with no image is listed and fails with
  ``missing_image`` (the detail quotes img2dataset's ``status``/``error_message`` when present); two images
  for one key (``a.jpg`` and ``a.png``) or one member name stored twice fail with ``duplicate_member``.
  Other extensions are ignored.
- a tar cut short (an interrupted copy) keeps the members read before the cut; a member whose data runs
  past the end of the file fails with ``truncated_member``.

:func:`read_laion_parquet` reads the metadata parquet (url, caption, face boxes) for the download stage.
"""

from __future__ import annotations

import glob
import json
import os
import re
import tarfile
import urllib.parse
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, NamedTuple

from facekit.data.record import RawRecord
from facekit.data.sources.base import Source, SourceError, SourceFormatError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp"})
_SIDE_EXTENSIONS = frozenset({".json", ".txt"})
#: metadata sidecars (.json, .txt) larger than this are refused as ``too_large``
MAX_SIDECAR_BYTES = 1_000_000


class _Member(NamedTuple):
    """Where one member's bytes are: ``(offset, size)`` inside the tar."""

    offset: int
    size: int


@dataclass(slots=True)
class _Entry:
    """One sample of a tar: its members by extension, or why it cannot be read."""

    tar: int
    image: tuple[str, _Member] | None = None
    json: _Member | None = None
    txt: _Member | None = None
    problem: tuple[str, str] | None = None


def resolve_tar_paths(paths: list[Path] | Path | str) -> list[Path]:
    """Tar files from a list, a folder (its ``*.tar``) or a glob pattern, sorted; raises when none is found."""
    if isinstance(paths, list | tuple):
        found = [Path(p) for p in paths]
    elif Path(paths).is_dir():
        found = sorted(Path(paths).glob("*.tar"))
    else:
        found = sorted(Path(p) for p in glob.glob(str(paths)))
    if not found:
        raise SourceFormatError("no_tars", f"no tar shards found at {paths}")
    for path in found:
        if not path.is_file():
            raise SourceFormatError("missing_tar", f"{path} is not a file")
    stems = [p.stem for p in found]
    if dupes := sorted({s for s in stems if stems.count(s) > 1}):
        raise SourceFormatError("duplicate_tar_stem", f"several tars share the stem(s) {dupes}; keys would collide")
    return sorted(found, key=lambda p: p.stem)


class LaionTarSource(Source):
    """Samples of img2dataset-style tar shards (see the module docstring for the rules)."""

    def __init__(self, paths: list[Path] | Path | str, name: str, max_member_bytes: int = 20_000_000) -> None:
        self.name = name
        self.max_member_bytes = max_member_bytes
        self.tars = resolve_tar_paths(paths)
        self._entries: dict[str, _Entry] = {}
        for tar_index, path in enumerate(self.tars):
            self._index_tar(tar_index, path)
        self._keys = sorted(self._entries)
        self._fds: dict[int, int] = {}
        self._fd_pid = -1

    def keys(self) -> list[str]:
        return list(self._keys)

    def identities(self) -> list[str]:
        """LAION has no identity labels."""
        return []

    def member_problems(self) -> dict[str, str]:
        """``key -> reason`` for every record known to fail from the index alone (no member is read)."""
        problems = {}
        for key, entry in self._entries.items():
            reason = self._static_problem(entry)
            if reason:
                problems[key] = reason[0]
        return problems

    def read(self, key: str) -> RawRecord:
        """The image bytes as stored, with ``meta``: ``url``, ``caption``, ``face_boxes`` (when known)."""
        entry = self._entries[key]
        where = f"{self.tars[entry.tar]} sample {key}"
        if problem := self._static_problem(entry):
            detail = problem[1]
            if problem[0] == "missing_image" and entry.json is not None:
                detail += _status_detail(self._json(entry, where))
            raise SourceError(problem[0], f"{where}: {detail}")
        meta: dict[str, Any] = {}
        if entry.json is not None:
            doc = self._json(entry, where)
            for field in ("url", "caption", "face_boxes"):
                if doc.get(field) is not None:
                    meta[field] = doc[field]
        if "caption" not in meta and entry.txt is not None:
            meta["caption"] = self._member_bytes(entry.tar, entry.txt, where).decode("utf-8", "replace")
        ext, member = entry.image
        data = self._member_bytes(entry.tar, member, where)
        if not data:
            raise SourceError("empty_file", f"{where}: {ext} member has 0 bytes")
        return RawRecord(key=key, data=data, identity=-1, source=self.name, meta=meta)

    def close(self) -> None:
        """Close this process's tar handles (reads reopen them)."""
        if self._fd_pid == os.getpid():
            for fd in self._fds.values():
                os.close(fd)
        self._fds = {}

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_fds": {}, "_fd_pid": -1}

    def _static_problem(self, entry: _Entry) -> tuple[str, str] | None:
        if entry.problem:
            return entry.problem
        if entry.image is None:
            return "missing_image", "a .json/.txt member without an image member"
        for label, member in (("image", entry.image[1]), ("json", entry.json), ("txt", entry.txt)):
            limit = self.max_member_bytes if label == "image" else min(self.max_member_bytes, MAX_SIDECAR_BYTES)
            if member is not None and member.size > limit:
                return "too_large", f"{label} member of {member.size:,} bytes exceeds {limit:,}"
        return None

    def _index_tar(self, tar_index: int, path: Path) -> None:
        size = path.stat().st_size
        seen: set[str] = set()
        try:
            tar = tarfile.open(path, "r:")  # noqa: SIM115 (closed below) plain tars only: reads need byte offsets
        except (tarfile.TarError, OSError) as e:
            raise SourceFormatError("bad_tar", f"{path}: not an uncompressed tar ({e})") from e
        with tar:
            while True:
                try:
                    info = tar.next()
                except tarfile.ReadError:
                    break  # cut short: keep what was indexed; members past the end fail on read
                if info is None:
                    break
                if not info.isdir():
                    self._add_member(tar_index, path.stem, info, size, seen)

    def _add_member(self, tar_index: int, stem: str, info: tarfile.TarInfo, tar_size: int, seen: set[str]) -> None:
        unsafe = _unsafe_reason(info)
        if unsafe:
            key = f"{self.name}/{stem}/unsafe:{urllib.parse.quote(info.name, safe='')}"
            self._entries[key] = _Entry(tar_index, problem=("unsafe_member", f"member {info.name!r}: {unsafe}"))
            return
        member_key, ext = os.path.splitext(str(PurePosixPath(info.name)))
        ext = ext.lower()
        if ext not in IMAGE_EXTENSIONS and ext not in _SIDE_EXTENSIONS:
            return
        key = f"{self.name}/{stem}/{member_key}"
        entry = self._entries.setdefault(key, _Entry(tar_index))
        member = _Member(info.offset_data, info.size)
        if info.name in seen or (ext in IMAGE_EXTENSIONS and entry.image is not None):
            entry.problem = entry.problem or ("duplicate_member", f"member {info.name!r} collides with another")
        seen.add(info.name)
        if info.offset_data + info.size > tar_size:
            entry.problem = ("truncated_member", f"member {info.name!r} runs past the end of the tar")
        if ext in IMAGE_EXTENSIONS:
            entry.image = (ext, member)
        elif ext == ".json":
            entry.json = member
        else:
            entry.txt = member

    def _member_bytes(self, tar_index: int, member: _Member, where: str) -> bytes:
        if self._fd_pid != os.getpid():
            self._fds, self._fd_pid = {}, os.getpid()
        fd = self._fds.get(tar_index)
        if fd is None:
            try:
                fd = self._fds[tar_index] = os.open(self.tars[tar_index], os.O_RDONLY)
            except OSError as e:
                raise SourceError("unreadable", f"{where}: {e.strerror or e}") from e
        data = os.pread(fd, member.size, member.offset)
        if len(data) != member.size:
            raise SourceError("truncated_member", f"{where}: got {len(data)} of {member.size} bytes")
        return data

    def _json(self, entry: _Entry, where: str) -> dict[str, Any]:
        try:
            doc = json.loads(self._member_bytes(entry.tar, entry.json, where))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise SourceError("bad_metadata", f"{where}: the .json member does not parse: {e}") from e
        if not isinstance(doc, dict):
            raise SourceError("bad_metadata", f"{where}: the .json member is not an object")
        return doc


def _unsafe_reason(info: tarfile.TarInfo) -> str:
    """Why a member must not be used, or ``""``."""
    name = info.name.replace("\\", "/")
    if name.startswith("/") or re.match(r"[A-Za-z]:", name):
        return "absolute path"
    if ".." in PurePosixPath(name).parts:
        return "path traversal ('..')"
    if info.issym() or info.islnk():
        return f"link to {info.linkname!r}"
    if info.isdev():
        return "device or FIFO member"
    if info.issparse():
        return "sparse member"
    if not info.isfile():
        return f"not a regular file (type {info.type!r})"
    return ""


def _status_detail(doc: dict[str, Any]) -> str:
    parts = [f"{k}={doc[k]!r}" for k in ("status", "error_message") if doc.get(k)]
    return f" ({', '.join(parts)})" if parts else ""


@dataclass(frozen=True)
class LaionRow:
    """One metadata row: where to get the image and what is known about it."""

    url: str | None
    caption: str | None
    face_boxes: list[list[float]] | None


#: candidate column names, first match wins (img2dataset's defaults, then LAION's upper-case names)
URL_COLUMNS = ("url", "URL")
CAPTION_COLUMNS = ("caption", "TEXT", "text")
FACE_BOX_COLUMNS = ("face_boxes",)


def read_laion_parquet(
    path: Path,
    url_column: str | None = None,
    caption_column: str | None = None,
    face_boxes_column: str | None = None,
) -> list[LaionRow]:
    """Rows of a LAION(-Face) metadata parquet, in file order.

    A column left as ``None`` is looked up among the usual names (``URL_COLUMNS``...); the url column must
    exist, caption and face boxes are optional. Needs ``pyarrow``.
    """
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (OSError, ValueError) as e:
        raise SourceFormatError("bad_parquet", f"{path}: {e}") from e
    names = table.column_names

    def pick(given: str | None, candidates: tuple[str, ...], required: bool) -> str | None:
        if given is not None:
            if given not in names:
                raise SourceFormatError("missing_column", f"{path} has no column {given!r} (columns: {names})")
            return given
        found = next((c for c in candidates if c in names), None)
        if found is None and required:
            raise SourceFormatError("missing_column", f"{path} has none of {candidates} (columns: {names})")
        return found

    url = pick(url_column, URL_COLUMNS, True)
    caption = pick(caption_column, CAPTION_COLUMNS, False)
    boxes = pick(face_boxes_column, FACE_BOX_COLUMNS, False)
    urls = table.column(url).to_pylist()
    captions = table.column(caption).to_pylist() if caption else [None] * len(urls)
    face_boxes = table.column(boxes).to_pylist() if boxes else [None] * len(urls)
    return [LaionRow(u, c, b) for u, c, b in zip(urls, captions, face_boxes, strict=True)]
