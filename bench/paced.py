"""The latency scenario's topic and producer: probe records first, then metric events at a fixed rate.

Each run of the scenario has a topic of its own (8 partitions, explicit configs, a DLQ), empty
when the contender starts. One probe record per partition (dedupe_id `probe-<partition>`) is
sent first: once every probe's row is committed, the contender consumes every partition. Then
`publish` sends metric events (`streams.dev.loadgen.metric.metric_payload`, 50 tenants, no
duplicates, no invalid records) on a fixed schedule: record i is due at t0 + i / rate.

The producer is aiokafka's (`--producer confluent`: librdkafka's, the client most services
use, whose work is in C threads), as services publish: acks=all, linger 5 ms, not idempotent
(Tansu). The harness sets each record's timestamp itself
(its Kafka CreateTime, milliseconds since the epoch, `time.time()` of this host) just before
handing it to the producer, and keeps it: record i, whose dedupe_id is `<run>-<i>`, was created
at `created_ms[i]`. A record is thus timed from before the producer's linger, not from the broker.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from array import array
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer
from confluent_kafka import KafkaError, Message, Producer

from bench.workload import OneMetricTopic, source_specs
from streams import aio
from streams.dev.loadgen.metric import metric_payload
from streams.tools.topics import ensure_topics

LINGER_MS = 5
PRODUCER_NAMES = {"confluent": "librdkafka (confluent-kafka)", "aiokafka": "aiokafka"}
PRODUCERS = tuple(PRODUCER_NAMES)
PROBE = "probe-"
SETTLE_EVERY = 1000  # sends between two checks of the acknowledgements that came


@dataclass(frozen=True)
class LiveSpec:
    partitions: int
    tenants: int
    seed: int


@dataclass(frozen=True)
class LiveTopic(OneMetricTopic):
    """The workload of one latency run (bench.contenders.Context.workload): a topic published to
    while the contender runs, so nothing is known to be sent when it starts."""

    spec: LiveSpec
    topic: str
    sent: int = 0
    unique: int = 0


@dataclass
class Paced:
    """What `publish` sent: `created_ms[i]` is the CreateTime of the record with dedupe_id `<run>-<i>`."""

    rate: float  # asked, records/s
    run: str
    created_ms: array = field(default_factory=lambda: array("q"))
    acked_ms: array = field(default_factory=lambda: array("d"))  # when the broker acknowledged record i
    seconds: float = 0.0  # from the schedule's start to the last send
    behind_s: float = 0.0  # how late the producer was on its schedule, at worst

    @property
    def sent(self) -> int:
        return len(self.created_ms)

    def to_ack_ms(self) -> list[float]:
        """Per record acknowledged, CreateTime -> the broker's acknowledgement reached the harness, ms."""
        return [a - c for c, a in zip(self.created_ms, self.acked_ms, strict=False) if a]

    @property
    def achieved(self) -> float:
        """Records per second actually handed to the producer, first send to last."""
        return (self.sent - 1) / self.seconds if self.seconds > 0 else 0.0

    def index(self, dedupe_id: str) -> int | None:
        """i of a dedupe_id `<run>-<i>` this run sent; None for any other (a probe)."""
        run, _, i = dedupe_id.rpartition("-")
        if run != self.run or not i.isdigit() or int(i) >= self.sent:
            return None
        return int(i)


def tenant_ids(spec: LiveSpec) -> list[str]:
    rng = random.Random(spec.seed)
    return [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(spec.tenants)]


def producer(bootstrap: str) -> AIOKafkaProducer:
    return AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=LINGER_MS, enable_idempotence=False)


def _payload(rng: random.Random, tenant: str, dedupe_id: str) -> bytes:
    return orjson.dumps(metric_payload(rng, tenant, dedupe_id, datetime.now(UTC)))


async def _create_and_probe(bootstrap: str, topic: LiveTopic) -> None:
    await ensure_topics([bootstrap], source_specs(topic.topic, topic.spec.partitions))
    tenant = tenant_ids(topic.spec)[0]
    rng = random.Random(topic.spec.seed)
    p = producer(bootstrap)
    await p.start()
    try:
        for partition in range(topic.spec.partitions):
            value = _payload(rng, tenant, f"{PROBE}{partition}")
            await p.send(topic.topic, value, key=tenant.encode(), partition=partition)
        await p.flush()
    finally:
        await p.stop()


def create_and_probe(bootstrap: str, topic: LiveTopic) -> None:
    """Create the run's topic (and its DLQ) and send one probe record to each partition."""
    asyncio.run(_create_and_probe(bootstrap, topic))


def _on_ack(acked_ms: array, i: int, fut: Any) -> None:
    if not fut.cancelled() and fut.exception() is None:
        acked_ms[i] = time.time() * 1000


def _settle(pending: list[Any]) -> list[Any]:
    """The sends not yet acknowledged; raises the first failure of those that were."""
    still = []
    for fut in pending:
        if fut.done():
            fut.result()
        else:
            still.append(fut)
    return still


