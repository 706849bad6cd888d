"""Stage reports: what a stage read, wrote and rejected (with a reason for each rejection).

A report is written as a DVC metrics file (``<name>.json``: counts and counts per reason) plus a
``<name>.rejections.jsonl``: a first line with the stage's counts (``{"stage", "read", "written", "rejected"}``,
so the file is never empty: DVC warns on an empty output), then one line per rejected key
(``{"key", "reason", "detail"}``). ``read == written + rejected`` always; :meth:`StageReport.check` raises if
a stage ever breaks that. A stage that resumes stores each work shard's report in the shard itself
(:meth:`StageReport.to_json`), so a shard and its counts are never out of step.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from facekit.data.faults import fault_point
from facekit.data.record import Rejection


@dataclass
class StageReport:
    """Counts of one stage (or one shard of it)."""

    stage: str
    read: int = 0
    written: int = 0
    rejections: list[Rejection] = field(default_factory=list)
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def rejected(self) -> int:
        return len(self.rejections)

    def reject(self, key: str, reason: str, detail: str = "") -> None:
        self.rejections.append(Rejection(key, reason, detail))

    def by_reason(self) -> dict[str, int]:
        return dict(sorted(Counter(r.reason for r in self.rejections).items()))

    def check(self) -> StageReport:
        """Raise if the counts do not reconcile (read = written + rejected)."""
        if self.read != self.written + self.rejected:
            raise RuntimeError(
                f"{self.stage}: counts do not reconcile: read {self.read} != "
                f"written {self.written} + rejected {self.rejected}"
            )
        return self

    def merge(self, other: StageReport) -> StageReport:
        """Add ``other``'s counts to this report (used to combine per-shard reports)."""
        self.read += other.read
        self.written += other.written
        self.rejections.extend(other.rejections)
        for k, v in other.extra.items():
            self.extra[k] = self.extra.get(k, 0) + v
        return self

    def summary(self) -> str:
        """One line for the end of a run."""
        reasons = ", ".join(f"{k}={v}" for k, v in self.by_reason().items())
        return f"{self.stage}: read {self.read}, written {self.written}, rejected {self.rejected}" + (
            f" ({reasons})" if reasons else ""
        )

    def to_dict(self) -> dict:
        return {
            "stage": self.stage,
            "read": self.read,
            "written": self.written,
            "rejected": self.rejected,
            "rejected_by_reason": self.by_reason(),
            **self.extra,
        }

    def write(self, path: Path) -> None:
        """Write ``path`` (metrics JSON) and ``path.with_suffix('.rejections.jsonl')``, each replaced
        atomically (rejections first): a killed writer leaves each file whole, old or new."""
        self.check()
        path.parent.mkdir(parents=True, exist_ok=True)
        counts = {"stage": self.stage, "read": self.read, "written": self.written, "rejected": self.rejected}
        lines = [json.dumps(counts)] + [
            json.dumps({"key": r.key, "reason": r.reason, "detail": r.detail})
            for r in sorted(self.rejections, key=lambda r: r.key)
        ]
        _replace(path.with_suffix(".rejections.jsonl"), "".join(line + "\n" for line in lines))
        fault_point("report_rejections_written")
        _replace(path, json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")
        fault_point("report_written")

    @classmethod
    def load(cls, path: Path) -> StageReport:
        """The report :meth:`write` wrote to ``path`` (its extra is not read back)."""
        d = json.loads(path.read_text())
        rep = cls(stage=d["stage"], read=d["read"], written=d["written"])
        for line in path.with_suffix(".rejections.jsonl").read_text().splitlines()[1:]:  # after the counts
            r = json.loads(line)
            rep.reject(r["key"], r["reason"], r["detail"])
        return rep

    def to_json(self) -> dict:
        """Everything, rejections in order and ``extra`` apart: what a shard stores of its stage's report."""
        return {
            "stage": self.stage,
            "read": self.read,
            "written": self.written,
            "rejections": [[r.key, r.reason, r.detail] for r in self.rejections],
            "extra": self.extra,
        }

    @classmethod
    def from_json(cls, d: dict) -> StageReport:
        """The report :meth:`to_json` gave."""
        rejections = [Rejection(key, reason, detail) for key, reason, detail in d["rejections"]]
        return cls(d["stage"], d["read"], d["written"], rejections, dict(d["extra"])).check()


def withdraw_report(path: Path) -> None:
    """Remove the report at ``path`` (the metrics JSON, then its rejections). A stage calls this before it
    changes its outputs, so a report on disk always describes outputs of a run that completed."""
    for file in (path, path.with_suffix(".rejections.jsonl")):
        file.unlink(missing_ok=True)


def _replace(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file renamed over it."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
