"""One check of a params.yaml value against its field's annotation and allowed range, for every section
and for :class:`~facekit.config.train.TrainConfig`: a wrong type, a choice outside a ``Literal`` or a number
out of range is one ValueError naming the key, raised before any work starts."""

from __future__ import annotations

import types
import typing
from pathlib import Path
from typing import Any, Literal

#: ``section.key`` -> (lowest, highest) allowed value (None: unbounded); checked when params.yaml is read
RANGES: dict[str, tuple[float | None, float | None]] = {
    "source.max_member_bytes": (1, None),
    "detect.input_size": (32, 4096), "detect.score_threshold": (0.0, 1.0), "detect.nms_threshold": (0.0, 1.0),
    "detect.min_face_size": (0.0, None), "detect.max_pixels": (1, None),
    "align.size": (16, 1024), "align.face_fraction": (0.1, 1.0), "align.jpeg_quality": (1, 100),
    "sharding.num_shards": (1, None), "sharding.workers": (1, None),
    "pack.max_shard_bytes": (1, None), "pack.grid_size": (1, None),
    "landmarks.min_presence": (0.0, 1.0), "landmarks.max_disagreement": (0.0, None),
    "landmarks.face_fraction": (0.1, 1.0), "masks.jpeg_quality": (1, 100),
    "download.shard_size": (1, None), "download.workers": (1, None), "download.retries": (0, None),
    "pretrain.nproc_per_node": (1, None), "finetune.nproc_per_node": (1, None), "verify.folds": (2, None),
}  # fmt: skip


def check_value(value: Any, hint: Any, where: str) -> None:
    """Raise a ValueError naming ``where`` unless ``value`` fits the annotation ``hint`` (a Literal's choices,
    int / float / bool / str, a list for a tuple, a mapping for a dict, None where allowed) and
    :data:`RANGES`."""
    options = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    if not any(_fits_hint(value, option) for option in options):
        raise ValueError(f"{where} must be {' or '.join(_describe(o) for o in options)}, got {value!r}")
    low, high = RANGES.get(where, (None, None))
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if number and ((low is not None and value < low) or (high is not None and value > high)):
        bounds = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"{where} must be {bounds}, got {value!r}")


def _fits_hint(value: Any, hint: Any) -> bool:
    origin = typing.get_origin(hint)
    if origin is Literal:
        return value in typing.get_args(hint)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint in (int, float):
        return (
            isinstance(value, int | float) and not isinstance(value, bool) and (hint is float or isinstance(value, int))
        )
    if hint is str:
        return isinstance(value, str)
    if hint is Path:
        return isinstance(value, str | Path)
    if origin is tuple or hint is tuple:
        return isinstance(value, list | tuple)
    if origin is list:
        return isinstance(value, list | tuple) and all(_fits_hint(v, typing.get_args(hint)[0]) for v in value)
    if origin is dict or hint is dict:
        return isinstance(value, dict)
    return True  # Any


def _describe(hint: Any) -> str:
    if typing.get_origin(hint) is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(hint))
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string", Path: "a path"}
    names[type(None)] = "null"
    if hint in names:
        return names[hint]
    if typing.get_origin(hint) is list:
        return f"a list of {_describe(typing.get_args(hint)[0])}s"
    return "a list" if typing.get_origin(hint) is tuple else "a mapping" if typing.get_origin(hint) is dict else "any"
