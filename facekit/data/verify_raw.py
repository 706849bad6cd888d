"""Check a raw dataset obtained by hand (layout, then counts) before the pipeline spends hours on it.

``verify_raw(kind, path, expected)`` returns a :class:`VerifyReport` whose ``message()`` names each thing
that is off (a missing ``.idx``, a ``train/`` folder given instead of its parent's split, a gap in the tar
numbering, 8,000 identities where 8,631 were expected...). ``problems`` make ``ok`` false; ``notes`` are
worth reading but do not. ``expected`` holds counts (``identities``, ``images``, ``tars``) and an optional
relative ``tolerance`` (default 0: exact); :data:`KNOWN_COUNTS` has the published sizes.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from facekit.data.sources import SourceFormatError
from facekit.data.sources.base import SourceError

Kind = Literal["vggface2", "webface", "recordio", "laion"]
KINDS: tuple[str, ...] = ("vggface2", "webface", "recordio", "laion")

#: Published sizes (identities / images). Sources:
#: - VGGFace2: Cao et al., "VGGFace2" (FG 2018) and the dataset's meta files: train 8,631 / 3,141,890,
#:   test 500 / 169,396.
#: - CASIA-WebFace: Yi et al. 2014: 10,575 / 494,414.
#: - MS1MV2 (faces_emore) and MS1MV3 (ms1m-retinaface-t1): insightface's dataset zoo (recognition/_datasets_):
#:   85,742 / 5,822,653 and 93,431 / 5,179,510.
#: - WebFace4M / WebFace42M: Zhu et al., "WebFace260M" (CVPR 2021): 205,990 ids / ~4.2M and
#:   2,059,906 ids / ~42.5M images; the exact image counts below are as commonly quoted, UNSURE.
KNOWN_COUNTS: dict[str, dict[str, float]] = {
    "vggface2-train": {"identities": 8_631, "images": 3_141_890},
    "vggface2-test": {"identities": 500, "images": 169_396},
    "casia-webface": {"identities": 10_575, "images": 494_414},
    "ms1mv2": {"identities": 85_742, "images": 5_822_653},
    "ms1mv3": {"identities": 93_431, "images": 5_179_510},
    "webface4m": {"identities": 205_990, "images": 4_235_242, "tolerance": 0.01},  # image count UNSURE
    "webface42m": {"identities": 2_059_906, "images": 42_474_558, "tolerance": 0.01},  # image count UNSURE
}
#: Extensions counted as images (the folder source itself reads any file whose content is an image).
_IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff", ".pgm", ".ppm", ".pbm"}
    | {".heic", ".heif", ".avif"}
)
_COUNT_KEYS = frozenset({"identities", "images", "tars"})
_VGGFACE2_ID = re.compile(r"n\d{6}")
_TAR_NAME = re.compile(r"\d{5,}\.tar")
_SHOWN = 3


@dataclass
class VerifyReport:
    """What was found at ``path``; ``ok`` when no problem was found."""

    kind: str
    path: Path
    counts: dict[str, int] = field(default_factory=dict)
    expected: dict[str, float] | None = None
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def message(self) -> str:
        """A few lines: verdict and counts, then one line per problem and note."""
        counts = ", ".join(f"{v:,} {k}" for k, v in self.counts.items()) or "nothing counted"
        against = " (as expected)" if self.expected and self.ok else ""
        lines = [f"{'OK' if self.ok else 'PROBLEMS'}: {self.kind} at {self.path}: {counts}{against}"]
        lines += [f"  problem: {p}" for p in self.problems]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def verify_raw(kind: Kind, path: Path, expected: dict[str, float] | None = None, *, sample: int = 200) -> VerifyReport:
    """Check the layout of the ``kind`` dataset at ``path`` and its counts against ``expected``.

    ``sample``: how many RecordIO records (spread over the file) are read back to check they parse.
    Raises ``ValueError`` for an unknown kind or expectation key; everything about the data is reported.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if expected is not None and (unknown := set(expected) - _COUNT_KEYS - {"tolerance"}):
        raise ValueError(f"unknown expectation keys {sorted(unknown)}; allowed: {sorted(_COUNT_KEYS)} + tolerance")
    report = VerifyReport(kind=kind, path=Path(path), expected=expected)
    if kind in ("vggface2", "webface"):
        _check_folders(report)
    elif kind == "recordio":
        _check_recordio(report, sample)
    else:
        _check_laion(report)
    if expected and (report.counts or not report.problems):
        _compare_counts(report, expected)
    return report


def _examples(names: list[str]) -> str:
    return ", ".join(sorted(names)[:_SHOWN]) + (", ..." if len(names) > _SHOWN else "")


def _compare_counts(report: VerifyReport, expected: dict[str, float]) -> None:
    tolerance = float(expected.get("tolerance", 0.0))
    for key in sorted(set(expected) & _COUNT_KEYS):
        want, got = int(expected[key]), report.counts.get(key, 0)
        if abs(got - want) > tolerance * want:
            off = f"{(got - want) / want:+.2%}" if want else "n/a"
            allowed = f", tolerance {tolerance:.1%}" if tolerance else ""
            report.problems.append(f"{key}: found {got:,}, expected {want:,} ({off}{allowed})")


