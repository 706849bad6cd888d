"""Identity-folder datasets: ``<root>/<identity>/<photo>`` (VGGFace2, CASIA-WebFace, WebFace4M/42M).

Every file under ``root`` is accounted for: it is a key of the source, and :meth:`IdentityFolderSource.read`
either returns its bytes or raises :class:`SourceError` with one of these reasons, so that the number of
files on disk equals the records read plus the rejections (a "file" is any entry that is not a folder:
regular files, links, FIFOs, sockets, devices; folders are walked, links to folders are not, except an
identity folder that is a link):

- ``hidden_file``: a name, or a folder on its path, starts with ``.`` (``.DS_Store``, ``._0001.jpg``,
  ``.cache/...``): operating-system and tool metadata, never read.
- ``not_in_identity_folder``: a file directly under ``root`` (``identities.csv``, ``README``): it belongs to
  no identity, so it is not read.
- ``nested_file``: a file in a sub-folder of an identity folder: identity folders are flat; move the file
  up to label it with the identity.
- ``metadata_file``: the loose bbox / landmark CSV given to the source, when it lies under ``root``.
- ``broken_symlink``: a link whose target is missing (or a link loop).
- ``not_a_regular_file``: a FIFO, socket, device or link to a folder; it is never opened (nothing hangs).
- ``unreadable``: the file cannot be opened or read (permissions, I/O error).
- ``unreadable_folder``: a folder under the root that cannot be listed: one rejection stands for the files
  in it, which cannot be counted (an unreadable root is a :class:`SourceFormatError`).
- ``empty_file``: 0 bytes.
- ``not_an_image`` / ``unsupported_image``: the first bytes are no image signature / that of an image
  format that is not decoded (:func:`~facekit.data.images.sniff_format`; the content decides, not the
  extension: a JPEG named ``.png`` is read, a text file named ``.jpg`` is ``not_an_image``).

Files that pass are returned whole and decoded later (where a damaged one is ``corrupt_image``).

Identities: every non-hidden folder directly under ``root`` (or link to one) that holds at least one
non-hidden file directly inside it, sorted by name; a record's label is the index of its folder in that
list. A folder with no such file (empty, or only hidden files / sub-folders) is not an identity, so no
label is spent on an identity without photos; labels depend only on the folder content.

Keys of files in identity folders are ``"<name>/<identity>/<file stem>"``; when two files in one folder
share a stem (``0001.jpg`` and ``0001.png``) both keep their extension in the key, so neither is dropped.
Other files are keyed by their whole relative path (``"<name>/identities.csv"``, ``"<name>/n01/sub/x.jpg"``).
Names that are not valid UTF-8 appear in keys and identities with their odd bytes escaped (``\\xff``).

VGGFace2's loose crops (``loose_bb_{train,test}.csv``: ``NAME_ID,X,Y,W,H``) and loose landmarks
(``loose_landmark_{train,test}.csv``: ``NAME_ID,P1X,P1Y,...,P5X,P5Y``; ``NAME_ID`` = ``n000002/0001_01``)
are attached to ``RawRecord.meta`` as ``loose_bbox`` (``[x1, y1, x2, y2]`` floats) and
``loose_landmarks`` (``[[x, y]] * 5`` floats). CSV rows for images that are not on disk are ignored
(one CSV covers the whole split).
"""

from __future__ import annotations

import csv
import os
import stat
from collections import Counter
from pathlib import Path
from typing import Any, Literal, NamedTuple

from facekit.data.images import SNIFF_BYTES, ImageError, sniff_format
from facekit.data.record import RawRecord
from facekit.data.sources.base import Source, SourceError, SourceFormatError

LAYOUTS = ("vggface2", "webface")


class _File(NamedTuple):
    """One file under the root: its label (-1 outside identity folders), its path relative to the root
    (as on disk) and, when it is refused without being opened, ``(reason, detail)``."""

    label: int
    rel_path: str
    refused: tuple[str, str] | None = None


