"""Images/s from facekit's LMDB shards through a DataLoader vs torchvision ImageFolder and the decode limit.

The crops are the sample's aligned faces (``data/shards`` from ``dvc repro``, or built here from the
shared photos), repeated to ``--count`` records. Three figures, measured in the same run:

- facekit: ``face_loader`` (whole batches decoded into one uint8 tensor, random flip), 2 workers; the
  per-sample ``FaceShardDataset`` + collate path is printed for context;
- baseline: torchvision ``ImageFolder`` over the same JPEG crops saved as files (PIL decode,
  ``RandomHorizontalFlip``, ``PILToTensor``), the same DataLoader settings;
- decode limit: simplejpeg decode-only, run in as many processes as there are workers, at once.

face_loader, ImageFolder and the decode limit are measured in turn, ``--rounds`` times, and each keeps its
best round (a decode round decodes as many images as an epoch holds), so a busy moment of a shared
machine hits all three alike.

    FACEKIT_ASSETS=... python benchmarks/loader.py [--shards data/shards] [--count 20000] [--rounds 5]

Ends with ``speedup=<facekit / ImageFolder> goal=2`` (and prints the share of the decode limit; goal 60%).
"""

from __future__ import annotations

import argparse
import multiprocessing
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

from facekit.data.dataset import FaceShardDataset
from facekit.data.images import decode_jpeg_rgb
from facekit.data.loader import face_loader
from facekit.data.record import FaceRecord
from facekit.data.shards import ShardReader, ShardSetWriter, read_index, write_index

GOAL, DECODE_GOAL = 2.0, 0.6


def flip_to_tensor(rgb: np.ndarray) -> torch.Tensor:
    """Random horizontal flip, then ``[3, H, W]`` uint8 (normalisation belongs on the accelerator)."""
    if np.random.random() < 0.5:
        rgb = rgb[:, ::-1]
    return torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))


def source_records(shards: Path | None) -> list[FaceRecord]:
    """The sample's packed faces, or freshly aligned ones when no shards are given."""
    if shards is None:
        from facekit.assets import assets_root
        from facekit.config import Params, SampleParams, SourceParams
        from facekit.stages.detect_align import run_detect_align
        from facekit.stages.pack import run_pack
        from facekit.stages.sample import run_sample

        tmp = Path(tempfile.mkdtemp())
        params = Params(sample=SampleParams(out=str(tmp / "raw")), source=SourceParams(path=str(tmp / "raw")))
        run_sample(params.sample, assets_root())
        run_detect_align(params, tmp / "aligned", progress=False)
        run_pack(params, tmp / "aligned", tmp / "shards", progress=False)
        shards = tmp / "shards"
    return [r for e in read_index(shards)["shards"] for r in ShardReader(shards / e["name"])]


def decode_rate(blobs: list[bytes]) -> float:
    """JPEG decode-only images/s of this process."""
    start = time.perf_counter()
    for b in blobs:
        decode_jpeg_rgb(b)
    return len(blobs) / (time.perf_counter() - start)


def images_per_second(loader: DataLoader, epochs: int = 2) -> float:
    """Best of ``epochs`` full passes (the first also warms the page cache)."""
    best = 0.0
    for _ in range(epochs):
        start, n = time.perf_counter(), 0
        for batch in loader:
            n += len(batch["image"] if isinstance(batch, dict) else batch[0])
        best = max(best, n / (time.perf_counter() - start))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=Path, default=None, help="packed shards to take crops from")
    parser.add_argument("--count", type=int, default=20_000, help="records in the benchmark set")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers")
    parser.add_argument("--batch", type=int, default=256, help="batch size")
    parser.add_argument("--rounds", type=int, default=5, help="measurement rounds (the best one counts)")
    args = parser.parse_args()
    faces = source_records(args.shards)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        writer = ShardSetWriter(root / "lmdb", "part", max_shard_bytes=1 << 30, meta={"identities": ["x"]})
        for i in range(args.count):
            face = faces[i % len(faces)]
            writer.put(face.replace(key=f"bench/{i:08d}", identity=0))
            path = root / "files" / f"{face.identity:03d}" / f"{i:08d}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(face.image)
        write_index(root / "lmdb", writer.close(), identities=["x"], params_hash="bench")

        kw = {"batch_size": args.batch, "num_workers": args.workers, "persistent_workers": True}
        lmdb_ds = FaceShardDataset(root / "lmdb", transform=flip_to_tensor, readahead=True)
        per_sample = images_per_second(DataLoader(lmdb_ds, shuffle=True, **kw))
        fk_loader = face_loader(root / "lmdb", batch_size=args.batch, num_workers=args.workers, readahead=True)
        tf = transforms.Compose([transforms.RandomHorizontalFlip(), transforms.PILToTensor()])
        folder_loader = DataLoader(datasets.ImageFolder(str(root / "files"), transform=tf), shuffle=True, **kw)
        blobs = [f.image for f in faces] * max(1, args.count // args.workers // len(faces))  # a round ~ an epoch
        per_core = decode_rate(blobs)
        fk = base = limit = 0.0
        with multiprocessing.get_context("fork").Pool(args.workers) as pool:
            for _ in range(args.rounds):
                fk = max(fk, images_per_second(fk_loader, epochs=1))
                base = max(base, images_per_second(folder_loader, epochs=1))
                limit = max(limit, sum(pool.map(decode_rate, [blobs] * args.workers)))
    size = np.mean([len(f.image) for f in faces])
    print(f"records: {args.count} crops of {len(faces)} faces (~{size / 1e3:.1f} KB JPEG), batch {args.batch}")
    print(f"baseline torchvision ImageFolder, {args.workers} workers: {base:,.0f} images/s")
    print(f"facekit FaceShardDataset + collate (per sample), {args.workers} workers: {per_sample:,.0f} images/s")
    print(f"facekit face_loader (whole batches from LMDB), {args.workers} workers: {fk:,.0f} images/s")
    print(f"decode limit: simplejpeg decode-only in {args.workers} processes at once: {limit:,.0f} images/s")
    print(f"  (one process alone: {per_core:,.0f} images/s)")
    print(f"share of decode limit: {fk / limit:.0%} (goal {DECODE_GOAL:.0%})")
    print(f"speedup={fk / base:.2f} goal={GOAL}")


if __name__ == "__main__":
    main()
