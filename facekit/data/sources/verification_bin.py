"""insightface verification sets (``lfw.bin``, ``cfp_fp.bin``, ``agedb_30.bin``...), loaded safely.

A ``.bin`` is a pickle of ``(images, issame)``: ``images`` the encoded pair images (``2 * P`` bytes
objects, pair ``i`` is ``images[2i], images[2i+1]``), ``issame`` ``P`` bools. A pickle can run any code
on load, so it is read with an unpickler that resolves exactly one global, ``_codecs.encode`` with a
latin-1 encoding: that is how Python 3 stores bytes at protocol 2. Python-2 files need no global (their
``str`` objects load as bytes with ``encoding="bytes"``), protocol 3+ files neither. Any other global is
refused with :class:`UnsafeBinError` before anything is called.
"""

from __future__ import annotations

import io
import pickle
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from facekit.data.sources.base import SourceFormatError

_LATIN1_NAMES = frozenset({"latin1", "latin-1", "latin_1", "iso-8859-1", "iso8859-1"})


class UnsafeBinError(SourceFormatError):
    """A ``.bin`` pickle asked for a global that verification data never needs (``refused``: its name)."""

    def __init__(self, path: Path, refused: str) -> None:
        super().__init__("unsafe_pickle", f"{path}: refused to load global {refused!r}; nothing was executed")
        self.refused = refused


@dataclass(frozen=True)
class VerificationBin:
    """A verification set: ``images`` [2P] encoded images, ``issame`` [P] bool (pair i = images 2i, 2i+1)."""

    images: list[bytes]
    issame: np.ndarray

    def __len__(self) -> int:
        return len(self.issame)

    def pair(self, i: int) -> tuple[bytes, bytes, bool]:
        """Both encoded images of pair ``i`` and whether they show the same person."""
        return self.images[2 * i], self.images[2 * i + 1], bool(self.issame[i])


def _latin1_encode(text: str, encoding: str = "utf-8") -> bytes:
    """What ``_codecs.encode`` does for a protocol-2 bytes object, and nothing else."""
    if not isinstance(text, str) or not isinstance(encoding, str) or encoding.lower() not in _LATIN1_NAMES:
        raise pickle.UnpicklingError(f"_codecs.encode called with {type(text).__name__}, {encoding!r}")
    return text.encode("latin-1")


class _VerificationUnpickler(pickle.Unpickler):
    def __init__(self, file: io.BufferedIOBase, path: Path) -> None:
        super().__init__(file, encoding="bytes")
        self._path = path

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("_codecs", "encode"):
            return _latin1_encode
        raise UnsafeBinError(self._path, f"{module}.{name}")


def load_verification_bin(path: Path) -> VerificationBin:
    """Load and validate an insightface ``.bin``; raises :class:`SourceFormatError` (``reason`` says why)."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            payload = _VerificationUnpickler(f, path).load()
    except UnsafeBinError:
        raise
    except OSError as e:
        raise SourceFormatError("unreadable", f"{path}: {e.strerror or e}") from e
    except Exception as e:  # the unpickler raises many types on garbage (UnpicklingError, EOFError, ...)
        raise SourceFormatError("bad_pickle", f"{path}: not a readable pickle ({type(e).__name__}: {e})") from e
    return _validate(path, payload)


def _validate(path: Path, payload: Any) -> VerificationBin:
    if not isinstance(payload, tuple | list) or len(payload) != 2:
        raise SourceFormatError("bad_structure", f"{path}: expected a pair (images, issame), got {type(payload)}")
    images, issame = payload
    if not isinstance(images, list | tuple) or not isinstance(issame, list | tuple):
        raise SourceFormatError(
            "bad_structure", f"{path}: images and issame must be lists, got {type(images)} and {type(issame)}"
        )
    if (bad := next((i for i, im in enumerate(images) if not isinstance(im, bytes) or not im), None)) is not None:
        raise SourceFormatError("bad_structure", f"{path}: images[{bad}] is not non-empty bytes")
    if (bad := next((i for i, same in enumerate(issame) if not isinstance(same, bool)), None)) is not None:
        raise SourceFormatError("bad_structure", f"{path}: issame[{bad}] is {issame[bad]!r}, not a bool")
    if len(images) != 2 * len(issame):
        raise SourceFormatError(
            "bad_structure", f"{path}: {len(images)} images for {len(issame)} pairs (need exactly 2 per pair)"
        )
    return VerificationBin(images=list(images), issame=np.array(issame, dtype=bool))


def write_verification_bin(path: Path, images: Sequence[bytes], issame: Sequence[bool], protocol: int = 4) -> None:
    """Write ``(images, issame)`` as insightface does (``images`` [2P] encoded, ``issame`` [P] bool)."""
    issame_list = [bool(s) for s in issame]
    images_list = [bytes(im) for im in images]
    _validate(Path(path), (images_list, issame_list))
    Path(path).write_bytes(pickle.dumps((images_list, issame_list), protocol=protocol))
