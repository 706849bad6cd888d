"""Packed shards → a Hugging Face dataset folder (Parquet, images embedded), read back, and pushed.

The folder is what goes to the Hub, file for file::

    <export>/README.md                             dataset card (see facekit.hub.cards)
    <export>/data/train-00000-of-0000N.parquet     the records, in shard-index order

Each row is one :class:`~facekit.data.record.FaceRecord`: the JPEG bytes are stored as they are in the
shards (``Image`` features holding bytes, never paths, so the Parquet files are self-contained and no
image is re-encoded), ``identity`` is a ``ClassLabel`` over the index's identity names (-1 = unlabelled),
and the arrays keep their dtypes (landmarks float32 [5, 2], dense landmarks float16 [468, 2]). Exporting
and importing give records equal to the shards', field for field.

Files are written like ``Dataset.push_to_hub`` writes them (Parquet shards of at most ~500 MB, 100 rows
per row group for image data), so the Hub's viewer and ``load_dataset(repo_id)`` read them as usual.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import datasets
import numpy as np
from datasets import Array2D, ClassLabel, Features, Image, List, Value
from huggingface_hub import HfApi

from facekit.data.ops.landmarks import DENSE_KEY
from facekit.data.record import FaceRecord
from facekit.data.shards import ShardReader, read_index
from facekit.hub.tokens import push_folder

DATA_DIR = "data"
CARD_NAME = "README.md"
SPLIT = "train"
#: What an upload sends; remote Parquet files of an earlier upload that are not re-sent are deleted.
UPLOAD_PATTERNS = (CARD_NAME, f"{DATA_DIR}/*.parquet")
DELETE_PATTERNS = (f"{DATA_DIR}/*.parquet",)
MAX_FILE_BYTES = 500 * 2**20
DENSE_SHAPE = (468, 2)
IMAGE_COLUMNS = ("image", "masked_image")


def dataset_features(identities: list[str]) -> Features:
    """The typed columns of an exported dataset; ``identities`` names the ``ClassLabel`` values."""
    return Features(
        {
            "key": Value("string"),
            "image": Image(),
            "masked_image": Image(),
            "identity": ClassLabel(names=list(identities)),
            "landmarks": Array2D((5, 2), "float32"),
            DENSE_KEY: Array2D(DENSE_SHAPE, "float16"),
            "bbox": List(Value("float32"), length=4),
            "det_score": Value("float64"),
            "num_faces": Value("int32"),
            "mask": Value("string"),
            "source": Value("string"),
            "source_sha256": Value("string"),
        }
    )


def record_row(record: FaceRecord) -> dict[str, Any]:
    """One dataset row from a record; raises ValueError (naming the key) for what a row cannot hold."""
    unknown = sorted(set(record.extra) - {DENSE_KEY})
    if unknown:
        raise ValueError(f"record {record.key}: extra field(s) {unknown} have no column in the exported dataset")
    dense = record.extra.get(DENSE_KEY)
    if dense is not None and (dense.shape != DENSE_SHAPE or dense.dtype != np.float16):
        raise ValueError(
            f"record {record.key}: {DENSE_KEY} is {dense.dtype} {list(dense.shape)}, "
            f"expected float16 {list(DENSE_SHAPE)}"
        )
    if record.landmarks.shape != (5, 2) or record.bbox.shape != (4,):
        raise ValueError(
            f"record {record.key}: landmarks {list(record.landmarks.shape)} / bbox {list(record.bbox.shape)}, "
            "expected [5, 2] / [4]"
        )
    return {
        "key": record.key,
        "image": {"bytes": record.image, "path": None},
        "masked_image": None if record.masked_image is None else {"bytes": record.masked_image, "path": None},
        "identity": record.identity,
        "landmarks": record.landmarks.astype(np.float32),
        DENSE_KEY: dense,
        "bbox": record.bbox.astype(np.float32),
        "det_score": record.det_score,
        "num_faces": record.num_faces,
        "mask": record.mask,
        "source": record.source,
        "source_sha256": record.source_sha256,
    }


def row_record(row: dict[str, Any]) -> FaceRecord:
    """The record of a row read with undecoded images (``Image(decode=False)``); inverse of :func:`record_row`."""
    dense = row[DENSE_KEY]
    masked = row["masked_image"]
    return FaceRecord(
        key=row["key"],
        image=row["image"]["bytes"],
        identity=int(row["identity"]),
        landmarks=np.asarray(row["landmarks"], dtype=np.float32),
        bbox=np.asarray(row["bbox"], dtype=np.float32),
        det_score=float(row["det_score"]),
        num_faces=int(row["num_faces"]),
        source=row["source"],
        source_sha256=row["source_sha256"],
        mask=row["mask"],
        masked_image=None if masked is None else masked["bytes"],
        extra={} if dense is None else {DENSE_KEY: np.asarray(dense, dtype=np.float16)},
    )


def _rows(shards_dir: str, shard_names: list[str], content_hash: str) -> Iterator[dict[str, Any]]:
    """Rows of every shard in index order (``content_hash`` only keys the ``datasets`` cache)."""
    for name in shard_names:
        reader = ShardReader(Path(shards_dir) / name)
        try:
            yield from (record_row(record) for record in reader)
        finally:
            reader.close()


def _check_replaceable(out_dir: Path) -> None:
    """Refuse to replace a folder that holds anything but an earlier export (a wrong ``--export`` path)."""
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise ValueError(f"{out_dir}: export path exists and is not a folder")
    foreign = sorted(p.name for p in out_dir.iterdir() if p.name not in {CARD_NAME, DATA_DIR})
    if foreign:
        raise ValueError(f"{out_dir}: not an earlier export (holds {foreign[:5]}); choose an empty or new folder")


def export_dataset(
    shards_dir: Path,
    out_dir: Path,
    *,
    max_file_bytes: int = MAX_FILE_BYTES,
    cache_dir: Path | None = None,
) -> datasets.Dataset:
    """Write every record of the packed shards (``index.json``) as Parquet under ``out_dir/data/``.

    ``out_dir`` is replaced as a whole (built beside it, then renamed), so an earlier, larger export leaves
    no stale files; it must be new or hold only an earlier export. Returns the dataset, backed by the
    ``datasets`` Arrow cache in ``cache_dir`` (default: the ``datasets`` cache), keyed by the shard set's
    content hash. Bad shards raise :class:`~facekit.data.shards.ShardError`, unexportable records ValueError.
    """
    shards_dir, out_dir = Path(shards_dir), Path(out_dir)
    if max_file_bytes <= 0:
        raise ValueError(f"max_file_bytes must be positive, got {max_file_bytes}")
    _check_replaceable(out_dir)
    index = read_index(shards_dir)
    dataset = datasets.Dataset.from_generator(
        _rows,
        features=dataset_features(index["identities"]),
        gen_kwargs={
            "shards_dir": str(shards_dir.resolve()),
            "shard_names": [entry["name"] for entry in index["shards"]],
            "content_hash": index["content_hash"],
        },
        cache_dir=str(cache_dir) if cache_dir else None,
        split=SPLIT,
    )
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / DATA_DIR).mkdir(parents=True)
    num_files = max(1, min(dataset.num_rows, math.ceil(dataset.data.nbytes / max_file_bytes)))
    for i in range(num_files):
        part = dataset.shard(num_files, i, contiguous=True)
        part.to_parquet(str(tmp / DATA_DIR / f"{SPLIT}-{i:05d}-of-{num_files:05d}.parquet"))
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)
    return dataset


def parquet_files(export_dir: Path) -> list[Path]:
    """The Parquet files of an export folder, in order; FileNotFoundError when there are none."""
    files = sorted((Path(export_dir) / DATA_DIR).glob("*.parquet"))
    if not files:
        raise FileNotFoundError(f"{export_dir}: no {DATA_DIR}/*.parquet here; run export_dataset first")
    return files


def import_dataset(export_dir: Path) -> Iterator[FaceRecord]:
    """Stream the records of an export folder (or a local copy of the Hub repo) back, in order.

    Read with ``load_dataset(folder, streaming=True)``, as a user of the Hub repo would (the card's
    ``configs`` name the files), with images left undecoded: the bytes come back as they were exported.
    """
    export_dir = Path(export_dir)
    parquet_files(export_dir)
    stream = datasets.load_dataset(str(export_dir), split=SPLIT, streaming=True)
    missing = sorted(set(dataset_features([])) - set(stream.features or {}))
    if missing:
        raise ValueError(f"{export_dir}: not a facekit export, column(s) {missing} missing")
    for column in IMAGE_COLUMNS:
        stream = stream.cast_column(column, Image(decode=False))
    return (row_record(row) for row in stream)


def upload_plan(export_dir: Path) -> list[tuple[str, int]]:
    """(path in the repo, bytes) of every file an upload of ``export_dir`` sends, card first."""
    export_dir = Path(export_dir)
    card = export_dir / CARD_NAME
    if not card.is_file():
        raise FileNotFoundError(f"{card}: no dataset card; write it (facekit.hub.cards) before uploading")
    files = [card, *parquet_files(export_dir)]
    return [(f.relative_to(export_dir).as_posix(), f.stat().st_size) for f in files]


def push_dataset(
    export_dir: Path,
    repo_id: str,
    *,
    private: bool = True,
    api: HfApi | None = None,
    token: str | None = None,
) -> str:
    """Create the dataset repo ``repo_id`` if missing and upload the export folder in one commit.

    Sends exactly :func:`upload_plan`'s files and deletes remote ``data/*.parquet`` files not sent now.
    The token is the caller's or huggingface_hub's lookup (``HF_TOKEN``, the stored login); failures raise
    a redacted :class:`~facekit.hub.tokens.HubError`. Returns the repo URL.
    """
    export_dir = Path(export_dir)
    plan = upload_plan(export_dir)
    return push_folder(
        export_dir,
        repo_id,
        repo_type="dataset",
        private=private,
        allow_patterns=UPLOAD_PATTERNS,
        delete_patterns=DELETE_PATTERNS,
        commit_message=f"facekit: {len(plan) - 1} Parquet file(s) and the dataset card",
        api=api,
        token=token,
    )
