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
    sent = Sent(tenants=[str(uuid.uuid4()) for _ in range(40)])  # every partition has records
    await asyncio.to_thread(create_topics, s)
    await asyncio.to_thread(publish, s, sent, 400)
    records = await read_all(s, range(4))
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