async def _publish(bootstrap: str, topic: LiveTopic, rate: float, duration_s: float) -> Paced:
    tenants = tenant_ids(topic.spec)
    rng = random.Random(topic.spec.seed + 1)
    paced = Paced(rate, uuid.UUID(int=rng.getrandbits(128), version=4).hex[:12])
    total = max(1, round(rate * duration_s))
    paced.acked_ms.extend([0.0] * total)
    p = producer(bootstrap)
    await p.start()
    try:
        pending: list[Any] = []
        t0 = time.monotonic()
        last = t0
        while paced.sent < total:
            now = time.monotonic()
            due = min(total, int((now - t0) * rate) + 1)
            paced.behind_s = max(paced.behind_s, (due - 1 - paced.sent) / rate)
            while paced.sent < due:
                tenant = tenants[rng.randrange(len(tenants))]
                value = _payload(rng, tenant, f"{paced.run}-{paced.sent}")
                created = time.time_ns() // 1_000_000
                fut = await p.send(topic.topic, value, key=tenant.encode(), timestamp_ms=created)
                fut.add_done_callback(partial(_on_ack, paced.acked_ms, paced.sent))
                pending.append(fut)
                paced.created_ms.append(created)
                if len(pending) >= SETTLE_EVERY:
                    pending = _settle(pending)
            last = time.monotonic()
            # Sleep until the next record is due, a millisecond at least: records sent in one
            # wake-up carry their own timestamps, so a burst does not bias their latency.
            await asyncio.sleep(max(0.001, t0 + paced.sent / rate - time.monotonic()))
        paced.seconds = last - t0
        await p.flush()
        await asyncio.gather(*pending)
    finally:
        await p.stop()
    return paced


class _Acks:
    """librdkafka's delivery reports: record i's acknowledgement time, the first failure."""

    def __init__(self, acked_ms: array) -> None:
        self.acked_ms = acked_ms
        self.failure: KafkaError | None = None

    def on_delivery(self, i: int, err: KafkaError | None, _msg: Message) -> None:
        if err is not None:
            self.failure = self.failure or err
        else:
            self.acked_ms[i] = time.time() * 1000

    def check(self) -> None:
        if self.failure is not None:
            raise RuntimeError(f"the producer could not deliver a record: {self.failure}")


def _publish_confluent(bootstrap: str, topic: LiveTopic, rate: float, duration_s: float) -> Paced:
    tenants = tenant_ids(topic.spec)
    rng = random.Random(topic.spec.seed + 1)
    paced = Paced(rate, uuid.UUID(int=rng.getrandbits(128), version=4).hex[:12])
    total = max(1, round(rate * duration_s))
    paced.acked_ms.extend([0.0] * total)
    acks = _Acks(paced.acked_ms)
    p = Producer(
        {
            "bootstrap.servers": bootstrap,
            "acks": "all",
            "linger.ms": LINGER_MS,
            "enable.idempotence": False,  # Tansu has no InitProducerId
            "queue.buffering.max.messages": 1_000_000,
        }
    )
    t0 = time.monotonic()
    last = t0
    while paced.sent < total:
        now = time.monotonic()
        due = min(total, int((now - t0) * rate) + 1)
        paced.behind_s = max(paced.behind_s, (due - 1 - paced.sent) / rate)
        while paced.sent < due:
            tenant = tenants[rng.randrange(len(tenants))]
            i = paced.sent
            value = _payload(rng, tenant, f"{paced.run}-{i}")
            created = time.time_ns() // 1_000_000
            while True:
                try:
                    p.produce(
                        topic.topic, value, tenant.encode(), timestamp=created, on_delivery=partial(acks.on_delivery, i)
                    )
                    break
                except BufferError:  # the local queue is full: let deliveries drain it
                    p.poll(0.01)
            paced.created_ms.append(created)
        p.poll(0)  # delivery reports, timed as they are served
        acks.check()
        last = time.monotonic()
        # Sleep until the next record is due, a millisecond at least: records sent in one
        # wake-up carry their own timestamps, so a burst does not bias their latency. Delivery
        # reports are served while waiting.
        p.poll(max(0.001, t0 + paced.sent / rate - time.monotonic()))
    paced.seconds = last - t0
    left = p.flush(60)
    acks.check()
    if left:
        raise RuntimeError(f"{left} records still unacknowledged 60 s after the last send")
    return paced


def publish(bootstrap: str, topic: LiveTopic, rate: float, duration_s: float, producer_name: str = "aiokafka") -> Paced:
    """Send round(rate * duration_s) metric events at `rate` per second with `producer_name` (one
    of PRODUCERS); returns when all are acked."""
    if producer_name == "confluent":
        return _publish_confluent(bootstrap, topic, rate, duration_s)
    return aio.run(_publish(bootstrap, topic, rate, duration_s))
