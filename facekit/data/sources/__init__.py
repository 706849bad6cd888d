"""Raw face datasets (identity folders, RecordIO, LAION tar shards, HF datasets) behind one :class:`Source` contract.

``open_source(spec)`` builds a source from a config dict (e.g. a ``params.yaml`` entry)::

    {"type": "folder", "path": "data/vggface2/train", "name": "vggface2", "layout": "vggface2"}
    {"type": "recordio", "path": "data/ms1mv3/train.rec", "name": "ms1mv3", "channel_order": "bgr"}
    {"type": "laion", "path": "data/laion-face/tars", "name": "laion_face"}          # folder, glob or list
    {"type": "hf", "path": "data/hf/my_faces", "name": "my_faces", "split": "train"}  # needs `datasets`

The source modules are imported inside :func:`open_source` (and the source classes on first access,
``from facekit.data.sources import LaionTarSource``) so that optional dependencies load only when used.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from facekit.data.sources.base import Source, SourceFormatError

#: spec "type" -> (required keys, optional keys besides "type")
_SPEC_KEYS: dict[str, tuple[frozenset[str], frozenset[str]]] = {
    "folder": (frozenset({"path", "name"}), frozenset({"layout", "bbox_csv", "landmarks_csv"})),
    "recordio": (frozenset({"path", "name"}), frozenset({"channel_order"})),
    "laion": (frozenset({"path", "name"}), frozenset({"max_member_bytes"})),
    "hf": (frozenset({"path", "name"}), frozenset({"split", "image_column", "label_column", "cache_dir"})),
}

#: class name -> module, for lazy ``from facekit.data.sources import <class>``
_LAZY_CLASSES = {
    "IdentityFolderSource": "facekit.data.sources.folders",
    "RecordIOSource": "facekit.data.sources.recordio",
    "LaionTarSource": "facekit.data.sources.laion",
    "HFImageSource": "facekit.data.sources.hf",
}


def __getattr__(name: str) -> Any:
    """Import a source class on first access (see the module docstring)."""
    if name in _LAZY_CLASSES:
        import importlib

        return getattr(importlib.import_module(_LAZY_CLASSES[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def open_source(spec: dict[str, Any]) -> Source:
    """Build the source described by ``spec`` (``type``: one of ``_SPEC_KEYS``; paths as str or Path).

    A ``laion`` path may be a folder of tars, a glob pattern or a list of tar paths.
    """
    kind = spec.get("type")
    if kind not in _SPEC_KEYS:
        raise SourceFormatError("bad_spec", f"unknown source type {kind!r}; valid types: {', '.join(_SPEC_KEYS)}")
    required, optional = _SPEC_KEYS[kind]
    given = set(spec) - {"type"}
    if missing := required - given:
        raise SourceFormatError("bad_spec", f"{kind} source spec is missing {sorted(missing)}")
    if unknown := given - required - optional:
        raise SourceFormatError(
            "bad_spec", f"{kind} source spec has unknown keys {sorted(unknown)}; allowed: {sorted(required | optional)}"
        )
    kwargs = {k: v for k, v in spec.items() if k != "type"}
    for key in ("path", "bbox_csv", "landmarks_csv", "cache_dir"):
        if isinstance(kwargs.get(key), str | Path) and not (kind == "laion" and key == "path"):
            kwargs[key] = Path(kwargs[key])
    if kind == "folder":
        from facekit.data.sources.folders import IdentityFolderSource

        return IdentityFolderSource(root=kwargs.pop("path"), **kwargs)
    if kind == "laion":
        from facekit.data.sources.laion import LaionTarSource

        path = kwargs.pop("path")
        return LaionTarSource(paths=[Path(p) for p in path] if isinstance(path, list) else path, **kwargs)
    if kind == "hf":
        from facekit.data.sources.hf import HFImageSource

        return HFImageSource(**kwargs)
    from facekit.data.sources.recordio import RecordIOSource

    return RecordIOSource(**kwargs)
