"""The dedupe cache: keys known to be in PostgreSQL, per partition, kept in a Faust table.

A cache only saves the database work; the database decides. Only keys whose rows are committed
are remembered (the database's answer, after the commit), each with the offset of the batch that
committed it, and a hit counts as a duplicate only if the ledger, read in the batch's own
transaction, is at or past that offset (`sinks.core.sink`): after the database went back in time
(a restore, a failover to a replica that missed commits) the cached keys it no longer holds are
applied again, and the partition's cache is rebuilt as of the ledger. The
table holds one entry per committed batch (its 16-byte key digests), not one per key: a
changelog write per key was measured to cap a worker near 3 k events/s. Entries older than the
window, or beyond the key budget, are deleted (a tombstone on the compacted changelog). The
in-memory index is rebuilt from the table the first time a partition is seen after an
assignment, so it survives restarts and moves with its partition.
"""

from __future__ import annotations

import struct
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from streams import logs
from streams.worker.faust_internals import table_partition

log = logs.get(__name__)

DIGEST = 16
_HEADER = struct.Struct("<d")


def encode_entry(created_at: float, digests: Iterable[bytes]) -> bytes:
    return _HEADER.pack(created_at) + b"".join(digests)


def decode_entry(value: bytes) -> tuple[float, list[bytes]]:
    (created_at,) = _HEADER.unpack_from(value)
    body = value[_HEADER.size :]
    return created_at, [body[i : i + DIGEST] for i in range(0, len(body), DIGEST)]


def entry_key(partition: int, first_offset: int, last_offset: int) -> bytes:
    return f"{partition}:{first_offset:020d}-{last_offset:020d}".encode()


def _last_offset(key: bytes) -> int:
    return int(key.rsplit(b"-", 1)[1])


@dataclass
class _Partition:
    keys: dict[bytes, bytes] = field(default_factory=dict)  # digest -> entry key
    entries: deque[tuple[bytes, float, list[bytes]]] = field(default_factory=deque)


class DedupeCache:
    """Digests of (tenant_id, dedupe_id) known to be committed, for the partitions assigned here."""

    def __init__(self, table: Any, source_topic: str, window_s: float, max_keys: int) -> None:
        self.table = table
        self.topic = source_topic
        self.window_s = window_s
        self.max_keys = max_keys
        self._parts: dict[int, _Partition] = {}

    @property
    def enabled(self) -> bool:
        return self.max_keys > 0

    def __len__(self) -> int:
        return sum(len(p.keys) for p in self._parts.values())

    def loaded(self, partition: int) -> bool:
        return partition in self._parts

    def committed_at(self, partition: int, digest: bytes) -> int | None:
        """The last offset of the batch that committed the key, or None if it is not cached
        (always None before `load`)."""
        part = self._parts.get(partition)
        if part is None:
            return None
        key = part.keys.get(digest)
        return None if key is None else _last_offset(key)

    def load(self, partition: int, ledger_offset: int) -> None:
        """Rebuild a partition's index from the table, trusting only what the database still has.

        An entry is written after its batch commits, so one past the ledger's last applied offset
        describes a transaction the database no longer holds (it was restored from a backup or
        to a point in time): its keys must not make a replayed record look like a duplicate. Such
        entries are dropped, from the index and from the table.
        """
        part = _Partition()
        prefix = f"{partition}:".encode()
        kept, stale = [], []
        for key, value in list(self.table.items()):
            if isinstance(key, bytes) and key.startswith(prefix) and value:
                if _last_offset(key) > ledger_offset:
                    stale.append(key)
                    continue
                created_at, digests = decode_entry(value)
                kept.append((key, created_at, digests))
        for key, created_at, digests in sorted(kept):
            self._add(part, key, created_at, digests)
        self._parts[partition] = part
        if stale:
            log.warning(
                "dedupe entries past the ledger dropped: was the database restored?",
                topic=self.topic,
                partition=partition,
                entries=len(stale),
                ledger_offset=ledger_offset,
            )
            with table_partition(self.topic, partition):
                for key in stale:
                    del self.table[key]
        with table_partition(self.topic, partition):
            self._expire(part, time.time(), self._budget())

    def forget(self, partitions: Iterable[int]) -> None:
        """Drop the in-memory cache of partitions (no longer assigned, or found ahead of the
        ledger); the next batch of one reloads it from the table as of the ledger."""
        for p in partitions:
            self._parts.pop(p, None)

    def remember(self, partition: int, first_offset: int, last_offset: int, digests: list[bytes]) -> None:
        """Record a committed batch's keys (the ledger is now at `last_offset`); expire what is out
        of the window or over budget."""
        if not self.enabled:
            return
        if partition not in self._parts:
            self.load(partition, last_offset)
        part = self._parts[partition]
        now = time.time()
        with table_partition(self.topic, partition):
            if digests:
                key = entry_key(partition, first_offset, last_offset)
                self.table[key] = encode_entry(now, digests)
                self._add(part, key, now, digests)
            self._expire(part, now, self._budget())

    def _budget(self) -> int:
        return max(1, self.max_keys // max(1, len(self._parts)))

    @staticmethod
    def _add(part: _Partition, key: bytes, created_at: float, digests: list[bytes]) -> None:
        part.entries.append((key, created_at, digests))
        keys = part.keys
        for d in digests:
            keys[d] = key

    def _expire(self, part: _Partition, now: float, budget: int) -> None:
        horizon = now - self.window_s
        while part.entries and (part.entries[0][1] < horizon or len(part.keys) > budget):
            key, _, digests = part.entries.popleft()
            keys = part.keys
            for d in digests:
                if keys.get(d) == key:
                    del keys[d]
            if key in self.table:
                del self.table[key]
