"""Hugging Face image datasets (``datasets``), read offline, with the original encoded bytes.

``path`` is either a folder written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk`` (it holds
``state.json`` or ``dataset_dict.json``; opened with ``datasets.load_from_disk``) or any other folder, read
with ``load_dataset("imagefolder", data_dir=path)`` (``<split>/<label>/<file>`` or ``<label>/<file>``).
Both loaders are local: nothing is fetched from the Hub (run with ``HF_HUB_OFFLINE=1`` to make sure;
imagefolder writes an Arrow cache under ``cache_dir``, default the ``datasets`` cache).

- bytes: the image column is cast to ``Image(decode=False)``, so ``read`` returns the bytes the dataset
  stores (a saved dataset embeds them) or, when it stores only a path (imagefolder), that file's bytes;
  they are never decoded or re-encoded.
- identities: the names of the label column's ``ClassLabel``; a plain integer label column gives
  ``"0" .. str(max)``; no label column gives no identities and every ``identity`` is -1 (as is a
  ``ClassLabel`` value of -1, the datasets convention for "no label").
- keys: ``"<name>/<split>/<row:09d>"`` in the dataset's row order (a saved dataset's order is fixed;
  imagefolder lists files sorted, so keys are stable while the folder does not change).
- pickling: the dataset is memory-mapped Arrow, so the source pickles cheaply for worker processes.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from facekit.data.record import RawRecord
from facekit.data.sources.base import Source, SourceError, SourceFormatError

_SAVED_MARKERS = ("state.json", "dataset_dict.json")
_KEY_DIGITS = 9


class HFImageSource(Source):
    """One split of a local Hugging Face image dataset (see the module docstring)."""

    def __init__(
        self,
        path: Path,
        name: str,
        split: str = "train",
        image_column: str = "image",
        label_column: str | None = "label",
        cache_dir: Path | None = None,
    ) -> None:
        try:
            import datasets
        except ImportError as e:
            raise SourceFormatError("missing_dependency", "HFImageSource needs `pip install datasets`") from e
        self.path = Path(path)
        self.name = name
        self.split = split
        if not self.path.is_dir():
            raise SourceFormatError("not_a_directory", f"{self.path} is not a directory")
        dataset = _load_split(datasets, self.path, split, cache_dir)
        features = dataset.features
        if not isinstance(features.get(image_column), datasets.Image):
            raise SourceFormatError(
                "bad_column", f"{self.path}: column {image_column!r} is not an Image column (features: {features})"
            )
        columns = [image_column]
        label = features.get(label_column) if label_column else None
        if isinstance(label, datasets.ClassLabel):
            self._identities = list(label.names)
        elif isinstance(label, datasets.Value) and label.dtype.startswith(("int", "uint")):
            top = max((v for v in dataset[label_column] if v is not None), default=-1)
            self._identities = [str(i) for i in range(top + 1)]
        elif label is None:
            self._identities = []
        else:
            raise SourceFormatError("bad_column", f"{self.path}: label column {label_column!r} is {label}")
        if label is not None:
            columns.append(label_column)
        self.image_column, self.label_column = image_column, label_column if label is not None else None
        self._dataset = dataset.select_columns(columns).cast_column(image_column, datasets.Image(decode=False))

    def __len__(self) -> int:
        return len(self._dataset)

    def keys(self) -> list[str]:
        return [f"{self.name}/{self.split}/{i:0{_KEY_DIGITS}d}" for i in range(len(self._dataset))]

    def identities(self) -> list[str]:
        return list(self._identities)

    def read(self, key: str) -> RawRecord:
        """The stored encoded bytes, the label, and ``meta["file"]`` (the stored file name, when known)."""
        row = self._dataset[self._index(key)]
        image: dict[str, Any] = row[self.image_column] or {}
        data, file = image.get("bytes"), image.get("path")
        where = f"{self.path} ({self.split}) row {key.rpartition('/')[2]}"
        if data is None:
            if not file or not os.path.isabs(file):
                raise SourceError("unreadable", f"{where}: neither bytes nor a readable path ({file!r})")
            try:
                data = Path(file).read_bytes()
            except OSError as e:
                raise SourceError("unreadable", f"{where}: {file}: {e.strerror or e}") from e
        if not data:
            raise SourceError("empty_file", f"{where}: 0 bytes")
        label = row[self.label_column] if self.label_column else -1
        identity = -1 if label is None or label < 0 else int(label)
        meta = {"file": file} if file else {}
        return RawRecord(key=key, data=bytes(data), identity=identity, source=self.name, meta=meta)

    def _index(self, key: str) -> int:
        prefix, _, digits = key.rpartition("/")
        if prefix != f"{self.name}/{self.split}" or len(digits) != _KEY_DIGITS or not digits.isdigit():
            raise KeyError(key)
        index = int(digits)
        if index >= len(self._dataset):
            raise KeyError(key)
        return index


def _load_split(datasets: Any, path: Path, split: str, cache_dir: Path | None) -> Any:
    """The ``split`` of a saved dataset or of an imagefolder at ``path`` (both local-only loaders)."""
    try:
        if any((path / marker).is_file() for marker in _SAVED_MARKERS):
            loaded = datasets.load_from_disk(str(path))
            if isinstance(loaded, datasets.DatasetDict):
                if split not in loaded:
                    raise SourceFormatError("missing_split", f"{path} has splits {sorted(loaded)}, not {split!r}")
                return loaded[split]
            return loaded
        kwargs = {"cache_dir": str(cache_dir)} if cache_dir else {}
        return datasets.load_dataset("imagefolder", data_dir=str(path), split=split, **kwargs)
    except SourceFormatError:
        raise
    except (ValueError, FileNotFoundError, OSError, KeyError) as e:
        raise SourceFormatError("bad_hf_dataset", f"{path} (split {split!r}): {type(e).__name__}: {e}") from e
