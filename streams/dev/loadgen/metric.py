"""Load generation: realistic metric traffic with duplicates and invalid records mixed in.

The report says exactly what was sent (unique valid events per tenant, duplicates, invalid
records, last offset per partition). What the database must hold is computed from the topic
(`streams.tools.expected`).
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import orjson
from aiokafka.errors import KafkaError

from streams import logs
from streams.publish.publisher import Publisher

log = logs.get(__name__)

METRIC_NAMES = ("cpu.usage", "mem.rss", "disk.io", "net.rx", "net.tx", "http.latency", "queue.depth")
HOSTS = tuple(f"host-{i:02d}" for i in range(12))
REGIONS = ("eu-west-1", "us-east-1", "ap-south-1")
_DROP = object()


def metric_payload(rng: random.Random, tenant: str, dedupe_id: str, at: datetime) -> dict[str, object]:
    payload: dict[str, object] = {
        "tenant_id": tenant,
        "dedupe_id": dedupe_id,
        "name": rng.choice(METRIC_NAMES),
        "value": round(rng.lognormvariate(3, 1), 6),
        "occurred_at": at.isoformat().replace("+00:00", "Z"),
        "tags": {"host": rng.choice(HOSTS), "region": rng.choice(REGIONS)},
    }
    if rng.random() < 0.3:
        payload["unit"] = "ms"
    return payload


def poison_records(rng: random.Random, tenant: str, n: int) -> list[tuple[str, bytes | None, bytes]]:
    """`n` invalid records cycling through every way a producer gets it wrong: (kind, key, value)."""
    key = tenant.encode()
    good = metric_payload(rng, tenant, "p", datetime.now(UTC))

    def variant(i: int, **change: object) -> bytes:
        body = {**good, "dedupe_id": f"poison-{i}", **change}
        return orjson.dumps({k: v for k, v in body.items() if v is not _DROP})

    makers: list[tuple[str, Callable[[int], tuple[bytes | None, bytes]]]] = [
        ("not_json", lambda i: (key, b"{this is not json " + str(i).encode())),
        ("not_an_object", lambda i: (key, orjson.dumps([i, "metric"]))),
        ("missing_field", lambda i: (key, variant(i, name=_DROP))),
        ("bad_uuid", lambda i: (b"not-a-uuid", variant(i, tenant_id=f"tenant-{i}"))),
        ("empty_dedupe_id", lambda i: (key, variant(i, dedupe_id=""))),
        ("long_dedupe_id", lambda i: (key, variant(i, dedupe_id="x" * 129))),
        ("nan", lambda i: (key, variant(i, value=0.5).replace(b'"value":0.5', b'"value":NaN'))),
        ("bad_timestamp", lambda i: (key, variant(i, occurred_at="yesterday at noon"))),
        ("naive_timestamp", lambda i: (key, variant(i, occurred_at="2024-05-01T12:00:00"))),
        ("not_utf8", lambda i: (key, b'{"tenant_id": "\xff\xfe", "n": ' + str(i).encode() + b"}")),
        ("wrong_type", lambda i: (key, variant(i, value="forty-two"))),
        ("unsupported_version", lambda i: (key, variant(i, schema_version=99))),
        ("nul_character", lambda i: (key, variant(i, name="cpu\u0000usage"))),
        ("sql_injection", lambda i: (key, variant(i, tenant_id="'); DROP TABLE metrics_raw; --"))),
        ("oversized", lambda i: (key, variant(i, tags={f"t{n}": "x" * 250 for n in range(80)}))),
    ]
    out = []
    for i in range(n):
        kind, make = makers[i % len(makers)]
        k, v = make(i)
        out.append((kind, k, v))
    return out


@dataclass
class Counts:
    """What a load generator sent: the part every kind's report shares."""

    sent: int = 0
    unique: int = 0
    duplicates: int = 0
    invalid: int = 0
    seconds: float = 0.0
    invalid_kinds: Counter[str] = field(default_factory=Counter)
    last_offsets: dict[int, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        return {
            "sent": self.sent,
            "unique": self.unique,
            "duplicates": self.duplicates,
            "invalid": self.invalid,
            "seconds": round(self.seconds, 3),
            "events_per_second": round(self.sent / self.seconds, 1) if self.seconds else None,
            "invalid_kinds": dict(self.invalid_kinds),
            "last_offsets": {str(k): v for k, v in sorted(self.last_offsets.items())},
        }


class Sender:
    """Publishes a generator's records: paced to `rate` per second (none: as fast as the broker
    takes them), acknowledged in bulk, the last offset per partition and progress kept."""

    def __init__(
        self,
        publisher: Publisher,
        topic: str,
        counts: Counts,
        rate: float | None,
        on_progress: Callable[[int], None] | None,
    ) -> None:
        self.publisher, self.topic, self.counts = publisher, topic, counts
        self.rate, self.on_progress = rate, on_progress
        self.settle_every = 2000 if not rate else max(1, min(2000, int(rate / 4)))
        self.start = time.monotonic()
        self._pending: list[tuple[asyncio.Future, bytes | None, bytes]] = []

    # Sends of one record a broker refused with a retriable error past the producer's own retries
    # (Tansu answered NotLeaderForPartition for a minute once, under a loaded machine).
    ATTEMPTS = 3

    async def send(self, key: bytes | None, value: bytes) -> None:
        self._pending.append((await self.publisher.publish_raw(self.topic, key, value), key, value))
        self.counts.sent += 1
        if len(self._pending) >= self.settle_every:
            await self._settle()
        if self.rate:
            ahead = self.counts.sent / self.rate - (time.monotonic() - self.start)
            if ahead > 0.005:
                await asyncio.sleep(ahead)

    async def close(self) -> None:
        await self._settle()
        self.counts.seconds = time.monotonic() - self.start

    async def _settle(self) -> None:
        """Until every record sent is acknowledged. A record refused with a retriable error is sent
        again (at least once, as producers do: the dedupe makes a second copy harmless)."""
        last = self.counts.last_offsets
        pending, self._pending = self._pending, []
        for attempt in range(1, self.ATTEMPTS + 1):
            outcomes = await asyncio.gather(*(f for f, _, _ in pending), return_exceptions=True)
            again = []
            for (_, key, value), outcome in zip(pending, outcomes, strict=True):
                if isinstance(outcome, KafkaError) and outcome.retriable and attempt < self.ATTEMPTS:
                    again.append((key, value, outcome))
                elif isinstance(outcome, BaseException):
                    raise outcome
                elif outcome.offset > last.get(outcome.partition, -1):
                    last[outcome.partition] = outcome.offset
            if not again:
                break
            log.warning(
                "records refused by the broker; sending them again",
                topic=self.topic,
                records=len(again),
                error=repr(again[0][2]),
                attempt=attempt,
            )
            pending = [(await self.publisher.publish_raw(self.topic, k, v), k, v) for k, v, _ in again]
        if self.on_progress:
            self.on_progress(self.counts.sent)


@dataclass
class LoadReport(Counts):
    unique_per_tenant: Counter[str] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, object]:
        return {**super().as_dict(), "unique_per_tenant": dict(self.unique_per_tenant)}