def _check_folders(report: VerifyReport) -> None:
    root = report.path
    if not root.is_dir():
        report.problems.append(f"{root} is not a folder (expected <root>/<identity>/<image>)")
        return
    entries = [e for e in os.scandir(root) if not e.name.startswith(".")]
    folders = sorted(e.name for e in entries if e.is_dir())
    if stray := [e.name for e in entries if e.is_file() and os.path.splitext(e.name)[1].lower() in _IMAGE_EXTENSIONS]:
        report.problems.append(
            f"{len(stray)} image file(s) directly under the root ({_examples(stray)}): images belong in <identity>/"
        )
    splits = [s for s in ("train", "test") if s in folders]
    if splits and report.kind == "vggface2":
        report.problems.append(
            f"{root} holds {'/'.join(splits)}/ folders: point at {root / splits[0]} (one split) instead"
        )
        return
    if report.kind == "vggface2" and (odd := [f for f in folders if not _VGGFACE2_ID.fullmatch(f)]):
        report.problems.append(f"{len(odd)} folder(s) not named like VGGFace2 identities nNNNNNN: {_examples(odd)}")
    images, empty, other_files, nested = 0, [], 0, 0
    for identity in folders:
        found = 0
        for entry in os.scandir(root / identity):
            if entry.is_dir():
                nested += 1
            elif os.path.splitext(entry.name)[1].lower() in _IMAGE_EXTENSIONS:
                found += 1
            else:
                other_files += 1
        images += found
        if not found:
            empty.append(identity)
    report.counts = {"identities": len(folders), "images": images}
    if not folders:
        report.problems.append(f"no identity folders under {root}")
    if empty:
        report.problems.append(f"{len(empty)} identity folder(s) hold no image: {_examples(empty)}")
    if nested:
        report.notes.append(f"{nested} nested folder(s) inside identity folders: their files are rejected")
    if other_files:
        report.notes.append(
            f"{other_files} file(s) without an image extension inside identity folders (read if they hold an image)"
        )


def _check_recordio(report: VerifyReport, sample: int) -> None:
    from facekit.data.sources.recordio import RecordIOSource

    rec = report.path / "train.rec" if report.path.is_dir() else report.path
    missing = [p.name for p in (rec, rec.with_suffix(".idx"), rec.parent / "property") if not p.is_file()]
    if missing:
        report.problems.append(
            f"missing {', '.join(missing)} in {rec.parent} (expected train.rec, train.idx, property)"
        )
        return
    prop = (rec.parent / "property").read_text().strip()
    match = re.fullmatch(r"(\d+),(\d+),(\d+)", prop)  # a malformed one is reported by RecordIOSource
    try:
        source = RecordIOSource(rec, name="verify")
    except SourceFormatError as e:
        report.problems.append(f"{e.reason}: {e.detail}")
        return
    num_classes = len(source.identities())
    report.counts = {"identities": num_classes, "images": len(source)}
    if match:
        report.notes.append(f"images are {match[2]}x{match[3]} according to property")
    if source.header_range and match and source.header_range[1] - source.header_range[0] != int(match[1]):
        report.problems.append(
            f"property says {match[1]} identities, the header record's range {source.header_range} holds "
            f"{source.header_range[1] - source.header_range[0]}"
        )
    keys = source.keys()
    n = min(sample, len(keys))
    picked = sorted({keys[i * (len(keys) - 1) // max(n - 1, 1)] for i in range(n)})  # evenly, first and last
    failures: Counter[str] = Counter()
    for key in picked:
        try:
            record = source.read(key)
        except SourceError as e:
            failures[e.reason] += 1
            continue
        if not 0 <= record.identity < num_classes:
            failures["label_out_of_range"] += 1
    source.close()
    if failures:
        report.problems.append(
            f"{sum(failures.values())} of {len(picked)} sampled records are bad: {dict(sorted(failures.items()))}"
        )


def _check_laion(report: VerifyReport) -> None:
    from facekit.data.sources.laion import LaionTarSource

    folder = report.path
    if not folder.is_dir():
        report.problems.append(f"{folder} is not a folder of tar shards")
        return
    names = sorted(p.name for p in folder.iterdir())
    tars = [n for n in names if n.endswith(".tar")]
    if not tars:
        report.problems.append(f"no .tar shards in {folder}")
        return
    if odd := [n for n in tars if not _TAR_NAME.fullmatch(n)]:
        report.problems.append(f"{len(odd)} tar(s) not named like img2dataset shards (00000.tar): {_examples(odd)}")
    numbers = sorted(int(n[:-4]) for n in tars if _TAR_NAME.fullmatch(n))
    if numbers and (gaps := sorted(set(range(numbers[0], numbers[-1] + 1)) - set(numbers))):
        report.problems.append(f"{len(gaps)} shard(s) missing from the numbering: {_examples([str(g) for g in gaps])}")
    if unfinished := [n for n in names if n.endswith((".parts", ".partial"))]:
        report.problems.append(f"unfinished download ({_examples(unfinished)}): re-run the download stage")
    try:
        source = LaionTarSource(folder, name="verify")
    except SourceFormatError as e:
        report.problems.append(f"{e.reason}: {e.detail}")
        return
    broken = source.member_problems()
    per_tar = Counter(key.split("/")[1] for key in source.keys() if key not in broken)
    report.counts = {"tars": len(tars), "images": sum(per_tar.values()), "broken": len(broken)}
    if broken:
        report.problems.append(f"{len(broken)} unusable member(s): {dict(sorted(Counter(broken.values()).items()))}")
    no_stats = []
    for tar in tars:
        stem = tar[:-4]
        stats_path = folder / f"{stem}_stats.json"
        if not stats_path.is_file():
            no_stats.append(stem)
            continue
        stats: dict[str, Any] = json.loads(stats_path.read_text())
        if stats.get("successes") is not None and stats["successes"] != per_tar[stem]:
            report.problems.append(f"{tar}: {per_tar[stem]} image(s), its stats file says {stats['successes']}")
    if no_stats:
        report.notes.append(f"{len(no_stats)} tar(s) without a <shard>_stats.json: {_examples(no_stats)}")
