"""The whole-batch loader: same pixels as per-sample decoding, flips with their landmarks, each face once,
batches the trainer keeps never overwritten by later ones."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import simplejpeg

from facekit.data.dataset import FaceShardDataset
from facekit.data.loader import FaceBatches, face_loader
from facekit.data.record import FaceRecord
from facekit.data.shards import ShardError, ShardSetWriter, ShardWriter, write_index


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory, assets: Path) -> Path:
    """Three small shards of 40 real 112×112 crops (two identities)."""
    out = tmp_path_factory.mktemp("loader")
    photos = sorted((assets / "faces/deepface").glob("img*.jpg"))[:40]
    writer = ShardSetWriter(out, "part", max_shard_bytes=60_000, meta={"identities": ["a", "b"]})
    for i, photo in enumerate(photos):
        rgb = simplejpeg.decode_jpeg(photo.read_bytes(), colorspace="RGB", min_width=112, min_height=112)
        crop = np.ascontiguousarray(rgb[:112, :112])
        landmarks = np.array([[38, 52], [74, 52], [56, 72], [42, 92], [70, 92]], np.float32) + i % 3
        writer.put(
            FaceRecord(
                key=f"t/{i:03d}",
                image=simplejpeg.encode_jpeg(crop, quality=90, colorspace="RGB"),
                identity=i % 2,
                landmarks=landmarks,
                bbox=np.zeros(4, np.float32),
                det_score=1.0,
                num_faces=1,
                source="t",
                source_sha256=f"{i:064x}",
            )
        )
    infos = writer.close()
    assert len(infos) > 1
    write_index(out, infos, identities=["a", "b"], params_hash="test")
    return out


def test_batches_hold_the_same_pixels_as_per_sample_decoding(shards: Path) -> None:
    per_sample = FaceShardDataset(shards, transform=lambda rgb: rgb)
    indices = [0, 7, 13, 39]
    plain = FaceBatches(FaceShardDataset(shards), flip_p=0.0)[indices]
    mirrored = FaceBatches(FaceShardDataset(shards), flip_p=1.0)[indices]
    assert plain["image"].shape == (4, 3, 112, 112) and plain["image"].dtype.is_floating_point is False
    for b, i in enumerate(indices):
        item = per_sample[i]
        np.testing.assert_array_equal(plain["image"][b].permute(1, 2, 0).numpy(), item["image"])
        np.testing.assert_array_equal(mirrored["image"][b].permute(1, 2, 0).numpy(), item["image"][:, ::-1])
        assert plain["identity"][b] == item["identity"] == i % 2
        lm = item["landmarks"].numpy()
        np.testing.assert_array_equal(plain["landmarks"][b].numpy(), lm)
        np.testing.assert_array_equal(mirrored["landmarks"][b, :, 0].numpy(), 111 - lm[:, 0])
    assert plain["index"].tolist() == indices


def test_an_epoch_with_two_workers_yields_every_face_once(shards: Path) -> None:
    loader = face_loader(shards, batch_size=8, num_workers=2, shuffle=True, drop_last=False, seed=3)
    seen = [i for batch in loader for i in batch["index"].tolist()]
    assert sorted(seen) == list(range(40))
    assert seen != list(range(40))  # shuffled
    again = [i for batch in face_loader(shards, batch_size=8, num_workers=0, seed=3) for i in batch["index"].tolist()]
    assert again == seen[: len(again)]  # the order depends on the seed only


def test_batches_kept_or_dropped_by_the_trainer_hold_their_own_faces(shards: Path) -> None:
    """20 batches through 6 shared buffers: the kept ones must not be reused, the dropped ones must be."""
    want = {i: item["image"] for i, item in enumerate(FaceShardDataset(shards, transform=lambda rgb: rgb))}
    loader = face_loader(shards, batch_size=2, num_workers=2, prefetch_batches=1, flip_p=0.0, drop_last=False)
    ring = loader.dataset._ring
    ring_memory = (ring.images.ctypes.data, ring.images.ctypes.data + ring.images.nbytes)

    def check(batch: dict) -> bool:
        """Every face's pixels; returns whether the batch lies in the shared buffers."""
        for image, i in zip(batch["image"], batch["index"].tolist(), strict=True):
            np.testing.assert_array_equal(image.permute(1, 2, 0).numpy(), want[i])
        return ring_memory[0] <= batch["image"].data_ptr() < ring_memory[1]

    kept = list(loader)  # more batches than buffers: the rest travel in fresh shared memory
    assert sorted(i for batch in kept for i in batch["index"].tolist()) == list(range(40))
    in_ring = [check(batch) for batch in kept]
    assert 0 < sum(in_ring) <= len(ring.taken) < len(kept)
    del kept
    assert all(check(batch) for batch in loader)  # dropped at once: every batch reuses a buffer


def test_a_face_of_another_size_than_its_batch_is_refused(tmp_path: Path) -> None:
    def record(i: int, size: int) -> FaceRecord:
        jpeg = simplejpeg.encode_jpeg(np.full((size, size, 3), 128, np.uint8), quality=90, colorspace="RGB")
        lm = np.zeros((5, 2), np.float32)
        return FaceRecord(f"t/{i}", jpeg, 0, lm, np.zeros(4, np.float32), 1.0, 1, "t", f"{i:064x}")

    with ShardWriter(tmp_path / "mixed.lmdb") as writer:
        for i, size in enumerate((112, 112, 96)):
            writer.put(record(i, size))
    batches = FaceBatches(FaceShardDataset(tmp_path / "mixed.lmdb"))
    assert batches[[0, 1]]["image"].shape == (2, 3, 112, 112)
    with pytest.raises(ShardError, match="record 2: a 96x96 face in a batch of 112x112"):
        batches[[0, 2]]
