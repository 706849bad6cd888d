"""The ``scan`` stage: a manifest of the source, the dependency detect_align has in place of the source itself.

DVC hashes a dependency folder by reading every file in it: one broken link or unreadable file aborts the
stage before facekit can reject it, and a FIFO named ``x.jpg`` hangs it. ``scan`` lists the source without
opening anything: ``lstat`` / ``stat`` of each entry and ``scandir`` of each folder. The manifest holds one
JSON line per entry, sorted by path, the same bytes for the same tree::

    {"path": "n000001/0001.jpg", "kind": "file", "size": 40213, "mtime_ns": 1700000000000000000}
    {"path": "n000001/broken.jpg", "kind": "broken_symlink", "target": "../gone.jpg"}

``kind`` is ``file`` (a regular file, or a link to one: ``target`` names it; ``size`` and ``mtime_ns`` are
the file's), ``unreadable`` (a regular file this user may not read), ``broken_symlink`` (a link whose target
is missing, or a loop), ``folder_link`` (a link to a folder below the identity level, not followed),
``fifo``, ``socket``, ``device``, or ``unreadable_folder`` (a folder that cannot be listed: one line stands
for what it holds). Folders themselves have no line; the folder links directly under the root (identity
folders) are followed, as the folder source follows them. For a folder source, the manifest has one line
per key of the source, so the count of lines is the count detect_align reads.

What is scanned follows ``source.type``: ``folder`` and ``hf`` the folder at ``source.path``; ``recordio``
the ``.rec``, its ``.idx`` and the ``property`` file beside it; ``laion`` the tars the source reads (a
folder's ``*.tar`` or a glob pattern). DVC runs the stage on every ``dvc repro`` (``always_changed``): it
costs a ``stat`` per file, and a manifest equal to the last one leaves detect_align cached.
"""

from __future__ import annotations

import json
import os
import stat
from collections import Counter
from pathlib import Path
from typing import Any

from facekit.config import Params, PathsParams, SourceParams
from facekit.data.sources.base import SourceFormatError

#: ``stat.S_IFMT`` of an entry that is not a folder, regular file or link -> its manifest kind
_SPECIAL_KINDS = {stat.S_IFIFO: "fifo", stat.S_IFSOCK: "socket", stat.S_IFCHR: "device", stat.S_IFBLK: "device"}


def scan_source(source: SourceParams) -> list[dict[str, Any]]:
    """The manifest entries of ``source`` (see the module docstring), sorted by path."""
    root = Path(source.path)
    if source.type in ("folder", "hf"):
        if not root.is_dir():
            raise SourceFormatError("not_a_directory", f"source.path {root} is not a directory")
        entries = _scan_folder(root)
        if entries is None:
            raise SourceFormatError("unreadable_folder", f"source.path {root} cannot be listed")
    elif source.type == "recordio":
        files = [root, root.with_suffix(".idx"), root.parent / "property"]
        entries = [_entry(p.name, p) for p in files if os.path.lexists(p)]
    else:
        from facekit.data.sources.laion import resolve_tar_paths

        entries = [_entry(str(p), p) for p in resolve_tar_paths(source.path)]
    return sorted(entries, key=lambda e: e["path"])


def _scan_folder(root: Path, rel: str = "", depth: int = 0) -> list[dict[str, Any]] | None:
    """Entries under ``root`` (``rel`` its path from the source root); ``None`` when it cannot be listed."""
    try:
        with os.scandir(root) as it:
            children = list(it)
    except OSError:
        return None
    entries: list[dict[str, Any]] = []
    for child in children:
        path = f"{rel}{_printable(child.name)}"
        try:
            # identity folders may be links; a hidden link is one entry, as the folder source has it
            is_folder = child.is_dir(follow_symlinks=depth == 0 and not child.name.startswith("."))
        except OSError:
            is_folder = False
        if not is_folder:
            entries.append(_entry(path, Path(child.path)))
            continue
        inside = _scan_folder(Path(child.path), f"{path}/", depth + 1)
        entries.extend([{"path": path, "kind": "unreadable_folder"}] if inside is None else inside)
    return entries


def _entry(path: str, where: Path) -> dict[str, Any]:
    """The manifest line of the entry at ``where`` that is not a followed folder; nothing is opened."""
    try:
        info = os.lstat(where)
    except OSError:
        return {"path": path, "kind": "unreadable"}
    entry: dict[str, Any] = {"path": path}
    if stat.S_ISLNK(info.st_mode):
        entry["target"] = _printable(os.readlink(where))
        try:
            info = os.stat(where)
        except OSError:
            return entry | {"kind": "broken_symlink"}
    if stat.S_ISDIR(info.st_mode):
        return entry | {"kind": "folder_link"}
    if not stat.S_ISREG(info.st_mode):
        return entry | {"kind": _SPECIAL_KINDS.get(stat.S_IFMT(info.st_mode), "device")}
    kind = "file" if os.access(where, os.R_OK) else "unreadable"
    return entry | {"kind": kind, "size": info.st_size, "mtime_ns": info.st_mtime_ns}


def _printable(name: str) -> str:
    """``name`` with the bytes that are not UTF-8 escaped as ``\\xNN`` (as the folder source's keys have them)."""
    return os.fsencode(name).decode("utf-8", "backslashreplace")


def write_manifest(entries: list[dict[str, Any]], path: Path) -> None:
    """One JSON line per entry, written to a temporary file and renamed into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(e, ensure_ascii=False) + "\n" for e in entries), encoding="utf-8")
    os.replace(tmp, path)


def read_manifest(path: Path) -> list[dict[str, Any]]:
    """The entries :func:`write_manifest` wrote."""
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines()]


def run(params: Params, paths: PathsParams) -> str:
    """The stage: the manifest of ``params.source`` to ``paths.source_manifest``; returns a summary line."""
    entries = scan_source(params.source)
    write_manifest(entries, Path(paths.source_manifest))
    kinds = ", ".join(f"{k} {n}" for k, n in sorted(Counter(e["kind"] for e in entries).items()))
    return f"scan: {len(entries)} entries ({kinds or 'none'}) in {params.source.path} -> {paths.source_manifest}"
