"""Producing exact records to the test broker with either of two independent clients.

`produce(bootstrap, topic, records, client=..., compression=...)` sends `Raw` records in order
and returns where each landed, `(partition, offset)`, in the order given:

- `client="aiokafka"`: the client the worker itself is built on;
- `client="confluent"`: librdkafka (confluent-kafka), what most services publish with. It sends
  what aiokafka refuses to: a record with neither key nor value, header values of None. On
  Tansu it needs `enable.idempotence: False` (set here).

`compression` is Kafka's `compression.type` (none, gzip, snappy, lz4, zstd): the records are
sent in compressed batches (several records per batch unless `batch_each`). Both clients check
the *uncompressed* size against their own limit, raised here to `max_bytes` so that large
records reach the broker (Tansu has no limit of its own).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from aiokafka import AIOKafkaProducer

from streams.tools.topics import SOURCE_CONFIG, TopicSpec, ensure_topics

Client = Literal["aiokafka", "confluent"]
CODECS = ("none", "gzip", "snappy", "lz4", "zstd")
MAX_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class Raw:
    """One record as it goes on the wire."""

    value: bytes | None
    key: bytes | None = None
    headers: tuple[tuple[str, bytes | None], ...] = ()
    partition: int | None = None  # None: the client's partitioner decides
    timestamp_ms: int | None = None  # CreateTime; None: now (confluent-kafka also reads 0 as now)


def produce(
    bootstrap: str,
    topic: str,
    records: Sequence[Raw],
    client: Client = "aiokafka",
    compression: str = "none",
    *,
    batch_each: bool = False,
    max_bytes: int = MAX_BYTES,
) -> list[tuple[int, int]]:
    """Send `records` in order; return each one's (partition, offset). Raises what the client
    raises when it refuses a record or the broker does not acknowledge it.

    `batch_each` waits for each record's acknowledgement before sending the next: one record
    per batch (Tansu reports a partition's end as its last batch's first offset + 1).
    """
    if compression not in CODECS:
        raise ValueError(f"unknown compression {compression!r}; one of {CODECS}")
    if client == "confluent":
        return _confluent(bootstrap, topic, records, compression, batch_each, max_bytes)
    coro = produce_aiokafka(bootstrap, topic, records, compression, batch_each=batch_each, max_bytes=max_bytes)
    return _run(coro)


async def produce_aiokafka(
    bootstrap: str,
    topic: str,
    records: Sequence[Raw],
    compression: str = "none",
    *,
    batch_each: bool = False,
    max_bytes: int = MAX_BYTES,
) -> list[tuple[int, int]]:
    """`produce` with aiokafka, for callers already inside an event loop."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        enable_idempotence=False,
        compression_type=None if compression == "none" else compression,
        max_request_size=max_bytes,
        linger_ms=5,
        acks="all",
    )

    async def send(r: Raw) -> asyncio.Future:
        """Queue one record; the future is its acknowledgement."""
        return await producer.send(
            topic, r.value, r.key, partition=r.partition, timestamp_ms=r.timestamp_ms, headers=list(r.headers) or None
        )

    await producer.start()
    try:
        if batch_each:
            acked = [await (await send(r)) for r in records]
        else:
            acked = await asyncio.gather(*[await send(r) for r in records])
        return [(md.partition, md.offset) for md in acked]
    finally:
        await producer.stop()


