"""The training benchmarks run end to end on the CPU with tiny settings and print what benchmarks/README.md
says: a row per method, profiles, and a last line that is the table's own figure. Speeds are never asserted."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parents[1]


def run(script: str, *args: str) -> list[str]:
    env = {**os.environ, "PYTHONPATH": str(PROJECT), "OMP_NUM_THREADS": "2"}
    done = subprocess.run(
        [sys.executable, f"benchmarks/{script}", *args],
        cwd=PROJECT, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.splitlines()


def test_train_times_the_engine_step_profiles_it_and_ends_with_the_mae_mfu(tmp_path: Path) -> None:
    args = ("--methods", "mae,fra", "--batch", "2", "--steps", "1", "--fused", "--channels-last")
    lines = run("train.py", *args, "--profile", str(tmp_path))
    assert "fused optimizer True, channels-last True" in lines[0]
    rows = {line.split()[0]: line.split() for line in lines if re.match(r"(mae|fra) ", line) and line.endswith("%")}
    assert set(rows) == {"mae", "fra"}, lines
    assert rows["fra"][1:3] == ["resnet50", "(own)"]
    mae_mfu = float(rows["mae"][-1].rstrip("%")) / 100
    assert re.fullmatch(r"speedup=\d+\.\d\d goal=0\.45", lines[-1])
    assert abs(float(lines[-1].split()[0].removeprefix("speedup=")) - mae_mfu) <= 0.006
    for name in ("mae_ViT-S16", "fra_resnet50own"):
        assert (tmp_path / f"{name}.txt").read_text().count("aten::") >= 5
        assert (tmp_path / f"{name}.trace.json").stat().st_size > 1000
    phases = [line for line in lines if line.startswith("profile ")]
    assert len(phases) == 2 and all("forward" in p and "backward" in p and "update" in p for p in phases)
    kinds = [line for line in lines if "op time by kind:" in line]
    shares = [int(s) for s in re.findall(r" (\d+)%", kinds[0])]
    assert "matmul" in kinds[0] and 97 <= sum(shares) <= 103, kinds
    assert re.search(r"convolution \d+%", kinds[1]) and kinds[1].index("convolution") < kinds[1].index("norm")


def test_train_loader_puts_the_loader_rate_next_to_the_synthetic_one(sample_shards: Path) -> None:
    args = ("--methods", "mae,dino", "--batch", "2", "--steps", "2", "--warmup", "1", "--workers", "1")
    lines = run("train_loader.py", *args, "--shards", str(sample_shards))
    assert "1 workers" in lines[0] and "photometric on the workers" in lines[0]
    table = lines[lines.index(next(line for line in lines if line.startswith("method"))) + 1 : -1]
    ratios = []
    for name, line in zip(("mae", "dino"), table, strict=True):
        fields = line.split()
        synthetic, loaded, ratio, alone, per_worker = (float(f.replace(",", "")) for f in fields[2:7])
        assert fields[0] == name and synthetic > 0 and loaded > 0 and alone == pytest.approx(per_worker, rel=0.01)
        assert abs(ratio - loaded / synthetic) <= 0.01 + 0.01 * ratio
        ratios.append(ratio)
    assert lines[-1] == f"speedup={min(ratios):.2f} goal=0.95"
