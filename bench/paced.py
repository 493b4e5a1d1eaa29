"""The latency scenario's topic and producer: probe records first, then metric events at a fixed rate.

Each run of the scenario has a topic of its own (8 partitions, explicit configs, a DLQ), empty
when the contender starts. One probe record per partition (dedupe_id `probe-<partition>`) is
sent first: once every probe's row is committed, the contender consumes every partition. Then
`publish` sends metric events (`streams.dev.loadgen.metric.metric_payload`, 50 tenants, no
duplicates, no invalid records) on a fixed schedule: record i is due at t0 + i / rate.

The producer is aiokafka's (`--producer confluent`: librdkafka's, the client most services use,
whose work is in C threads), as services publish: acks=all, linger 5 ms, not idempotent (Tansu).
librdkafka's costs the harness less CPU, but on Tansu its acknowledgements come later and the
broker works more: at 13,175 records/s, p99 to the broker's acknowledgement 366 and 650 ms
against 76 with aiokafka, and the worker's p99 3.6 to 4.3 s against 0.96 (bench/RESULTS.md,
sixth round). The harness sets each record's timestamp itself (its Kafka CreateTime,
milliseconds since the epoch, `time.time()` of this host) just before handing it to the
producer, and keeps it: record i, whose dedupe_id is `<run>-<i>`, was created at
`created_ms[i]`. A record is thus timed from before the producer's linger, not from the broker.

The harness shares the machine with the contender, the broker and PostgreSQL, so it spends as
little as it can while the clock runs: every record's key and value are made before the first
send (a record's value carries its dedupe_id, not its send time), and the broker's
acknowledgement is timed for every `ACK_SAMPLE`-th record only (the publishing side's share of
the latency; a record the broker never took shows anyway, as a row missing at the end).
Measured alone at 17,000 records/s with librdkafka: 25 µs of the harness's CPU per record
when each value was made at its send and each acknowledgement timed, 14 µs this way (aiokafka's:
46 µs before).
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
ACK_SAMPLE = 8  # every ACK_SAMPLE-th record's acknowledgement is timed


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
    # When the broker acknowledged record i, for every ACK_SAMPLE-th record (0.0: not timed).
    acked_ms: array = field(default_factory=lambda: array("d"))
    seconds: float = 0.0  # from the schedule's start to the last send
    behind_s: float = 0.0  # how late the producer was on its schedule, at worst

    @property
    def sent(self) -> int:
        return len(self.created_ms)

    def to_ack_ms(self) -> list[float]:
        """Per record acknowledged and timed, CreateTime -> the broker's acknowledgement reached the harness, ms."""
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


class Schedule:
    """Record i is due at t0 + i / rate: what is due now, and each record's key, value and
    CreateTime, as both producers send them. Every record's key and value are made here
    (seconds for a million records): a caller that times the publishing makes the schedule
    first, then hands it to `publish`."""

    def __init__(self, topic: LiveTopic, rate: float, duration_s: float) -> None:
        tenants = tenant_ids(topic.spec)
        rng = random.Random(topic.spec.seed + 1)
        self.topic = topic.topic
        self.rate = rate
        self.total = max(1, round(rate * duration_s))
        self.paced = Paced(rate, uuid.UUID(int=rng.getrandbits(128), version=4).hex[:12])
        self.paced.acked_ms.extend([0.0] * self.total)
        # Made now, not while the clock runs (see the module's docstring).
        self.records: list[tuple[bytes, bytes]] = []
        for i in range(self.total):
            tenant = tenants[rng.randrange(len(tenants))]
            self.records.append((tenant.encode(), _payload(rng, tenant, f"{self.paced.run}-{i}")))
        self.t0 = self.last = 0.0

    def start(self) -> None:
        """Record 0 is due now: called once the producer is ready, so that its start-up does
        not count as lateness."""
        self.t0 = self.last = time.monotonic()

    def due(self) -> int:
        """How many records are due by now (the producer's lateness noted)."""
        paced = self.paced
        due = min(self.total, int((time.monotonic() - self.t0) * self.rate) + 1)
        paced.behind_s = max(paced.behind_s, (due - 1 - paced.sent) / self.rate)
        return due

    def record(self) -> tuple[bytes, bytes, int]:
        """The next record's key, value and CreateTime (ms), taken just before it is sent."""
        key, value = self.records[self.paced.sent]
        return key, value, time.time_ns() // 1_000_000

    def wait_s(self) -> float:
        """Until the next record is due, a millisecond at least: records sent in one wake-up
        carry their own timestamps, so a burst does not bias their latency."""
        self.last = time.monotonic()
        return max(0.001, self.t0 + self.paced.sent / self.rate - self.last)

    def done(self) -> Paced:
        self.paced.seconds = self.last - self.t0
        return self.paced


async def _publish(bootstrap: str, schedule: Schedule) -> Paced:
    paced = schedule.paced
    p = producer(bootstrap)
    await p.start()
    try:
        pending: list[Any] = []
        schedule.start()
        while paced.sent < schedule.total:
            due = schedule.due()
            while paced.sent < due:
                key, value, created = schedule.record()
                fut = await p.send(schedule.topic, value, key=key, timestamp_ms=created)
                if paced.sent % ACK_SAMPLE == 0:
                    fut.add_done_callback(partial(_on_ack, paced.acked_ms, paced.sent))
                pending.append(fut)
                paced.created_ms.append(created)
                if len(pending) >= SETTLE_EVERY:
                    pending = _settle(pending)
            await asyncio.sleep(schedule.wait_s())
        schedule.done()
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


def _publish_confluent(bootstrap: str, schedule: Schedule) -> Paced:
    paced = schedule.paced
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
    schedule.start()
    while paced.sent < schedule.total:
        due = schedule.due()
        while paced.sent < due:
            key, value, created = schedule.record()
            on_delivery = partial(acks.on_delivery, paced.sent) if paced.sent % ACK_SAMPLE == 0 else None
            while True:
                try:
                    p.produce(schedule.topic, value, key, timestamp=created, on_delivery=on_delivery)
                    break
                except BufferError:  # the local queue is full: let deliveries drain it
                    p.poll(0.01)
            paced.created_ms.append(created)
        p.poll(0)  # delivery reports, timed as they are served
        acks.check()
        p.poll(schedule.wait_s())  # delivery reports are served while waiting
    schedule.done()
    left = p.flush(60)
    acks.check()
    if left:
        raise RuntimeError(f"{left} records still unacknowledged 60 s after the last send")
    return paced


def publish(bootstrap: str, schedule: Schedule, producer_name: str = "aiokafka") -> Paced:
    """Send the schedule's records (made beforehand, so that making them is not in the caller's
    timing) at its rate with `producer_name` (one of PRODUCERS); returns when all are acked."""
    if producer_name == "confluent":
        return _publish_confluent(bootstrap, schedule)
    return aio.run(_publish(bootstrap, schedule))
