"""Training images/s with the real input pipeline, next to the synthetic-batch rate of the same engine step.

For each method (and the device's main configuration, as ``benchmarks/train.py``), measured in turn in one run:

- synthetic: the engine's :class:`~facekit.train.step.TrainStep` on one batch of the method's views kept on the
  device (``benchmarks/train.py``'s figure);
- loader: the same step fed by the engine's own DataLoader (:func:`facekit.train.loop.training_loader`:
  ``FaceShardDataset(shards, transform=method.views())``, per-sample seeded augmentation, ``--workers``
  processes, pinned memory on CUDA), each batch copied to the device inside the step. The faces are the real
  packed faces of ``--shards`` (default: the sample lineage's ``data/shards``), repeated into a temporary
  shard set of ``--count`` records.

Both rates are images over the wall time of ``--steps`` steps after ``--warmup`` (CUDA synchronised at both
ends), so waiting for the loader counts. A third column, ``loader alone``, is the loader's capacity: batches
taken as fast as it makes them, nothing training (and ``per worker``: divided by ``--workers``), which says how
many CPU cores a training rate needs. Multi-crop methods take ``--photometric`` (default: the device path on
CUDA). Ends with ``speedup=<lowest loader / synthetic ratio> goal=0.95``.

    python benchmarks/train_loader.py [--shards data/shards] [--methods mae,dino] [--device cuda --dtype bf16]
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import itertools
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from train import (  # benchmarks/train.py
    NUM_CLASSES,
    BackboneConfig,
    build_method,
    engine_step,
    parse_args,
    plan,
    rate_text,
    step_values,
    synthetic_batch,
)

from facekit.data.dataset import FaceShardDataset
from facekit.data.shards import ShardReader, ShardSetWriter, read_index, write_index
from facekit.train.loop import training_loader
from facekit.train.samplers import EpochSampler
from facekit.train.step import TrainStep, to_device

GOAL = 0.95


def repeated_shards(shards: Path, count: int, out: Path) -> Path:
    """A shard set of ``count`` records cycling through the faces of ``shards`` (identities modulo
    ``NUM_CLASSES``, so every method's classifier covers them)."""
    faces = [r for e in read_index(shards)["shards"] for r in ShardReader(shards / e["name"])]
    if not faces:
        raise SystemExit(f"--shards {shards}: no records")
    names = [f"id{i}" for i in range(NUM_CLASSES)]
    writer = ShardSetWriter(out, "part", max_shard_bytes=1 << 30, meta={"identities": names})
    for i, face in zip(range(count), itertools.cycle(faces)):
        writer.put(face.replace(key=f"bench/{i:08d}", identity=face.identity % NUM_CLASSES))
    write_index(out, writer.close(), identities=names, params_hash="bench")
    return out


def rate(step: TrainStep, batches: Iterator[Any], hp: Any, warmup: int, steps: int, device: torch.device) -> float:
    """Images/s over ``steps`` engine steps after ``warmup`` more, wall clock, the log window drained every
    ``log_every`` steps as the loop does."""

    def run(first: int, n: int) -> None:
        for i in range(first, first + n):
            step([next(batches)], dataclasses.replace(hp, step=i))
            if (i + 1) % step.cfg.log_every == 0:
                step.drain()

    run(0, warmup)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    run(warmup, steps)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return steps * step.cfg.batch_size / (time.perf_counter() - start)


def measure(
    name: str, config: BackboneConfig, args: argparse.Namespace, shards: Path, device: torch.device
) -> tuple[float, float, float]:
    """(synthetic, loader, loader alone) images/s of ``name``; the first two with a freshly built method and
    engine step each, the last the loader's own rate with nothing consuming its batches (its capacity)."""
    hp_total = args.warmup + args.steps + 1
    torch.manual_seed(0)
    method = build_method(name, config, args).to(device).train()
    batch = to_device(synthetic_batch(method.views(), args.batch, NUM_CLASSES), device)
    synthetic = rate(engine_step(method, args, device), itertools.repeat(batch), step_values(method, hp_total),
                     args.warmup, args.steps, device)  # fmt: skip
    del method, batch
    torch.manual_seed(0)
    method = build_method(name, config, args).to(device).train()
    dataset = FaceShardDataset(shards, transform=method.views())
    step = engine_step(method, args, device)
    sampler = EpochSampler(len(dataset), seed=0)
    loader = training_loader(dataset, sampler, dataclasses.replace(step.cfg, num_workers=args.workers), device)
    batches = (b for epoch in itertools.count() for b in _epoch(loader, sampler, epoch))
    loaded = rate(step, batches, step_values(method, hp_total), args.warmup, args.steps, device)
    for _ in range(2 * args.workers):  # the workers' queues drained: the count below is made now
        next(batches)
    start, count = time.perf_counter(), max(args.steps, 4 * args.workers)
    for _ in range(count):
        next(batches)
    alone = count * args.batch / (time.perf_counter() - start)
    return synthetic, loaded, alone


def _epoch(loader: Any, sampler: EpochSampler, epoch: int) -> Iterator[Any]:
    sampler.set_epoch(epoch)
    yield from loader


def main() -> None:
    args = parse_args(
        [
            (
                ("--shards",),
                {"type": Path, "default": Path("data/shards"), "help": "packed shards whose faces feed the loader"},
            ),
            (("--workers",), {"type": int, "default": len(os.sched_getaffinity(0)), "help": "DataLoader workers"}),
            (("--count",), {"type": int, "default": None, "help": "records in the benchmark set"}),
        ],
        description=__doc__.splitlines()[0],
    )
    device = torch.device(args.device)
    count = args.count or (args.warmup + args.steps + 4) * args.batch
    print(
        f"torch {torch.__version__}, device {device}, dtype {args.dtype}, compile {args.compile}, "
        f"{args.workers} workers, multi-crop photometric on the {args.photometric}, batch {args.batch}"
    )
    lines, ratios = [], []
    with tempfile.TemporaryDirectory() as tmp:
        shards = repeated_shards(args.shards, count, Path(tmp) / "shards")
        for name, config in plan(args):
            try:
                synthetic, loaded, alone = measure(name, config, args, shards, device)
                ratios.append(loaded / synthetic)
                lines.append(
                    f"{name:<12} {config.label:<14} {rate_text(synthetic):>11} {rate_text(loaded):>11} "
                    f"{loaded / synthetic:>6.2f} {rate_text(alone):>13} {rate_text(alone / args.workers):>11}"
                )
                print(f"measured {lines[-1]}", flush=True)
            except Exception as e:  # every method gets a line
                lines.append(f"{name:<12} {config.label:<14} ERROR {type(e).__name__}: {str(e).splitlines()[0][:200]}")
            finally:
                gc.collect()
                if device.type == "cuda":
                    torch.cuda.empty_cache()
    print(
        f"{'method':<12} {'config':<14} {'synthetic':>11} {'loader':>11} {'ratio':>6} {'loader alone':>13} "
        f"{'per worker':>11}   (images/s)"
    )
    print("\n".join(lines))
    print(f"speedup={min(ratios) if ratios else 0.0:.2f} goal={GOAL}")


if __name__ == "__main__":
    main()
