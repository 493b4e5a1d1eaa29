"""Every compression codec Kafka defines, from two independent producers, through a real worker.

For each of none, gzip, snappy, lz4 and zstd: aiokafka and confluent-kafka (librdkafka) each
send metric, chat and analysis records in compressed batches (valid ones and a few invalid);
the batches on the broker are checked to carry the codec; one worker applies them; every row
holds exactly what was sent, every invalid record is a dead letter with its reason, and
`eventsink verify` is exact on the three topics.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaClient, TopicPartition
from aiokafka.protocol.fetch import FetchRequest
from aiokafka.record.memory_records import MemoryRecords

from schemas.deadletter import Reason
from tests.faults.traffic import oracle
from tests.helpers import Scenario, WorkerProcess, wait_applied
from tests.producers import CODECS, Client, Raw, create_topics, last_offsets, produce
from tests.stored import dead_letters, expected, payload, rows

pytestmark = pytest.mark.e2e

# Kafka's codec ids in a record batch's attributes.
CODEC_IDS = {"none": 0, "gzip": 1, "snappy": 2, "lz4": 3, "zstd": 4}
CLIENTS: tuple[Client, ...] = ("aiokafka", "confluent")


def records(kind: str, tenant: str, client: str, count: int) -> tuple[list[Raw], list[dict[str, Any]], list[Raw]]:
    """`count` valid records of a kind (with varied values), and two invalid ones."""
    valid = []
    for i in range(count):
        change: dict[str, Any] = {"occurred_at": f"2024-05-01T12:{i % 60:02d}:00.{i:06d}+0{i % 10}:30"}
        if kind == "metric":
            change |= {"value": i * 1.5 - 7, "tags": {"client": client, "i": str(i)}, "unit": "ms" if i % 2 else None}
        elif kind == "chat":
            change |= {"content": f"message {i} from {client} " + "é" * i, "prompt_tokens": i, "model": "m"}
        else:
            status = ("pending", "processing", "completed")[i % 3]
            change |= {"status": status, "progress": i % 101, "result": {"i": i, "f": i / 3} if i % 3 == 2 else None}
        valid.append(payload(kind, tenant, f"{client}-{kind}-{i}", **change))
    key = tenant.encode()
    invalid = [Raw(b"{not json", key), Raw(orjson.dumps({**valid[0], "dedupe_id": ""}), key)]
    return [Raw(orjson.dumps(v), key) for v in valid], valid, invalid


async def batch_codecs(bootstrap: str, topic: str, partitions: int) -> set[int]:
    """The codec ids of every record batch in a topic, read raw (a consumer would hide them)."""
    client = AIOKafkaClient(bootstrap_servers=bootstrap)
    await client.bootstrap()
    try:
        await client._wait_on_metadata(topic)
        found = set()
        for p in range(partitions):
            node = client.cluster.leader_for_partition(TopicPartition(topic, p))
            resp = await client.send(node, FetchRequest(100, 0, 64 << 20, 0, [(topic, [(p, 0, 64 << 20)])]))
            for _, parts in resp.topics:
                for *_, data in parts:
                    batches = MemoryRecords(data or b"")
                    while batches.has_next():
                        found.add(batches.next_batch().compression_type)
        return found
    finally:
        await client.close()


@pytest.mark.parametrize("codec", CODECS)
def test_compressed_batches_from_both_clients_are_applied_exactly(scenario: Scenario, codec: str) -> None:
    s = scenario
    topics = {"metric": s.topic, "chat": s.chat_topic, "analysis": s.analysis_topic}
    create_topics(s.bootstrap, [name for t in topics.values() for name in (t, f"{t}.dlq")])
    sent: dict[str, dict[tuple[str, str], dict[str, Any]]] = {kind: {} for kind in topics}
    invalid: dict[str, list[tuple[int, int, Reason]]] = {kind: [] for kind in topics}
    ends: dict[str, dict[int, int]] = {kind: {} for kind in topics}
    tenants = []
    for client in CLIENTS:
        tenant = str(uuid.uuid4())
        tenants.append(tenant)
        for kind, topic in topics.items():
            raws, valid, bad = records(kind, tenant, client, 40)
            placed = produce(s.bootstrap, topic, raws + bad, client=client, compression=codec)
            for body in valid:
                sent[kind][(tenant, body["dedupe_id"])] = expected(kind, body)
            for (p, o), reason in zip(placed[-2:], (Reason.INVALID_JSON, Reason.INVALID_EVENT), strict=True):
                invalid[kind].append((p, o, reason))
            for p, o in last_offsets(placed).items():
                ends[kind][p] = max(o, ends[kind].get(p, -1))
    for topic in topics.values():
        assert asyncio.run(batch_codecs(s.bootstrap, topic, 4)) == {CODEC_IDS[codec]}, f"{topic} not all {codec}"

    w = WorkerProcess(s.env(), s.data_dir / "worker.log").start()
    try:
        for kind, topic in topics.items():
            wait_applied(s.dsn, s.group, topic, ends[kind])
        for kind, topic in topics.items():
            assert rows(s.dsn, kind, tenants) == sent[kind], f"{kind} rows differ from what was sent"
            dead = dead_letters(s.bootstrap, f"{topic}.dlq")
            for p, o, reason in invalid[kind]:
                assert [d.info.reason for d in dead[(p, o)]] == [reason.value], (kind, p, o)
        oracle(s)
    finally:
        assert w.stop() == 0
