"""The contract every raw source follows."""

from __future__ import annotations

from abc import ABC, abstractmethod

from facekit.data.record import RawRecord


class SourceError(Exception):
    """A record that cannot be read; ``reason`` is a short stable code for the stage report."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class Source(ABC):
    """A raw dataset: a sorted list of stable keys, random access by key, an identity table.

    ``name`` prefixes every key (``"<name>/..."``); keys never change between runs, so shard plans and
    content hashes are reproducible.
    """

    name: str

    @abstractmethod
    def keys(self) -> list[str]:
        """All record keys, sorted."""

    @abstractmethod
    def identities(self) -> list[str]:
        """Identity names; a record's ``identity`` label indexes this list."""

    @abstractmethod
    def read(self, key: str) -> RawRecord:
        """Return the record for ``key``; raise :class:`SourceError` when it cannot be read."""


class SourceFormatError(ValueError):
    """A dataset file, folder or spec that cannot be used at all (raised when a source is opened).

    ``reason`` is a short stable code (e.g. ``"bad_index_file"``), ``detail`` names the file and the problem.
    Per-record failures are :class:`~facekit.data.sources.base.SourceError` instead.
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
