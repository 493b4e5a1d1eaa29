"""What the stream side claims about a batch, built from a partition's buffered entries.

Every claim names what it is about, for the sink to check against the ledger in the batch's
transaction (`sinks.core.claims`, `sinks.core.sink`): the holes the consumer saw (`Hole(after,
before)`, the first one following the record delivered before the batch), the cached duplicates
with the offset their key was committed at, and the log the records come from. A claim found
later, by asking the broker about a hole the sink refused, is added by `streams.worker.holes`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from schemas.deadletter import DeadLetter
from sinks.core.batch import Batch, Cached, Hole, LogIdentity, Record


@dataclass(slots=True)
class Entry:
    """A delivered record as its partition's buffer holds it."""

    offset: int
    item: Record[Any] | DeadLetter
    digest: bytes | None
    nbytes: int  # what it weighs in the budget
    # A hole precedes this record: one the consumer saw in the broker's log after the record at
    # `hole_after` (a batch may span it; the sink checks it as a claimed `Hole`), or one nothing
    # verified (a batch must start here, where the sink checks it against the ledger).
    hole_after: int | None = None
    unverified_gap: bool = False


# (partition, key digest) -> the last offset of the batch that committed the key, if cached
CommittedAt = Callable[[int, bytes], int | None]


def build(
    topic: str, p: int, entries: list[Entry], identity: LogIdentity, committed_at: CommittedAt | None
) -> tuple[Batch[Any], dict[int, bytes]]:
    """The batch of `entries`, and the key digest of each valid record by offset."""
    batch: Batch[Any] = Batch(topic, p, entries[0].offset, entries[-1].offset)
    batch.holes = tuple(Hole(e.hole_after, e.offset) for e in entries if e.hole_after is not None)
    batch.identity = identity
    digests: dict[int, bytes] = {}
    for e in entries:
        item = e.item
        if isinstance(item, DeadLetter):
            batch.rejected.append(item)
            continue
        at = committed_at(p, e.digest) if committed_at is not None else None  # type: ignore[arg-type]
        if at is not None:
            batch.cached.append(Cached(item, at))
        else:
            batch.records.append(item)
        digests[e.offset] = e.digest  # type: ignore[assignment]
    return batch, digests
