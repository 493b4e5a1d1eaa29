"""Where one partition's deliveries stand: the pipeline's side of positioning.

The ledger decides where a partition resumes (`streams.worker.positioning` at assignment, the
pipeline after a hole with records in it or a stop); the consumer is then sought, but records
fetched from the old position may still arrive. A `Cursor` tells, record by record, what each
delivered offset is: the next one, a stale one (above the offset a seek expects), a sign that the
partition was sought back (at or below the last one), or the end of a hole. It also says when a
seek did not bring what it should, and when a partition looks starved: records exist past what
was applied, yet none arrives.

Plain state, no I/O: the pipeline acts on what it says (seeks, drops, claims for the sink).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum
from time import monotonic


class Step(IntEnum):
    NEXT = 0  # right after the last offset delivered (or the first one)
    STALE = 1  # above what a seek expects: fetched from the old position, it comes again
    BACK = 2  # at or below the last one: the partition was sought back, what follows comes again
    HOLE = 3  # past the last one + 1: offsets without a record in between (`before` is the last one)


@dataclass(slots=True)
class Cursor:
    previous: int | None = None  # offset of the last record delivered
    before: int | None = None  # the last offset before the record just stepped on (for a hole)
    # After a seek: the offset expected next; records above it are stale deliveries.
    expect: int | None = None
    expect_since: float = 0.0
    delivered_at: float = field(default_factory=monotonic)  # when a record last arrived
    starved_end: int | None = None  # the end offset when the last starvation seek was made

    def step(self, offset: int) -> Step:
        """What a delivered offset is; the cursor moves past it unless it is stale."""
        expect = self.expect
        if expect is not None:
            if offset > expect:
                return Step.STALE
            self.expect = None
        previous = self.before = self.previous
        self.previous = offset
        if previous is None or offset == previous + 1:
            return Step.NEXT
        return Step.BACK if offset <= previous else Step.HOLE

    def sought(self, offset: int) -> None:
        """The consumer was sought to `offset`: what arrives above it first is stale."""
        self.previous = None
        self.expect, self.expect_since = offset, monotonic()

    def lose_track(self) -> None:
        """What was delivered so far says nothing of what comes next (dropped, or sought)."""
        self.previous = None

    def seek_overdue(self, after_s: float) -> bool:
        """True (once per `after_s`) while a seek has not brought the offset it expected."""
        if self.expect is None or monotonic() - self.expect_since <= after_s:
            return False
        self.expect_since = monotonic()
        return True

    def starved(self, end: int | None, applied: int | None, after_s: float) -> bool:
        """Whether records exist past what was applied (`end` > `applied`) yet none arrived for
        `after_s`; once per end offset (a log ending in transaction markers stays "behind")."""
        if self.expect is not None or monotonic() - self.delivered_at < after_s:
            return False
        return end is not None and applied is not None and end > applied and end != self.starved_end

    def reseek_starved(self, end: int | None) -> None:
        self.delivered_at = monotonic()
        self.starved_end = end
        self.previous = None
