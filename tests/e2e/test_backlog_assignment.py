"""Two workers started together on a backlog whose keys crowd two partitions: the leader assigns
by backlog, so each worker gets one of the heavy partitions (by count alone, Faust's round robin
gives both to one worker), and every event is applied once either way."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from aiokafka.partitioner import DefaultPartitioner

from streams.tools.topics import SOURCE_CONFIG, TopicSpec, ensure_topics
from tests.e2e.test_scaling import stop_all
from tests.helpers import Scenario, WorkerProcess, wait_applied, wait_until
from tests.workload import Feeder, Sent, assert_exactly_once, create_topics, publish

pytestmark = pytest.mark.e2e

PARTITIONS = 4
HEAVY = (0, 2)  # Faust's round robin puts partitions 0 and 2 on the same member


def tenants_on(partition: int, n: int) -> list[str]:
    """`n` tenant ids whose record key (the id's text) the publisher's partitioner (aiokafka's,
    Kafka's murmur2) puts on `partition`."""
    partitioner, found = DefaultPartitioner(), []
    everything = list(range(PARTITIONS))
    while len(found) < n:
        tenant = str(uuid.uuid4())
        if partitioner(tenant.encode(), everything, everything) == partition:
            found.append(tenant)
    return found


def first_shared_assignment(a: WorkerProcess, b: WorkerProcess, topic: str) -> tuple[list[int], list[int]] | None:
    """The two workers' partitions in the first group generation in which both had some."""
    ga, gb = dict(a.generations(topic)), dict(b.generations(topic))
    for generation in sorted(set(ga) & set(gb)):
        if ga[generation] and gb[generation]:
            return ga[generation], gb[generation]
    return None


@pytest.mark.parametrize(
    "by_backlog, chat_partitions",
    [(True, PARTITIONS), (False, PARTITIONS), (True, 2 * PARTITIONS)],
    # chat-8: the worker's chat topic (empty) has other partitions than its metric topic, so
    # Faust assigns the two apart; the metric topic is balanced on its own.
    ids=["by-backlog", "by-count", "by-backlog-chat-8"],
)
def test_two_workers_share_a_skewed_backlog_by_its_weight(
    scenario: Scenario, by_backlog: bool, chat_partitions: int
) -> None:
    s = scenario
    # Two tenants on each heavy partition, one on each light one: the heavy partitions hold
    # two thirds of the records.
    sent = Sent(tenants=[*tenants_on(0, 2), *tenants_on(2, 2), *tenants_on(1, 1), *tenants_on(3, 1)])
    create_topics(s, PARTITIONS)
    if chat_partitions != PARTITIONS:
        chat = [TopicSpec(t, chat_partitions, config=SOURCE_CONFIG) for t in (s.chat_topic, f"{s.chat_topic}.dlq")]
        asyncio.run(ensure_topics([s.bootstrap], chat))
    publish(s, sent, 6000, seed=71)
    heavy = {p: sent.last_offsets[p] + 1 for p in HEAVY}
    assert min(heavy.values()) > 1500 and max(sent.last_offsets[p] + 1 for p in (1, 3)) < 1500
    setting = {"EVENTSINK_ASSIGN_BY_BACKLOG_RECORDS": "1000" if by_backlog else "0"}
    # Started together: both join in Tansu's first hold, so the first assignment is of both.
    a = WorkerProcess(s.env(**setting), s.data_dir / "a.log").start()
    b = WorkerProcess(s.env(**setting), s.data_dir / "b.log").start()
    feeder = Feeder(s, sent, chunk=100, rate=200, seed=72).start()  # the stream goes on meanwhile
    try:
        wait_until(lambda: first_shared_assignment(a, b, s.topic) is not None, 90, what="both workers assigned")
        split = first_shared_assignment(a, b, s.topic)
        assert split is not None
        together = [sorted(set(HEAVY) & set(ps)) for ps in split]
        if by_backlog:
            assert together in ([[0], [2]], [[2], [0]]), split
            leader = a if a.logged("partitions assigned by backlog") else b
            (entry,) = [e for e in leader.logs() if e.get("event") == "partitions assigned by backlog"][:1]
            assert entry["swaps"]
        else:
            assert list(HEAVY) in together, split  # Faust's own: both on one worker
            assert not a.logged("partitions assigned by backlog") and not b.logged("partitions assigned by backlog")
        feeder.stop()
        wait_applied(s.dsn, s.group, s.topic, sent.last_offsets, timeout=120)
        assert_exactly_once(s, sent)
    finally:
        stop_all(feeder, a, b)
