"""The ``detect_align`` stage's scheduling: the largest-shard-first order of the process pool."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from facekit.config import Params, ShardingParams, SourceParams
from facekit.stages.detect_align import run_detect_align
from facekit.stages.sharding import shard_of


def test_shards_start_largest_first_and_reports_merge_in_shard_order(tmp_path: Path) -> None:
    """The pool gets the shards by decreasing key count; the merged rejections stay in shard order."""
    raw = tmp_path / "raw"
    for i in range(40):
        (raw / f"id{i % 3}").mkdir(parents=True, exist_ok=True)
        (raw / f"id{i % 3}" / f"{i:03d}.jpg").write_text("not a photo")
    params = Params(source=SourceParams(path=str(raw), name="t"), sharding=ShardingParams(num_shards=5, workers=1))
    sizes = Counter(shard_of(f"t/id{i % 3}/{i:03d}", 5) for i in range(40))
    calls: list[int] = []

    def recording_map(fn: Callable[..., Any], args: Sequence[tuple[Any, ...]]) -> Iterator[Any]:
        for call in args:
            calls.append(call[1])
            yield fn(*call)

    report = run_detect_align(params, tmp_path / "aligned", progress=False, shard_map=recording_map)
    assert sorted(calls) == list(range(5))
    assert [sizes[i] for i in calls] == sorted(sizes.values(), reverse=True)
    assert (report.read, report.rejected) == (40, 40)
    assert [shard_of(r.key, 5) for r in report.rejections] == sorted(shard_of(r.key, 5) for r in report.rejections)