@dataclass(kw_only=True)
class Load:
    """What every kind's load takes: its tenants (`tenants` drawn from the seed, or `tenant_ids`),
    the fraction of records that re-send an earlier event, records per second (None: as fast as
    the broker takes them) and the seed (None: another workload each time)."""

    tenants: int = 5
    duplicates: float = 0.1
    rate: float | None = None
    seed: int | None = None
    tenant_ids: list[str] | None = None

    def start(self) -> tuple[random.Random, list[str], str]:
        """The run's random source, its tenant ids and its id (the prefix of its dedupe ids),
        drawn in this order: one seed, one workload."""
        rng = random.Random(self.seed)
        tenants = self.tenant_ids or [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(self.tenants)]
        run = uuid.UUID(int=rng.getrandbits(128), version=4).hex[:12]
        return rng, tenants, run


@dataclass
class MetricLoad(Load):
    count: int
    invalid: float = 0.0


async def produce_metrics(
    publisher: Publisher,
    topic: str,
    load: MetricLoad,
    on_progress: Callable[[int], None] | None = None,
    report: LoadReport | None = None,
) -> LoadReport:
    """Send `load.count` records: new events, re-sends of earlier ones, invalid records."""
    rng, tenants, run = load.start()
    report = report if report is not None else LoadReport()
    poison = poison_records(rng, tenants[0], 64)
    sent_events: list[tuple[bytes, bytes]] = []
    sender = Sender(publisher, topic, report, load.rate, on_progress)
    base = datetime.now(UTC) - timedelta(hours=1)
    for i in range(load.count):
        roll = rng.random()
        if roll < load.invalid:
            kind, key, value = poison[report.invalid % len(poison)]
            report.invalid += 1
            report.invalid_kinds[kind] += 1
        elif roll < load.invalid + load.duplicates and sent_events:
            key, value = sent_events[rng.randrange(max(0, len(sent_events) - 5000), len(sent_events))]
            report.duplicates += 1
        else:
            tenant = tenants[rng.randrange(len(tenants))]
            dedupe_id = f"{run}-{i}"
            at = base + timedelta(microseconds=rng.randrange(3_600_000_000))
            key, value = tenant.encode(), orjson.dumps(metric_payload(rng, tenant, dedupe_id, at))
            sent_events.append((key, value))
            report.unique += 1
            report.unique_per_tenant[tenant] += 1
        await sender.send(key, value)
    await sender.close()
    return report
