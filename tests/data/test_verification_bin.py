"""Verification ``.bin`` files: legit files of every pickle flavour load, malicious ones run nothing."""

from __future__ import annotations

import builtins
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest

from facekit.data.sources import SourceFormatError
from facekit.data.sources.verification_bin import (
    UnsafeBinError,
    VerificationBin,
    load_verification_bin,
    write_verification_bin,
)


@pytest.fixture(scope="module")
def pairs(assets: Path) -> tuple[list[bytes], list[bool]]:
    """Three real pairs from the deepface pair list: [6] JPEG bytes, [3] same/different."""
    faces = assets / "faces" / "deepface"
    rows = [line.split(",") for line in (faces / "pairs.csv").read_text().splitlines()[1:4]]
    images = [(faces / name).read_bytes() for x, y, _ in rows for name in (x, y)]
    return images, [same.strip() in ("1", "True", "true") for _, _, same in rows]


@pytest.mark.parametrize("protocol", [2, 4])
def test_round_trip(tmp_path: Path, pairs: tuple[list[bytes], list[bool]], protocol: int) -> None:
    images, issame = pairs
    path = tmp_path / "lfw.bin"
    write_verification_bin(path, images, issame, protocol=protocol)
    assert (b"_codecs" in path.read_bytes()) == (protocol == 2)  # protocol 2 stores bytes via _codecs.encode
    loaded = load_verification_bin(path)
    assert loaded.images == images
    assert loaded.issame.dtype == np.bool_ and loaded.issame.tolist() == issame
    assert len(loaded) == 3 and loaded.pair(1) == (images[2], images[3], issame[1])


def test_python2_file_loads_as_bytes(tmp_path: Path, pairs: tuple[list[bytes], list[bool]]) -> None:
    """Opcodes as Python 2's cPickle writes (images, issame): py2 ``str`` is BINSTRING, not bytes."""
    images, issame = pairs
    body = b"".join(b"T" + struct.pack("<i", len(im)) + im for im in images)
    flags = b"".join(b"\x88" if s else b"\x89" for s in issame)
    path = tmp_path / "agedb_30.bin"
    path.write_bytes(b"\x80\x02](" + body + b"e](" + flags + b"e\x86.")
    loaded = load_verification_bin(path)
    assert loaded == VerificationBin(images, loaded.issame)
    assert loaded.issame.tolist() == issame


class _Shell:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return os.system, (f"touch {self.marker}",)


class _Eval:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return builtins.eval, (f"open({str(self.marker)!r}, 'w')",)


@pytest.mark.parametrize(("payload_cls", "refused"), [(_Shell, "system"), (_Eval, "eval")])
@pytest.mark.parametrize("protocol", [2, 5])
def test_malicious_pickle_is_refused_and_runs_nothing(
    tmp_path: Path, pairs: tuple[list[bytes], list[bool]], payload_cls: type, refused: str, protocol: int
) -> None:
    images, issame = pairs
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.bin"
    # the evil object hides after legit images, as the last image
    path.write_bytes(pickle.dumps(([*images[:-1], payload_cls(marker)], issame), protocol=protocol))
    with pytest.raises(UnsafeBinError, match=refused) as err:
        load_verification_bin(path)
    assert isinstance(err.value, ValueError) and err.value.reason == "unsafe_pickle"
    assert refused in err.value.refused
    assert not marker.exists()
    control = tmp_path / "control"  # the same payload through plain pickle does run: the test is live
    pickle.loads(pickle.dumps(payload_cls(control), protocol=protocol))
    assert control.exists()


def test_allowed_global_cannot_be_abused(tmp_path: Path) -> None:
    """``_codecs.encode`` is let through only as the latin-1 encoder that protocol 2 needs."""
    path = tmp_path / "odd.bin"
    # ([_codecs.encode("eA==", "base64")], []) written by hand: a codec other than latin-1
    path.write_bytes(b"\x80\x02](c_codecs\nencode\nX\x04\x00\x00\x00eA==X\x06\x00\x00\x00base64\x86Re]\x86.")
    with pytest.raises(SourceFormatError) as err:
        load_verification_bin(path)
    assert err.value.reason == "bad_pickle" and "base64" in err.value.detail


@pytest.mark.parametrize(
    ("payload", "match"),
    [
        (([b"a", b"b", b"c"], [True]), "3 images for 1 pairs"),
        (([b"a", b"b"], [1]), r"issame\[0\] is 1"),
        (([b"a", "b"], [True]), r"images\[1\]"),
        (([b"a", b"b"], [True], "extra"), "expected a pair"),
        ({"images": [], "issame": []}, "expected a pair"),
    ],
)
def test_bad_structure_is_explained(tmp_path: Path, payload: object, match: str) -> None:
    path = tmp_path / "bad.bin"
    path.write_bytes(pickle.dumps(payload, protocol=4))
    with pytest.raises(SourceFormatError, match=match) as err:
        load_verification_bin(path)
    assert err.value.reason == "bad_structure"


def test_garbage_and_truncated_files(tmp_path: Path, pairs: tuple[list[bytes], list[bool]]) -> None:
    path = tmp_path / "lfw.bin"
    write_verification_bin(path, *pairs)
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(SourceFormatError, match=r"lfw\.bin") as err:
        load_verification_bin(path)
    assert err.value.reason == "bad_pickle"
    path.write_bytes(b"\xff\xd8 this is a JPEG, not a pickle")
    with pytest.raises(SourceFormatError) as err:
        load_verification_bin(path)
    assert err.value.reason == "bad_pickle"
    with pytest.raises(SourceFormatError) as err:
        load_verification_bin(tmp_path / "absent.bin")
    assert err.value.reason == "unreadable"
    with pytest.raises(SourceFormatError, match="2 per pair"):
        write_verification_bin(tmp_path / "odd.bin", pairs[0][:3], pairs[1])
