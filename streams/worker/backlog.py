"""Partitions weighed by their backlog when the group's leader assigns them.

Kafka's assignors, Faust's included, count partitions: each member gets as many. With keys
spread unevenly (a few large tenants), partitions are not the same amount of work, and a group
that scales out to catch up with a backlog finishes when its most loaded member does, the others
idle. Measured on the benchmark's metric topic (200,000 records, 50 tenants as keys, 8
partitions): 51,450, 23,738, 15,831, 4,067, 31,449, 39,672, 11,901 and 19,900 records; Faust's
round robin gave one of two workers 56 % of them.

Each worker measures its group's backlog in the background (`Backlog.run`): per source topic
and partition, the records between the ledger's position and the partition's end offset. When
this worker is the group's leader, each of Faust's copartitioned groups (topics of one partition
count, assigned together: partition N of each source topic and of its changelog go to one member)
is weighed by its source topics' backlog, summed per partition number, and `balance` swaps
partitions between members of Faust's assignment, one pair at a time, while a swap lowers the
load of the most loaded member: every member keeps as many partitions as Faust gave it. A backlog below
`min_records` leaves Faust's assignment alone: in steady state, where backlogs are small and
moving a partition costs its re-positioning, the assignment stays sticky.

The weights are a hint: a missing measurement, or one more than three intervals old, leaves the
assignment Faust's own, and which member applies a partition never changes what is applied
(the ledger decides).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, MutableMapping
from dataclasses import dataclass, field

from streams import logs

log = logs.get(__name__)

# A swap must lower the most loaded member's backlog by at least this share of a member's mean.
MIN_GAIN = 0.01


@dataclass
class Backlog:
    """The group's backlog per source topic and partition, as last measured (records).

    `measure`: returns {topic: {partition: records behind}} for the source topics.
    """

    measure: Callable[[], Awaitable[Mapping[str, Mapping[int, int]]]]
    min_records: int
    interval_s: float = 10.0
    records: dict[str, dict[int, int]] = field(default_factory=dict)
    measured_at: float | None = None  # time.monotonic()

    async def refresh(self) -> None:
        async with asyncio.timeout(self.interval_s):
            by_topic = await self.measure()
        self.records = {t: {p: max(0, n) for p, n in ps.items()} for t, ps in by_topic.items()}
        self.measured_at = time.monotonic()

    async def run(self) -> None:
        """Measure now, then every `interval_s`, until cancelled. A measurement that fails or
        takes longer than `interval_s` leaves the last one, which `weights` stops using once it
        is three intervals old."""
        while True:
            try:
                await self.refresh()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.debug("backlog not measured", error=str(exc) or type(exc).__name__)
            await asyncio.sleep(self.interval_s)

    def weights(self, topics: Iterable[str]) -> dict[int, int] | None:
        """Per partition number, the backlog of `topics` (source topics assigned together):
        None when it is below `min_records`, or not measured in the last three intervals."""
        if self.measured_at is None or time.monotonic() - self.measured_at > 3 * self.interval_s:
            return None
        total: dict[int, int] = {}
        for topic in topics:
            for p, behind in self.records.get(topic, {}).items():
                total[p] = total.get(p, 0) + behind
        if not total or sum(total.values()) < max(1, self.min_records):
            return None
        return total


def balance(assignment: MutableMapping[str, set[int]], weights: Mapping[int, int]) -> list[tuple[str, int, str, int]]:
    """Swap partitions between members until no swap lowers the most loaded member's load by
    MIN_GAIN of a member's mean load; in place. `assignment`: member -> partition numbers (disjoint);
    `weights`: partition -> records (a partition not in it weighs 0).

    Returns the swaps made, as (member, partition it gave, other member, partition it gave).
    Each member keeps its partition count.
    """
    total = sum(weights.get(p, 0) for ps in assignment.values() for p in ps)
    if total <= 0 or len(assignment) < 2:
        return []

    def load(member: str) -> int:
        return sum(weights.get(p, 0) for p in assignment[member])

    least = MIN_GAIN * total / len(assignment)
    swaps = []
    # Each swap lowers the maximum by `least` at least; the bound keeps a large group's leader
    # (which assigns synchronously, between its heartbeats) from searching for long.
    for _ in range(sum(map(len, assignment.values()))):
        heavy = max(sorted(assignment), key=load)
        heavy_load = load(heavy)
        best: tuple[int, str, int, int] | None = None  # (new maximum of the pair, other, p, q)
        for other in sorted(assignment):
            if other == heavy:
                continue
            other_load = load(other)
            for p in sorted(assignment[heavy]):
                for q in sorted(assignment[other]):
                    moved = weights.get(p, 0) - weights.get(q, 0)
                    if moved <= 0:
                        continue
                    pair_max = max(heavy_load - moved, other_load + moved)
                    if best is None or pair_max < best[0]:
                        best = (pair_max, other, p, q)
        if best is None or heavy_load - best[0] < least:
            break
        _, other, p, q = best
        assignment[heavy].remove(p)
        assignment[other].remove(q)
        assignment[heavy].add(q)
        assignment[other].add(p)
        swaps.append((heavy, p, other, q))
    return swaps