class IdentityFolderSource(Source):
    """Photos under ``root/<identity>/``; the tree is scanned once, at construction (see the module docstring)."""

    def __init__(
        self,
        root: Path,
        name: str,
        layout: Literal["vggface2", "webface"] = "vggface2",
        bbox_csv: Path | None = None,
        landmarks_csv: Path | None = None,
    ) -> None:
        root = Path(root)
        if layout not in LAYOUTS:
            raise SourceFormatError("bad_layout", f"layout {layout!r} is not one of {LAYOUTS}")
        if layout != "vggface2" and (bbox_csv or landmarks_csv):
            raise SourceFormatError("bad_layout", "loose bbox/landmark CSVs exist only for the vggface2 layout")
        if not root.is_dir():
            raise SourceFormatError("not_a_directory", f"{root} is not a directory")
        self.root = root
        self.name = name
        self.layout = layout
        #: path relative to the root -> why it is not read, for the CSVs given that lie under the root
        self._metadata = {
            rel_path: f"read as the loose {what} CSV"
            for what, path in (("bbox", bbox_csv), ("landmarks", landmarks_csv))
            if path and (rel_path := _relative_inside(Path(path), root))
        }
        self._identities: list[str] = []
        #: key -> the file behind it
        self._files: dict[str, _File] = {}
        self._scan()
        self._keys = sorted(self._files)
        self._loose_bbox = _read_loose_bboxes(Path(bbox_csv)) if bbox_csv else {}
        self._loose_landmarks = _read_loose_landmarks(Path(landmarks_csv)) if landmarks_csv else {}

    def _scan(self) -> None:
        """List every file under the root; identity folders in name order get labels 0, 1, ..."""
        top = _scandir(self.root)
        if top is None:
            raise SourceFormatError("unreadable_folder", f"{self.root} cannot be listed")
        folders = []
        for entry in top:
            if entry.name.startswith("."):
                self._add_unread(entry.name, entry, "hidden_file", "hidden files are not read")
            elif not _is_dir(entry, follow_symlinks=True):
                self._add_unread(
                    entry.name, entry, "not_in_identity_folder", "files directly under the root belong to no identity"
                )
            else:
                folders.append(entry)
        for folder in folders:
            identity = folder.name
            entries = _scandir(Path(folder.path))
            if entries is None:
                self._add_file(identity, -1, ("unreadable_folder", "the identity folder cannot be listed"))
                continue
            photos = [e.name for e in entries if not e.name.startswith(".") and not _is_dir(e)]
            if photos:
                self._add_photos(len(self._identities), identity, photos)
                self._identities.append(_printable(identity))
            for entry in entries:
                rel_path = f"{identity}/{entry.name}"
                if entry.name.startswith("."):
                    self._add_unread(rel_path, entry, "hidden_file", "hidden files are not read")
                elif _is_dir(entry):
                    detail = f"identity folders are flat: move it into {identity}/ to read it"
                    self._add_unread(rel_path, entry, "nested_file", detail)

    def _add_photos(self, label: int, identity: str, names: list[str]) -> None:
        stem_counts = Counter(os.path.splitext(n)[0] for n in names)
        for file_name in names:
            stem = os.path.splitext(file_name)[0]
            rel_path = f"{identity}/{file_name}"
            key = f"{identity}/{stem if stem_counts[stem] == 1 else file_name}"
            self._add_file(rel_path, label, None, key)

    def _add_unread(self, rel_path: str, entry: os.DirEntry[str], reason: str, detail: str) -> None:
        """``entry`` (at ``rel_path``) and, for a folder (not a link to one), every file under it: not read."""
        if not _is_dir(entry):
            self._add_file(rel_path, -1, (reason, detail))
            return
        children = _scandir(Path(entry.path))
        if children is None:
            self._add_file(rel_path, -1, ("unreadable_folder", f"the folder cannot be listed ({reason})"))
            return
        for child in children:
            self._add_unread(f"{rel_path}/{child.name}", child, reason, detail)

    def _add_file(self, rel_path: str, label: int, refused: tuple[str, str] | None, key: str | None = None) -> None:
        """Key ``"<name>/<key or rel_path>"`` for the file at ``rel_path``; a CSV given to the source is refused."""
        if rel_path in self._metadata:
            refused = ("metadata_file", self._metadata[rel_path])
        full_key = f"{self.name}/{_printable(key or rel_path)}"
        if full_key in self._files:  # e.g. "a.jpg.png" next to "a.jpg" and "a.png"
            detail = _printable(f"{self.root}: {rel_path} and {self._files[full_key].rel_path} map to {full_key}")
            raise SourceFormatError("key_collision", detail)
        self._files[full_key] = _File(label, rel_path, refused)

    def keys(self) -> list[str]:
        return list(self._keys)

    def identities(self) -> list[str]:
        return list(self._identities)

    def path_of(self, key: str) -> Path:
        """The file behind ``key``; raises ``KeyError`` for an unknown key."""
        return self.root / self._files[key].rel_path

    def read(self, key: str) -> RawRecord:
        """The file's bytes, its identity label and any loose bbox/landmarks from the CSVs."""
        label, rel_path, refused = self._files[key]
        path = self.root / rel_path
        if refused:
            raise SourceError(refused[0], f"{_printable(str(path))}: {refused[1]}")
        data = _read_photo(path)
        name_id = os.path.splitext(rel_path)[0]
        meta: dict[str, Any] = {}
        if name_id in self._loose_bbox:
            meta["loose_bbox"] = list(self._loose_bbox[name_id])
        if name_id in self._loose_landmarks:
            meta["loose_landmarks"] = [list(p) for p in self._loose_landmarks[name_id]]
        return RawRecord(key=key, data=data, identity=label, source=self.name, meta=meta)


