"""The reference contender: eventsink's sink protocol driven by a plain aiokafka loop, no Faust.

    getmany → schemas.decode per record → Sink.write (COPY + ON CONFLICT DO NOTHING + ledger,
    one transaction per partition batch, partitions concurrently) → commit Kafka offsets

Reads the same environment as `eventsink worker` (KAFKA_BOOTSTRAP_SERVERS, DATABASE_URL,
EVENTSINK_*). Partitions are positioned from the ledger when assigned, as the worker does. There
is no dedupe fast path: every duplicate goes to the database, which drops it. Run until SIGTERM.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Sequence

import uvloop
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.structs import ConsumerRecord

from schemas import DeadLetter, Decoded, MetricEvent, decode
from sinks.core.batch import Batch, Record
from sinks.core.sink import Sink
from sinks.pool import open_pool
from sinks.writers.metric import MetricWriter
from streams.settings import Settings

MAX_RECORDS = 20_000  # per getmany, across partitions


class DeadLetterProducer:
    """Delivers a batch's dead letters to the DLQ topic before the batch commits."""

    def __init__(self, producer: AIOKafkaProducer, topic: str, group: str) -> None:
        self.producer = producer
        self.topic = topic
        self.group = group

    async def __call__(self, dead: list[DeadLetter], conn: object = None) -> None:
        sent = [await self.producer.send(self.topic, d.value, d.key, headers=d.dlq_headers(self.group)) for d in dead]
        await asyncio.gather(*sent)


class FromLedger(ConsumerRebalanceListener):  # type: ignore[misc]
    """Seek each assigned partition to the offset after the ledger's."""

    def __init__(self, consumer: AIOKafkaConsumer, sink: Sink, topic: str) -> None:
        self.consumer = consumer
        self.sink = sink
        self.topic = topic

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        return None

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        ledger = await self.sink.positions(self.topic)
        for tp in assigned:
            position = ledger.get(tp.partition)
            self.consumer.seek(tp, (position.last_offset if position else -1) + 1)


def to_batch(tp: TopicPartition, records: Sequence[ConsumerRecord]) -> Batch[MetricEvent]:
    batch: Batch[MetricEvent] = Batch(tp.topic, tp.partition, records[0].offset, records[-1].offset)
    for r in records:
        headers = tuple(r.headers or ())
        decoded = decode(r.value, MetricEvent, r.key)
        if isinstance(decoded, Decoded):
            batch.records.append(Record(r.offset, decoded.event, r.key, r.value, headers))
        else:
            batch.rejected.append(
                DeadLetter(
                    decoded.reason,
                    decoded.detail,
                    tp.topic,
                    tp.partition,
                    r.offset,
                    r.key,
                    r.value,
                    headers,
                )
            )
    return batch


async def run(settings: Settings) -> None:
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    topic, group = settings.metrics_topic, settings.group_id
    writer = MetricWriter()
    pool = open_pool(settings.dsn, stage_ddl=writer.stage_ddl, max_size=settings.pool_max_size, name=group)
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_list, acks="all")
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap_list,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=settings.session_timeout_ms,
        heartbeat_interval_ms=max(500, settings.session_timeout_ms // 5),
    )
    dead_letters = DeadLetterProducer(producer, settings.metrics_dlq_topic or f"{topic}.dlq", group)
    sink = Sink(pool, group, writer, on_dead_letters=dead_letters)
    consumer.subscribe([topic], listener=FromLedger(consumer, sink, topic))
    await pool.open()
    await producer.start()
    await consumer.start()
    try:
        while not stop.is_set():
            fetched = await consumer.getmany(timeout_ms=500, max_records=MAX_RECORDS)
            if fetched:
                await asyncio.gather(*(sink.write(to_batch(tp, records)) for tp, records in fetched.items()))
                await consumer.commit({tp: records[-1].offset + 1 for tp, records in fetched.items()})
    finally:
        await consumer.stop()
        await producer.stop()
        await pool.close()


if __name__ == "__main__":
    uvloop.run(run(Settings()))
