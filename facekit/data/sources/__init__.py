"""Raw face datasets (identity folders, insightface RecordIO) behind one :class:`Source` contract.

``open_source(spec)`` builds a source from a config dict (e.g. a ``params.yaml`` entry)::

    {"type": "folder", "path": "data/vggface2/train", "name": "vggface2", "layout": "vggface2"}
    {"type": "recordio", "path": "data/ms1mv3/train.rec", "name": "ms1mv3", "channel_order": "bgr"}

The source modules are imported inside :func:`open_source` so that they can import
:class:`SourceFormatError` from here without an import cycle.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from facekit.data.sources.base import Source


class SourceFormatError(ValueError):
    """A dataset file, folder or spec that cannot be used at all (raised when a source is opened).

    ``reason`` is a short stable code (e.g. ``"bad_index_file"``), ``detail`` names the file and the problem.
    Per-record failures are :class:`~facekit.data.sources.base.SourceError` instead.
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


#: spec "type" -> (required keys, optional keys besides "type")
_SPEC_KEYS: dict[str, tuple[frozenset[str], frozenset[str]]] = {
    "folder": (frozenset({"path", "name"}), frozenset({"layout", "bbox_csv", "landmarks_csv"})),
    "recordio": (frozenset({"path", "name"}), frozenset({"channel_order"})),
}


def open_source(spec: dict[str, Any]) -> Source:
    """Build the source described by ``spec`` (``type`` is ``"folder"`` or ``"recordio"``; paths as str or Path)."""
    kind = spec.get("type")
    if kind not in _SPEC_KEYS:
        raise SourceFormatError(
            "bad_spec", f"unknown source type {kind!r}; valid types: {', '.join(sorted(_SPEC_KEYS))}"
        )
    required, optional = _SPEC_KEYS[kind]
    given = set(spec) - {"type"}
    if missing := required - given:
        raise SourceFormatError("bad_spec", f"{kind} source spec is missing {sorted(missing)}")
    if unknown := given - required - optional:
        raise SourceFormatError(
            "bad_spec", f"{kind} source spec has unknown keys {sorted(unknown)}; allowed: {sorted(required | optional)}"
        )
    kwargs = {k: v for k, v in spec.items() if k != "type"}
    for key in ("path", "bbox_csv", "landmarks_csv"):
        if kwargs.get(key) is not None:
            kwargs[key] = Path(kwargs[key])
    if kind == "folder":
        from facekit.data.sources.folders import IdentityFolderSource

        return IdentityFolderSource(root=kwargs.pop("path"), **kwargs)
    from facekit.data.sources.recordio import RecordIOSource

    return RecordIOSource(**kwargs)
