"""The rebalance reader against a real broker and a real database, its steps in an order a worker's
rebalance can take when its timing is unlucky (a worker runs them in whatever order the group's
join, Faust's table recovery and the reader's time limit give)."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.structs import ConsumerRecord
from faust.types import TP

from sinks.core.sink import Sink
from streams.worker.faust_internals import Fetched
from streams.worker.rebalance_reader import RebalanceReader
from tests.helpers import Scenario, ledger, writers_pool
from tests.pg.test_pipeline_edges import WRITER, Letters, RetainedLog, pipeline, until
from tests.workload import Sent, create_topics, publish

pytestmark = pytest.mark.e2e

DELIVERED = 10  # records of each partition the group's consumer delivered before the rebalance


async def read_all(s: Scenario, partitions: range) -> dict[int, list[ConsumerRecord]]:
    """Every record of the scenario's topic, per partition (what the test published)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=s.bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(s.topic, p) for p in partitions]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        found: dict[int, list[ConsumerRecord]] = {p: [] for p in partitions}
        while any((found[tp.partition][-1].offset + 1 if found[tp.partition] else 0) < ends[tp] for tp in tps):
            for tp, records in (await consumer.getmany(timeout_ms=500)).items():
                found[tp.partition].extend(records)
        return found
    finally:
        await consumer.stop()


async def loaded(s: Scenario, count: int) -> dict[int, list[ConsumerRecord]]:
    """`count` metric records published to the scenario's four partitions (40 tenants, so every
    partition has some), as they are in the log."""
    sent = Sent(tenants=[str(uuid.uuid4()) for _ in range(40)])
    await asyncio.to_thread(create_topics, s)
    await asyncio.to_thread(publish, s, sent, count)
    return await read_all(s, range(4))


def fullest(records: dict[int, list[ConsumerRecord]], more_than: int) -> int:
    """The partition with the most records (keys spread unevenly), which must have `more_than`."""
    q = max(records, key=lambda k: len(records[k]))
    assert len(records[q]) > more_than, {k: len(r) for k, r in records.items()}
    return q


def fetch(s: Scenario, p: int, records: list[ConsumerRecord]) -> list[Fetched]:
    return [Fetched(TP(s.topic, p), records, 0, 0)]


async def test_a_time_limit_after_the_new_assignment_leaves_the_kept_partitions_to_the_hand_back(
    scenario: Scenario,
) -> None:
    """The reader's time limit (or a fetch error) that ends its reading after the new assignment
    came, before the ledger positions the group's consumer, must leave the partitions kept to that
    hand-back: dropped from their pipeline then, the group's consumer's records of them were
    stale to it, and nothing applied them until the next rebalance (a helper's reproduction, with
    a short session timeout). Each kept partition ends with every offset counted once."""
    s = scenario
    records = await loaded(s, 1000)
    assert all(len(records[p]) > DELIVERED for p in range(4)), {p: len(r) for p, r in records.items()}
    async with writers_pool(s.dsn, WRITER) as pool:
        p = pipeline(Sink(pool, s.group, WRITER, Letters()), RetainedLog(start=0), s.topic, "stop")
        p.on_assigned({0, 1, 2, 3})
        for q in range(4):  # the group's consumer, before the rebalance
            p.ingest(fetch(s, q, records[q][:DELIVERED]))
        reader = RebalanceReader(
            [s.bootstrap], {}, {s.topic: p}, p.budget, fetch_max_wait_ms=100, max_records=1000, limit_s=1.0
        )
        try:
            assert reader.start({TP(s.topic, q) for q in range(4)}) == {TP(s.topic, q) for q in range(4)}
            # The new assignment keeps 0 and 1 and moves 2 and 3 (`Runtime._on_assigned`).
            assert reader.release({TP(s.topic, 0), TP(s.topic, 1)}) == {TP(s.topic, 2), TP(s.topic, 3)}
            p.on_revoked({2, 3})
            p.on_assigned({0, 1})
            # Then the time limit, before the ledger positions the group's consumer.
            await until(lambda: not reader.active, timeout=30)
            for q in (0, 1):  # `Positioning.targets`
                assert reader.finish(TP(s.topic, q)), f"partition {q} was dropped before its hand-back"
                last = ledger(s.dsn, s.group, s.topic).get(q, {}).get("last_offset", -1)
                p.sought(q, last + 1)
                # The group's consumer delivers from the ledger.
                p.ingest(fetch(s, q, [r for r in records[q] if r.offset > last]))
            await until(
                lambda: all(
                    ledger(s.dsn, s.group, s.topic).get(q, {}).get("last_offset") == records[q][-1].offset
                    for q in (0, 1)
                ),
                timeout=30,
            )
            await p.drain()
        finally:
            await reader.close()
    counted = ledger(s.dsn, s.group, s.topic)
    for q in (0, 1):
        assert counted[q]["events"] == len(records[q])  # every offset once: none twice, none lost


