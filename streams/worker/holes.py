"""What lies between a partition's ledger and a batch that does not follow it, as the broker says.

The answer is a finding the pipeline acts on, and, where the batch may be written, a claim the
sink checks against the ledger under its lock (`sinks.core.claims`): a `Hole` after exactly the
ledger offset asked about, or a `LostRange` starting right after it and ending right before the
log start the broker reported. Nothing here is trusted by the sink as such.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from sinks.core.batch import Hole, LostRange

# (partition, offset) -> (offset of the first record at or after it, the partition's log start)
FirstOffsetFrom = Callable[[int, int], Awaitable[tuple[int, int]]]


@dataclass(frozen=True, slots=True)
class Empty:
    """Nothing lies between the ledger and the batch (markers, compaction): write it with `hole`."""

    hole: Hole


@dataclass(frozen=True, slots=True)
class Lost:
    """The broker deleted offsets after the ledger (retention). With `seek_to` None the batch
    may be written with `lost` (and `hole`, when nothing lies between the log start and the
    batch either); otherwise records precede the batch, and the partition is sought there."""

    lost: LostRange
    hole: Hole | None
    seek_to: int | None


@dataclass(frozen=True, slots=True)
class Behind:
    """Records lie between the ledger and the batch: the partition is sought back to the ledger."""

    first_available: int


Finding = Empty | Lost | Behind


async def find(first_offset_from: FirstOffsetFrom, partition: int, expected: int, batch_first: int) -> Finding:
    """Ask the broker what lies from `expected` (the ledger's next offset) up to `batch_first`."""
    first, log_start = await first_offset_from(partition, expected)
    if log_start > expected:
        lost = LostRange(expected, log_start - 1, log_start)
        if first < batch_first:
            return Lost(lost, None, seek_to=first)
        return Lost(lost, Hole(lost.last, batch_first) if batch_first > log_start else None, seek_to=None)
    if first >= batch_first:
        return Empty(Hole(expected - 1, batch_first))
    return Behind(first)
