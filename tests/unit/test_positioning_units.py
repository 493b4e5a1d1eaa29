"""The pipeline's positioning units, alone: what a delivered offset is (`Cursor`), and what the
broker's answer about a hole becomes (`holes.find`): a claim naming the ledger offset it follows."""

from __future__ import annotations

from sinks.core.batch import Hole, LostRange
from streams.worker import holes
from streams.worker.cursor import Cursor, Step


def test_a_cursor_tells_next_holes_seeks_back_and_stale_deliveries() -> None:
    c = Cursor()
    assert [c.step(o) for o in (5, 6, 9)] == [Step.NEXT, Step.NEXT, Step.HOLE]
    assert c.before == 6
    assert c.step(7) is Step.BACK
    c.sought(20)
    assert c.step(8) is Step.NEXT  # below what the seek expects: the old position's last ones
    c.sought(20)
    assert (c.step(25), c.previous) == (Step.STALE, None)  # above it: fetched before the seek
    assert (c.step(20), c.step(21)) == (Step.NEXT, Step.NEXT)
    assert not c.seek_overdue(15.0)


def test_a_cursor_is_starved_once_per_end_offset() -> None:
    c = Cursor(delivered_at=0.0)
    assert c.starved(end=10, applied=5, after_s=30.0)
    assert not c.starved(end=10, applied=10, after_s=30.0)
    c.reseek_starved(10)
    c.delivered_at = 0.0
    assert not c.starved(end=10, applied=5, after_s=30.0)
    assert c.starved(end=11, applied=5, after_s=30.0)


def broker(first: int, log_start: int) -> holes.FirstOffsetFrom:
    async def first_offset_from(partition: int, offset: int) -> tuple[int, int]:
        return max(first, offset), log_start

    return first_offset_from


async def test_what_lies_in_a_hole_becomes_a_claim_about_the_ledgers_offset() -> None:
    # Nothing between the ledger (next 5) and the batch (10): a hole after exactly 4.
    assert await holes.find(broker(10, 0), 0, 5, 10) == holes.Empty(Hole(4, 10))
    # Records from 7: sought back.
    assert await holes.find(broker(7, 0), 0, 5, 10) == holes.Behind(7)
    # Retention deleted 5..7; nothing from 8 to the batch: the loss, and a hole after its end.
    assert await holes.find(broker(10, 8), 0, 5, 10) == holes.Lost(LostRange(5, 7, 8), Hole(7, 10), None)
    assert await holes.find(broker(10, 10), 0, 5, 10) == holes.Lost(LostRange(5, 9, 10), None, None)
    # Retention deleted 5..7, records from 8 before the batch: sought there.
    assert await holes.find(broker(8, 8), 0, 5, 10) == holes.Lost(LostRange(5, 7, 8), None, 8)