class Routed(RetainedLog):
    """`app.TopicControl`'s routing: to the reader while it reads the partition, else to the
    group's consumer (`held`: the partitions paused there, `LedgerConsumer.held`)."""

    def __init__(self, topic: str) -> None:
        super().__init__(start=0)
        self.topic = topic
        self.reader: RebalanceReader | None = None

    def hold(self, partition: int) -> None:
        if self.reader is not None and self.reader.reading(self.topic, partition):
            self.reader.hold(self.topic, partition)
        else:
            self.held.add(partition)

    def release(self, partition: int) -> None:
        if self.reader is not None and self.reader.reading(self.topic, partition):
            self.reader.release_hold(self.topic, partition)
        else:
            self.held.discard(partition)


async def test_a_pause_the_group_consumer_took_before_the_hand_back_is_released_by_it(scenario: Scenario) -> None:
    """Between the reader's `finish` and `sought` the ledger is read; Faust has resumed the
    partition's stream by then, and the group's consumer may deliver enough from Kafka's committed
    offset to pause the partition (its hold). The hand-back drops that buffer, so it must release
    the pause too: nothing else would, and the partition would stop, unalerted (a helper's
    reproduction, with the database slow and cut during the read-through)."""
    s = scenario
    records = await loaded(s, 2000)
    q = fullest(records, more_than=400)
    async with writers_pool(s.dsn, WRITER) as pool:
        control = Routed(s.topic)
        p = pipeline(Sink(pool, s.group, WRITER, Letters()), control, s.topic, "stop")  # hold_records=100
        p.on_assigned({q})
        p.ingest(fetch(s, q, records[q][:DELIVERED]))  # the group's consumer, before the rebalance
        reader = RebalanceReader(
            [s.bootstrap], {}, {s.topic: p}, p.budget, fetch_max_wait_ms=100, max_records=1000, limit_s=30.0
        )
        control.reader = reader
        try:
            # A short join: the assignment and the hand-back come before the reader has read
            # (had it read past the hold, the pause would be its own, undone by `finish`).
            assert reader.start({TP(s.topic, q)}) == {TP(s.topic, q)}
            assert reader.release({TP(s.topic, q)}) == set()  # the new assignment keeps it
            p.on_assigned({q})
            assert reader.finish(TP(s.topic, q))  # `Positioning.targets`, then its ledger read
            last = ledger(s.dsn, s.group, s.topic).get(q, {}).get("last_offset", -1)
            p.ingest(fetch(s, q, records[q][:300]))  # the group's consumer, from Kafka's committed offset
            assert q in control.held  # paused by the pipeline's hold
            p.sought(q, last + 1)
            assert q not in control.held
            p.ingest(fetch(s, q, [r for r in records[q] if r.offset > last]))
            await until(
                lambda: ledger(s.dsn, s.group, s.topic).get(q, {}).get("last_offset") == records[q][-1].offset,
                timeout=30,
            )
            await p.drain()
        finally:
            await reader.close()
    assert ledger(s.dsn, s.group, s.topic)[q]["events"] == len(records[q])


async def test_a_seek_again_expects_the_ledger_it_seeks_to(scenario: Scenario) -> None:
    """A hand-back positioned at the ledger as read before a batch in flight committed (the ledger
    then passes the target, which never comes): the pipeline seeks to the ledger again, and must
    then take what that seek delivers, not wait for the old target for ever (a helper's
    reproduction)."""
    s = scenario
    records = await loaded(s, 2000)
    q = fullest(records, more_than=300)
    async with writers_pool(s.dsn, WRITER) as pool:
        control = Routed(s.topic)
        p = pipeline(Sink(pool, s.group, WRITER, Letters()), control, s.topic, "stop")
        p.SEEK_AGAIN_AFTER_S = 1.0  # 15 s in the worker
        p.on_assigned({q})
        p.ingest(fetch(s, q, records[q][:200]))
        await until(lambda: ledger(s.dsn, s.group, s.topic).get(q, {}).get("last_offset") == 199, timeout=30)
        p.sought(q, 100)  # the ledger as read before the batch of 100..199 committed
        await until(lambda: bool(control.seeks), timeout=30)  # "seeking to the ledger again"
        assert control.seeks[-1] == (q, 200)
        p.ingest(fetch(s, q, [r for r in records[q] if r.offset >= 200]))  # what that seek delivers
        await until(
            lambda: ledger(s.dsn, s.group, s.topic).get(q, {}).get("last_offset") == records[q][-1].offset,
            timeout=30,
        )
        await p.drain()
    assert ledger(s.dsn, s.group, s.topic)[q]["events"] == len(records[q])
