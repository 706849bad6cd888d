"""Training metrics for DVC: ``train_log.csv`` (``dvc plots``) and ``metrics.json`` (``dvc metrics``), and
the run's speed ``timing.json``.

Only the main process writes; on other ranks the logger is a no-op. The CSV's columns are fixed by the
first row (``step, epoch, loss``, the method's other scalars, ``lr``). Both hold only what the same inputs
reproduce, so a run records the same hashes in ``dvc.lock`` on every machine of a kind; the wall time and
images/s go to ``timing.json``, which ``.dvcignore`` keeps out of the run's hash. When a run
resumes at step ``s``, rows for steps ``>= s`` (logged by the interrupted run after its last checkpoint)
are dropped, so the file reads as one uninterrupted run.
"""

from __future__ import annotations

import csv
import json
import math
import os
import warnings
from pathlib import Path
from typing import Any, TextIO

from facekit import distributed

LOG_NAME = "train_log.csv"
METRICS_NAME = "metrics.json"
TIMING_NAME = "timing.json"


class MetricsLogger:
    """Appends one CSV row per :meth:`log` call; :meth:`write_summary` writes ``metrics.json``."""

    def __init__(self, out_dir: Path, *, resume_step: int = 0) -> None:
        self.out_dir = Path(out_dir)
        self.enabled = distributed.is_main()
        self._columns: list[str] | None = None
        self._file: TextIO | None = None
        self._warned: set[str] = set()
        self.last_row: dict[str, str] = {}  # the last row kept from a resumed log
        if self.enabled:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            self._keep_rows_before(resume_step)

    @property
    def csv_path(self) -> Path:
        return self.out_dir / LOG_NAME

    def log(self, row: dict[str, float]) -> None:
        """Write one row; ``row`` must hold ``step`` first, then any scalars."""
        if not self.enabled:
            return
        if self._columns is None:
            self._columns = list(row)
            self._open(write_header=True)
        for name in row.keys() - set(self._columns) - self._warned:
            warnings.warn(f"{LOG_NAME}: column {name!r} came after the header was written; not logged", stacklevel=2)
            self._warned.add(name)
        assert self._file is not None
        self._file.write(",".join(_format(row.get(c)) for c in self._columns) + "\n")
        self._file.flush()

    def write_summary(self, summary: dict[str, Any], timing: dict[str, float]) -> None:
        """Write ``metrics.json`` and ``timing.json`` atomically (NaN/Inf become null)."""
        if not self.enabled:
            return
        for name, values in ((METRICS_NAME, summary), (TIMING_NAME, timing)):
            clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in values.items()}
            tmp = self.out_dir / f".{name}.tmp"
            tmp.write_text(json.dumps(clean, indent=2) + "\n")
            os.replace(tmp, self.out_dir / name)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def _open(self, *, write_header: bool) -> None:
        self._file = self.csv_path.open("a", newline="")
        if write_header:
            assert self._columns is not None
            self._file.write(",".join(self._columns) + "\n")

    def _keep_rows_before(self, step: int) -> None:
        """Start a new log, or keep the complete rows of an existing one for steps ``< step``."""
        if not self.csv_path.is_file() or step == 0:
            self.csv_path.unlink(missing_ok=True)
            return
        with self.csv_path.open(newline="") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            rows = [r for r in reader if header and len(r) == len(header) and _step_of(r) < step]
        if not header:
            self.csv_path.unlink()
            return
        tmp = self.csv_path.with_name(f".{LOG_NAME}.tmp")
        with tmp.open("w", newline="") as f:
            f.write(",".join(header) + "\n")
            f.writelines(",".join(r) + "\n" for r in rows)
        os.replace(tmp, self.csv_path)
        self.last_row = dict(zip(header, rows[-1], strict=True)) if rows else {}
        self._columns = header
        self._open(write_header=False)


def _step_of(row: list[str]) -> float:
    try:
        return int(row[0])
    except ValueError:  # a line torn by a kill
        return math.inf


def _format(value: float | None) -> str:
    if value is None:
        return ""
    if isinstance(value, int):
        return str(value)
    return repr(float(value))