def _confluent(
    bootstrap: str, topic: str, records: Sequence[Raw], compression: str, batch_each: bool, max_bytes: int
) -> list[tuple[int, int]]:
    from confluent_kafka import KafkaException, Producer

    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "enable.idempotence": False,  # Tansu: librdkafka's idempotent producer is not needed here
            "compression.type": compression,
            "message.max.bytes": max_bytes,
            "linger.ms": 5,
            "acks": "all",
            # Order is what the tests assert on: one request in flight, so retries cannot reorder.
            "max.in.flight.requests.per.connection": 1,
            # The Java client's partitioner, aiokafka's too: a key lands on the same partition
            # whichever client sent it (librdkafka's default, consistent_random, hashes otherwise).
            "partitioner": "murmur2_random",
        }
    )
    placed: list[tuple[int, int] | None] = [None] * len(records)
    errors: list[str] = []

    def delivered(i: int):  # type: ignore[no-untyped-def]
        def callback(err, msg) -> None:  # type: ignore[no-untyped-def]
            if err is not None:
                errors.append(f"record {i}: {err}")
            else:
                placed[i] = (msg.partition(), msg.offset())

        return callback

    for i, r in enumerate(records):
        kwargs = {"value": r.value, "key": r.key, "on_delivery": delivered(i)}
        if r.headers:
            kwargs["headers"] = list(r.headers)
        if r.partition is not None:
            kwargs["partition"] = r.partition
        if r.timestamp_ms is not None:
            kwargs["timestamp"] = r.timestamp_ms
        producer.produce(topic, **kwargs)
        if batch_each:
            producer.flush(30)
        else:
            producer.poll(0)
    left = producer.flush(60)
    if left or errors:
        raise KafkaException(f"{left} records not delivered; {errors[:5]}")
    assert all(p is not None for p in placed)
    return placed  # type: ignore[return-value]


def _run(coro):  # type: ignore[no-untyped-def]
    """Run a coroutine to completion, also from a thread whose event loop is running."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    box: dict[str, object] = {}

    def target() -> None:
        try:
            box["result"] = asyncio.run(coro)
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["result"]


def last_offsets(placed: Sequence[tuple[int, int]]) -> dict[int, int]:
    """The highest offset per partition, what `tests.helpers.wait_applied` waits for."""
    last: dict[int, int] = {}
    for p, o in placed:
        last[p] = max(o, last.get(p, -1))
    return last


def create_topics(bootstrap: str, names: Sequence[str], partitions: int = 4) -> None:
    """Create topics (explicit configs, `partitions` each) before anything is produced to them:
    a broker that creates topics on first use would choose the partition count itself."""
    asyncio.run(ensure_topics([bootstrap], [TopicSpec(n, partitions, config=SOURCE_CONFIG) for n in names]))


def header_key_not_utf8(value: bytes, key: bytes | None = None) -> bytes:
    """A record batch (magic 2, uncompressed, one record) whose header key is b"\\xff\\xfe".

    Neither client can send one (aiokafka wants str keys, confluent-kafka writes a bytes key as
    its repr); a client whose header keys are bytes (franz-go, sarama) can. Built with
    aiokafka's batch builder under a placeholder key of the same length, then patched, and the
    CRC-32C (over attributes to the end) computed again.
    """
    import struct

    from aiokafka.record.default_records import _DefaultRecordBatchBuilderPy as Builder
    from aiokafka.record.util import calc_crc32c

    builder = Builder(
        magic=2,
        compression_type=0,
        is_transactional=0,
        producer_id=-1,
        producer_epoch=-1,
        base_sequence=-1,
        batch_size=1 << 24,
    )
    builder.append(0, timestamp=None, key=key, value=value, headers=[("QQ", b"x")])
    batch = bytearray(builder.build())
    at = batch.index(b"QQ")
    batch[at : at + 2] = b"\xff\xfe"
    struct.pack_into(">I", batch, 17, calc_crc32c(bytes(batch[21:])))
    return bytes(batch)


def produce_batch(bootstrap: str, topic: str, partition: int, batch: bytes) -> int:
    """Append a raw record batch to a partition (a Produce request, acks=all); return its base offset."""
    from aiokafka import TopicPartition
    from aiokafka.client import AIOKafkaClient
    from aiokafka.protocol.produce import ProduceRequest

    async def go() -> int:
        client = AIOKafkaClient(bootstrap_servers=bootstrap)
        await client.bootstrap()
        try:
            await client._wait_on_metadata(topic)
            node = client.cluster.leader_for_partition(TopicPartition(topic, partition))
            response = await client.send(node, ProduceRequest(None, -1, 10000, [(topic, [(partition, batch)])]))
            (_, [(_, error, base_offset, *_)]) = response.topics[0]
            if error:
                raise RuntimeError(f"produce refused: error {error}")
            return int(base_offset)
        finally:
            await client.close()

    return _run(go())