def _scandir(folder: Path) -> list[os.DirEntry[str]] | None:
    """The entries of ``folder`` sorted by name; ``None`` when it cannot be listed."""
    try:
        with os.scandir(folder) as entries:
            return sorted(entries, key=lambda e: e.name)
    except OSError:
        return None


def _relative_inside(path: Path, root: Path) -> str | None:
    """``path`` relative to ``root`` (both resolved) when it lies under it, else ``None``."""
    rel_path = os.path.relpath(os.path.realpath(path), os.path.realpath(root))
    return None if rel_path == ".." or rel_path.startswith("../") else rel_path


def _is_dir(entry: os.DirEntry[str], follow_symlinks: bool = False) -> bool:
    """Whether ``entry`` is a folder (a link to one only with ``follow_symlinks``); False when it cannot tell."""
    try:
        return entry.is_dir(follow_symlinks=follow_symlinks)
    except OSError:
        return False


def _printable(name: str) -> str:
    """``name`` with the bytes that are not UTF-8 (kept as surrogates by ``os.fsdecode``) escaped as ``\\xNN``."""
    return os.fsencode(name).decode("utf-8", "backslashreplace")


def _read_photo(path: Path) -> bytes:
    """The bytes of the photo at ``path``; :class:`SourceError` for anything that is not a readable image file.

    The type is checked before opening, so a FIFO or device is never opened; the open itself does not
    block (``O_NONBLOCK``) in case the entry was swapped for one in between.
    """
    where = _printable(str(path))
    try:
        info = os.stat(path)
    except OSError as e:
        if path.is_symlink():
            target = _printable(os.readlink(path))
            raise SourceError("broken_symlink", f"{where} -> {target}: {e.strerror or e}") from e
        raise SourceError("unreadable", f"{where}: {e.strerror or e}") from e
    _check_regular(where, info.st_mode)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        raise SourceError("unreadable", f"{where}: {e.strerror or e}") from e
    with open(fd, "rb") as f:
        try:
            _check_regular(where, os.fstat(fd).st_mode)
            head = f.read(SNIFF_BYTES)
            try:
                sniff_format(head)
            except ImageError as e:
                raise SourceError(e.reason, f"{where}: {e.detail}") from e
            return head + f.read()
        except OSError as e:
            raise SourceError("unreadable", f"{where}: {e.strerror or e}") from e


def _check_regular(where: str, mode: int) -> None:
    if stat.S_ISREG(mode):
        return
    kinds = {stat.S_IFDIR: "a folder", stat.S_IFIFO: "a FIFO", stat.S_IFSOCK: "a socket"}
    kind = kinds.get(stat.S_IFMT(mode), "a device")
    raise SourceError("not_a_regular_file", f"{where} is {kind}, not a file; it is not opened")


def _read_loose_csv(path: Path, num_values: int) -> dict[str, tuple[float, ...]]:
    """``NAME_ID`` -> its ``num_values`` numbers, from a VGGFace2 loose CSV with a header row."""
    if not path.is_file():
        raise SourceFormatError("missing_csv", f"{path} does not exist")
    rows: dict[str, tuple[float, ...]] = {}
    with path.open(newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if not header or header[0].strip().upper() != "NAME_ID" or len(header) != num_values + 1:
            raise SourceFormatError(
                "bad_csv", f"{path}: expected a header NAME_ID + {num_values} columns, got {header}"
            )
        for line_no, row in enumerate(reader, start=2):
            if not row:
                continue
            try:
                if len(row) != num_values + 1:
                    raise ValueError(f"{len(row)} columns")
                rows[row[0].strip()] = tuple(float(v) for v in row[1:])
            except ValueError as e:
                raise SourceFormatError("bad_csv", f"{path} line {line_no}: {e}: {row}") from e
    return rows


def _read_loose_bboxes(path: Path) -> dict[str, tuple[float, float, float, float]]:
    """``NAME_ID`` -> ``(x1, y1, x2, y2)`` from ``NAME_ID,X,Y,W,H``."""
    return {k: (x, y, x + w, y + h) for k, (x, y, w, h) in _read_loose_csv(path, 4).items()}


def _read_loose_landmarks(path: Path) -> dict[str, tuple[tuple[float, float], ...]]:
    """``NAME_ID`` -> five ``(x, y)`` points from ``NAME_ID,P1X,P1Y,...,P5X,P5Y``."""
    return {k: tuple(zip(v[0::2], v[1::2], strict=True)) for k, v in _read_loose_csv(path, 10).items()}
