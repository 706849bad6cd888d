"""Stable assignment of record keys to work shards."""

from __future__ import annotations

import hashlib


def shard_of(key: str, num_shards: int) -> int:
    """The shard a key belongs to: a hash of the key, so adding records never moves existing ones."""
    digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") % num_shards


def shard_name(shard_id: int) -> str:
    return f"shard-{shard_id:05d}"
