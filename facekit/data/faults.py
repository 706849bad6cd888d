"""Fault injection for the crash-consistency tests of the data stages.

With ``FACEKIT_FAULT=<point>`` in the environment, the process exits at once (``os._exit`` with
:data:`FAULT_EXIT_CODE`: no cleanup, no ``finally``, as after ``kill -9``) right after the write named
``<point>``; ``<point>:N`` exits the N-th time this process reaches it (default: the first). The points:

- ``shard_record_put``: a record put into the shard being built (``<name>.lmdb.tmp``, not committed)
- ``shard_committed``: a shard's records, metadata and report committed and synced in ``<name>.lmdb.tmp``
- ``shard_moved_aside``: the shard it replaces renamed to ``<name>.lmdb.old``
- ``shard_renamed``: ``<name>.lmdb.tmp`` renamed to ``<name>.lmdb`` (the ``.old`` one not yet removed)
- ``index_written``: a shard set's ``index.json`` replaced
- ``report_rejections_written``: a stage report's ``S.rejections.jsonl`` replaced (``S.json`` not yet)
- ``report_written``: a stage report's ``S.json`` replaced

The variable is read once, at import; unset, :func:`fault_point` returns after one comparison.
"""

from __future__ import annotations

import os

#: The exit status of a process stopped by :func:`fault_point`.
FAULT_EXIT_CODE = 86


def _parse(setting: str | None) -> tuple[str | None, int]:
    if not setting:
        return None, 0
    point, _, nth = setting.partition(":")
    return point, int(nth or 1)


_POINT, _NTH = _parse(os.environ.get("FACEKIT_FAULT"))
_reached = 0


def fault_point(name: str) -> None:
    """Exit the process now if ``FACEKIT_FAULT`` names ``name`` (and this is its N-th time here)."""
    global _reached
    if _POINT is None or name != _POINT:
        return
    _reached += 1
    if _reached == _NTH:
        os._exit(FAULT_EXIT_CODE)
