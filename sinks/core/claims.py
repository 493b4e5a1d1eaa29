"""What the sink checks of a batch's offsets before it applies anything, under the ledger's lock.

The stream side claims things the sink cannot see: that an offset holds no record (a `Hole`),
that offsets were deleted by the broker (a `LostRange`). Each claim names the offsets it is
about, and is accepted only where it meets the ledger, read in the batch's own transaction, or
the batch's own records, exactly:

- the batch's records fill its range: `first_offset` and `last_offset` are offsets of records
  it holds, no offset comes twice, and every jump between two of them is a claimed hole;
- a batch that does not start right after the ledger is refused (`OffsetGap`) unless a lost
  range starts right after the ledger and ends right before the log start the broker reported,
  and a hole claimed from there (or from the ledger itself) reaches the batch's first offset.

A claim made against another ledger (a batch abandoned at shutdown, a concurrent owner's
commit, an operator's `eventsink ledger skip`) therefore never moves the ledger past records.
"""

from __future__ import annotations

from itertools import chain, pairwise
from typing import Any

from sinks.core.batch import Batch, Hole, LostRange
from sinks.errors import ClaimRefused, OffsetGap


def offsets(batch: Batch[Any]) -> list[int]:
    """Every offset the batch holds a record for, in order."""
    return sorted(
        chain(
            (r.offset for r in batch.records),
            (d.offset for d in batch.rejected),
            (c.record.offset for c in batch.cached),
        )
    )


def check_range(batch: Batch[Any]) -> None:
    """Refuse (`ClaimRefused`) a batch whose records do not fill its range as it claims."""
    held = offsets(batch)
    topic, partition = batch.topic, batch.partition
    if not held:
        raise ClaimRefused(topic, partition, "it holds no record")
    if held[0] != batch.first_offset or held[-1] != batch.last_offset:
        raise ClaimRefused(
            topic,
            partition,
            f"it claims offsets {batch.first_offset}..{batch.last_offset}, its records are {held[0]}..{held[-1]}",
        )
    holes = set(batch.holes)
    for a, b in pairwise(held):
        if b == a + 1:
            continue
        if b <= a:
            raise ClaimRefused(topic, partition, f"offset {b} comes twice or out of order")
        if Hole(a, b) not in holes:
            raise ClaimRefused(topic, partition, f"offsets {a + 1}..{b - 1} are skipped and no hole is claimed there")


def check_follows(batch: Batch[Any], last: int) -> LostRange | None:
    """The lost range to record, if any, for a batch after ledger offset `last`; raises
    `OffsetGap` where no claim that meets the ledger explains the offsets in between."""
    expected = last + 1
    if batch.first_offset <= expected:
        return None
    lost, after = batch.lost, last
    if lost is not None:
        if not (lost.first == expected and lost.last == lost.log_start - 1 and lost.last < batch.first_offset):
            raise OffsetGap(batch.topic, batch.partition, expected, batch.first_offset)
        after = lost.last
    if batch.first_offset > after + 1 and Hole(after, batch.first_offset) not in batch.holes:
        raise OffsetGap(batch.topic, batch.partition, expected, batch.first_offset)
    return lost
