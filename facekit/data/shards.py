"""LMDB shards of :class:`~facekit.data.record.FaceRecord`: writers, readers and an index.

A shard is an LMDB directory ``<name>.lmdb/``. Record ``i`` is stored under ``b"%09d" % i`` as
``FaceRecord.to_bytes()``; ``b"__meta__"`` holds JSON metadata: ``schema_version``, ``count``,
``content_hash`` (see :func:`content_hash`) and the caller's meta (``identities``, ``params_hash``, ...);
``b"__report__"`` holds the JSON report of the stage that wrote the shard (what it read, wrote and rejected
for it), when the stage sets one. Metadata carries no timestamps, so identical inputs give identical shards.

Writers build into ``<name>.lmdb.tmp`` and rename into place on close: a killed writer never leaves a
shard that looks complete, and a shard's records, metadata and report become visible together. Readers
open read-only without a lock file (``lock=False``), lazily and once per process, so they are safe to hand
to forking DataLoader workers and never modify a DVC output.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lmdb

from facekit.data.faults import fault_point
from facekit.data.record import SCHEMA_VERSION, FaceRecord

META_KEY = b"__meta__"
REPORT_KEY = b"__report__"
INDEX_NAME = "index.json"
TMP_SUFFIX = ".tmp"
#: Keys the writer computes itself; caller meta may not set them.
_RESERVED_META = frozenset({"schema_version", "count", "content_hash"})


class ShardError(Exception):
    """A shard or shard index that is missing, malformed, of another schema version or corrupted."""


def record_key(i: int) -> bytes:
    """The fixed-width LMDB key of record ``i`` (``b"000000042"``)."""
    return b"%09d" % i


def _hash_value(h: Any, value: bytes) -> None:
    h.update(len(value).to_bytes(8, "little"))
    h.update(value)


def content_hash(values: Iterable[bytes]) -> str:
    """sha256 hex over ordered values, each length-prefixed so that boundaries count.

    Used for a shard (over its serialised records) and for a shard set (over its shards' hashes).
    """
    h = hashlib.sha256()
    for value in values:
        _hash_value(h, value)
    return h.hexdigest()


@dataclass(frozen=True)
class ShardInfo:
    """A finished shard: where it is, how many records, their content hash and serialised bytes."""

    path: Path
    count: int
    content_hash: str
    nbytes: int


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class ShardWriter:
    """Write one shard; a context manager. Records get consecutive indices in ``put`` order.

    ``meta`` (JSON-serialisable, e.g. ``identities`` and ``params_hash``) is stored in the metadata
    record; ``report``, when set before :meth:`close`, is stored with it (the stage's JSON report of this
    shard). A transaction is committed every ``commit_every`` puts. On an exception inside ``with`` the
    temporary directory is removed and nothing is renamed.
    """

    def __init__(
        self,
        path: Path,
        *,
        meta: dict | None = None,
        map_size: int = 1 << 40,
        commit_every: int = 2000,
    ) -> None:
        self.path = Path(path)
        if self.path.suffix != ".lmdb":
            raise ValueError(f"{self.path}: a shard path must end in '.lmdb'")
        self.meta = dict(meta or {})
        reserved = _RESERVED_META & self.meta.keys()
        if reserved:
            raise ValueError(f"{self.path}: meta may not set {sorted(reserved)}; the writer computes them")
        try:
            json.dumps(self.meta)
        except TypeError as e:
            raise ValueError(f"{self.path}: meta is not JSON-serialisable: {e}") from None
        if commit_every < 1:
            raise ValueError(f"{self.path}: commit_every must be at least 1, got {commit_every}")
        self.commit_every = commit_every
        self.report: dict | None = None
        self.count = 0
        self.nbytes = 0
        self._hash = hashlib.sha256()
        self._info: ShardInfo | None = None
        self._tmp = self.path.with_name(self.path.name + TMP_SUFFIX)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _remove(self._tmp)  # left by a crashed run
        try:
            self._env = lmdb.open(
                str(self._tmp), subdir=True, map_size=map_size, writemap=False, sync=False, metasync=False
            )
        except lmdb.Error as e:
            raise ShardError(f"{self.path}: cannot create shard: {e}") from None
        self._txn = self._env.begin(write=True)

    def put(self, record: FaceRecord) -> None:
        """Append ``record`` as the next index."""
        self._put_value(record.to_bytes())

    def _put_value(self, value: bytes) -> None:
        if self._txn is None:
            raise RuntimeError(f"{self.path}: put() on a closed writer")
        if not self._txn.put(record_key(self.count), value, append=True):
            raise ShardError(f"{self._tmp}: record {self.count} already exists")
        _hash_value(self._hash, value)
        self.count += 1
        self.nbytes += len(value)
        fault_point("shard_record_put")
        if self.count % self.commit_every == 0:
            self._txn.commit()
            self._txn = self._env.begin(write=True)

    def close(self) -> ShardInfo:
        """Write the metadata, flush, and rename the shard into place (replacing an old one)."""
        if self._info is not None:
            return self._info
        if self._txn is None:
            raise RuntimeError(f"{self.path}: writer was aborted")
        digest = self._hash.hexdigest()
        meta = {"schema_version": SCHEMA_VERSION, "count": self.count, "content_hash": digest, **self.meta}
        self._txn.put(META_KEY, json.dumps(meta, sort_keys=True).encode())
        if self.report is not None:
            self._txn.put(REPORT_KEY, json.dumps(self.report, sort_keys=True).encode())
        self._txn.commit()
        self._txn = None
        self._env.sync(True)
        self._env.close()
        _remove(self._tmp / "lock.mdb")
        fault_point("shard_committed")
        old = self.path.with_name(self.path.name + ".old")
        _remove(old)
        if self.path.exists():
            self.path.rename(old)
            fault_point("shard_moved_aside")
        self._tmp.rename(self.path)
        fault_point("shard_renamed")
        _remove(old)
        _fsync_dir(self.path.parent)
        self._info = ShardInfo(self.path, self.count, digest, self.nbytes)
        return self._info

    def abort(self) -> None:
        """Drop everything written so far; the final path is left untouched."""
        if self._txn is not None:
            self._txn.abort()
            self._txn = None
            self._env.close()
        _remove(self._tmp)

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.close()
        elif self._info is None:
            self.abort()


class ShardSetWriter:
    """Write records into ``out_dir/<prefix>-00000.lmdb``, ``-00001``, ... rolling over by size.

    A new shard starts before the current one would exceed ``max_shard_bytes`` of serialised values; a
    record larger than the limit gets a shard of its own. ``meta`` goes into every shard. On close,
    shards (and temporary directories) of this prefix left by an earlier, larger run are removed; with no
    records at all, one empty shard is written so the output always exists. ``commit_every`` as in
    :class:`ShardWriter`.
    """

    def __init__(
        self,
        out_dir: Path,
        prefix: str,
        *,
        max_shard_bytes: int,
        meta: dict | None = None,
        commit_every: int = 2000,
    ) -> None:
        if max_shard_bytes <= 0:
            raise ValueError(f"max_shard_bytes must be positive, got {max_shard_bytes}")
        self.out_dir = Path(out_dir)
        self.prefix = prefix
        self.max_shard_bytes = max_shard_bytes
        self.meta = dict(meta or {})
        self.commit_every = commit_every
        self._infos: list[ShardInfo] = []
        self._writer: ShardWriter | None = None
        self._closed = False

    def _open_next(self) -> ShardWriter:
        path = self.out_dir / f"{self.prefix}-{len(self._infos):05d}.lmdb"
        self._writer = ShardWriter(path, meta=self.meta, commit_every=self.commit_every)
        return self._writer

    def put(self, record: FaceRecord) -> None:
        """Append ``record`` to the current shard, first rolling over if it would not fit."""
        if self._closed:
            raise RuntimeError(f"{self.out_dir}/{self.prefix}: put() on a closed writer")
        value = record.to_bytes()
        writer = self._writer or self._open_next()
        if writer.count and writer.nbytes + len(value) > self.max_shard_bytes:
            self._infos.append(writer.close())
            writer = self._open_next()
        writer._put_value(value)

    def close(self) -> list[ShardInfo]:
        """Finish the last shard and return all of them, in order."""
        if self._closed:
            return list(self._infos)
        if self._writer is None:
            self._open_next()
        assert self._writer is not None
        self._infos.append(self._writer.close())
        self._writer = None
        self._closed = True
        self._remove_stale()
        return list(self._infos)

    def _remove_stale(self) -> None:
        written = {info.path.name for info in self._infos}
        pattern = re.compile(rf"{re.escape(self.prefix)}-\d{{5}}\.lmdb(\.tmp|\.old)?")
        for path in self.out_dir.iterdir():
            if pattern.fullmatch(path.name) and path.name not in written:
                _remove(path)

    def __enter__(self) -> ShardSetWriter:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.close()
        elif self._writer is not None:  # drop the shard being written; finished ones stay
            self._writer.abort()
            self._writer = None
            self._closed = True


def write_index(
    out_dir: Path,
    shards: list[ShardInfo],
    *,
    identities: list[str],
    params_hash: str,
    extra: dict | None = None,
) -> Path:
    """Write ``out_dir/index.json`` describing a shard set; return its path.

    The set's ``content_hash`` is :func:`content_hash` over the ordered shard hashes.
    """
    out_dir = Path(out_dir)
    reserved = {"schema_version", "shards", "count", "identities", "params_hash", "content_hash"}
    if extra and reserved & extra.keys():
        raise ValueError(f"{out_dir}: extra may not set {sorted(reserved & extra.keys())}")
    entries = []
    for info in shards:
        try:
            name = Path(info.path).resolve().relative_to(out_dir.resolve()).as_posix()
        except ValueError:
            raise ValueError(f"{out_dir}: shard {info.path} is not inside the index folder") from None
        entries.append({"name": name, "count": info.count, "content_hash": info.content_hash})
    index = {
        **(extra or {}),
        "schema_version": SCHEMA_VERSION,
        "shards": entries,
        "count": sum(info.count for info in shards),
        "identities": list(identities),
        "params_hash": params_hash,
        "content_hash": content_hash(info.content_hash.encode() for info in shards),
    }
    path = out_dir / INDEX_NAME
    tmp = path.with_name(INDEX_NAME + TMP_SUFFIX)
    tmp.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)
    fault_point("index_written")
    return path


def read_index(out_dir: Path) -> dict:
    """Load ``out_dir/index.json``; raise :class:`ShardError` if missing, malformed or of another schema."""
    path = Path(out_dir) / INDEX_NAME
    if not path.is_file():
        raise ShardError(f"{path}: no shard index here (expected {INDEX_NAME} written by write_index)")
    try:
        index = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ShardError(f"{path}: not a valid JSON shard index: {e}") from None
    if not isinstance(index, dict) or "shards" not in index:
        raise ShardError(f"{path}: not a shard index (no 'shards' list)")
    if index.get("schema_version") != SCHEMA_VERSION:
        raise ShardError(f"{path}: schema_version {index.get('schema_version')!r}, this facekit reads {SCHEMA_VERSION}")
    return index


class _EnvPool:
    """This process's read-only LMDB environments, shared by readers of the same ``data.mdb`` file.

    LMDB allows one environment per file per process. Entries are keyed by the file's inode, so a shard
    rewritten in place gets a fresh environment while readers of the old file keep theirs. Environments
    inherited across fork are dropped.
    """

    def __init__(self) -> None:
        self._pid = os.getpid()
        self._envs: dict[tuple[int, int], tuple[Any, int]] = {}

    def acquire(self, path: Path, readahead: bool) -> tuple[tuple[int, int], Any]:
        """Open (or share) the environment of ``path``; return (key for :meth:`release`, environment)."""
        if self._pid != os.getpid():
            self._envs.clear()
            self._pid = os.getpid()
        try:
            stat = (path / "data.mdb").stat()
        except OSError:
            raise ShardError(f"{path}: not an LMDB shard (no data.mdb)") from None
        key = (stat.st_dev, stat.st_ino)
        env, users = self._envs.get(key, (None, 0))
        if env is None:
            try:
                env = lmdb.open(str(path), subdir=True, readonly=True, lock=False, readahead=readahead)
            except lmdb.Error as e:
                raise ShardError(f"{path}: cannot open shard: {e}") from None
        self._envs[key] = (env, users + 1)
        return key, env

    def release(self, key: tuple[int, int]) -> None:
        """Drop one user of an environment; close it when none is left."""
        env, users = self._envs.pop(key, (None, 0))
        if users > 1:
            self._envs[key] = (env, users - 1)
        elif env is not None:
            env.close()


_ENV_POOL = _EnvPool()


class ShardReader:
    """Random and sequential access to one shard; opens lazily, once per process, read-only, no lock.

    Picklable: the LMDB handle is dropped and reopened where it is next used (e.g. a DataLoader worker).
    """

    def __init__(self, path: Path, *, readahead: bool = False) -> None:
        self.path = Path(path)
        self.readahead = readahead
        self._meta: dict | None = None
        self._env: Any = None
        self._env_key: tuple[int, int] | None = None
        self._txn: Any = None
        self._pid: int | None = None

    def _open(self) -> Any:
        if self._txn is not None and self._pid == os.getpid():
            return self._txn  # a handle inherited across fork (other pid) is replaced, never used
        self._env_key, self._env = _ENV_POOL.acquire(self.path, self.readahead)
        self._pid = os.getpid()
        self._txn = self._env.begin(buffers=False)  # values are bytes copies: safe to keep and across threads
        if self._meta is None:
            try:
                self._meta = self._load_meta()
            except ShardError:
                self.close()
                raise
        return self._txn

    def _load_meta(self) -> dict:
        value = self._txn.get(META_KEY)
        if value is None:
            raise ShardError(f"{self.path}: not a facekit shard (no {META_KEY.decode()} record)")
        try:
            meta = json.loads(value)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ShardError(f"{self.path}: unreadable metadata: {e}") from None
        if meta.get("schema_version") != SCHEMA_VERSION:
            raise ShardError(
                f"{self.path}: schema_version {meta.get('schema_version')!r}, this facekit reads "
                f"{SCHEMA_VERSION}; rebuild the shard"
            )
        return meta

    @property
    def meta(self) -> dict:
        """The shard's metadata record."""
        if self._meta is None:
            self._open()
        assert self._meta is not None
        return self._meta

    @property
    def report(self) -> dict | None:
        """The report its stage stored with the shard (see :class:`ShardWriter`), or None."""
        value = self._open().get(REPORT_KEY)
        if value is None:
            return None
        try:
            return json.loads(value)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ShardError(f"{self.path}: unreadable report: {e}") from None

    def __len__(self) -> int:
        return int(self.meta["count"])

    def raw(self, i: int) -> bytes:
        """The serialised record ``i`` (negative indices count from the end)."""
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"{self.path}: record {i} out of range (count {n})")
        value = self._open().get(record_key(i % n))
        if value is None:
            raise ShardError(f"{self.path}: record {i % n} is missing though count is {n}")
        return value

    def read_fields(self, i: int, *names: str) -> tuple[Any, ...]:
        """Fields ``names`` of record ``i`` (see :meth:`FaceRecord.read_fields`)."""
        value = self.raw(i)
        try:
            return FaceRecord.read_fields(value, *names)
        except Exception as e:
            raise ShardError(f"{self.path}: record {i} cannot be decoded: {e}") from None

    def __getitem__(self, i: int) -> FaceRecord:
        value = self.raw(i)
        try:
            return FaceRecord.from_bytes(value)
        except Exception as e:
            raise ShardError(f"{self.path}: record {i} cannot be decoded: {e}") from None

    def __iter__(self) -> Iterator[FaceRecord]:
        for i in range(len(self)):
            yield self[i]

    def close(self) -> None:
        """Release the LMDB handle (it reopens on next access)."""
        if self._env is not None and self._pid == os.getpid():
            self._txn.abort()
            _ENV_POOL.release(self._env_key)
        self._env = self._env_key = self._txn = self._pid = None

    def __del__(self) -> None:
        try:  # noqa: SIM105  (not contextlib.suppress: at interpreter shutdown module globals may be gone)
            self.close()
        except Exception:
            pass

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_env": None, "_env_key": None, "_txn": None, "_pid": None}


def verify_shard(path: Path) -> ShardInfo:
    """Recompute a shard's content hash and count; raise :class:`ShardError` if they disagree with its meta."""
    reader = ShardReader(path)
    try:
        meta = reader.meta
        reader._open()
        records = reader._env.stat()["entries"] - 1 - (reader.report is not None)
        if records != meta["count"]:
            raise ShardError(f"{reader.path}: {records} records stored, metadata says {meta['count']}")
        nbytes = 0

        def values() -> Iterator[bytes]:
            nonlocal nbytes
            for i in range(len(reader)):
                value = reader.raw(i)
                nbytes += len(value)
                yield value

        digest = content_hash(values())
    finally:
        reader.close()
    if digest != meta["content_hash"]:
        raise ShardError(
            f"{reader.path}: content hash {digest} does not match metadata {meta['content_hash']}: "
            "the shard was modified or corrupted"
        )
    return ShardInfo(reader.path, len(reader), digest, nbytes)
