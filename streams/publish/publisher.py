"""A small async publisher for services: validates, serialises with orjson, keys by tenant.

    async with Publisher("kafka:9092") as pub:
        await pub.publish(MetricEvent(...))          # or a dict, validated first
        await pub.flush()

Events are keyed by tenant_id so that one tenant's events stay in one partition. The producer
is not idempotent by default because some Kafka-compatible brokers (Tansu) lack
InitProducerId; eventsink's exactly-once effects do not depend on it (duplicates from producer
retries are dropped on (tenant_id, dedupe_id)). Pass `idempotent=True` on Apache Kafka.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.structs import RecordMetadata
from pydantic import BaseModel

from schemas.codec import encode, encode_key
from schemas.metric import MetricEvent

DEFAULT_TOPICS: dict[type[BaseModel], str] = {MetricEvent: "metrics"}


class Publisher:
    def __init__(
        self,
        bootstrap_servers: str | Sequence[str],
        *,
        topics: Mapping[type[BaseModel], str] | None = None,
        idempotent: bool = False,
        linger_ms: int = 5,
        max_batch_size: int = 256 * 1024,
        **producer_options: Any,
    ) -> None:
        self.topics = {**DEFAULT_TOPICS, **(topics or {})}
        self._producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap_servers,
            acks="all",
            enable_idempotence=idempotent,
            linger_ms=linger_ms,
            max_batch_size=max_batch_size,
            **producer_options,
        )
        self._pending: set[asyncio.Future[RecordMetadata]] = set()

    async def __aenter__(self) -> Publisher:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        try:
            if exc[0] is None:
                await self.flush()
        finally:
            await self.stop()

    async def start(self) -> None:
        await self._producer.start()

    async def stop(self) -> None:
        await self._producer.stop()

    def topic_for(self, model: type[BaseModel]) -> str:
        return self.topics[model]

    async def publish(
        self, event: BaseModel | Mapping[str, Any], model: type[BaseModel] = MetricEvent, topic: str | None = None
    ) -> asyncio.Future[RecordMetadata]:
        """Validate and send one event; the returned future resolves when the broker has it."""
        if not isinstance(event, BaseModel):
            event = model.model_validate(dict(event))
        key = encode_key(event.tenant_id)  # type: ignore[attr-defined]
        return await self.publish_raw(topic or self.topic_for(type(event)), key, encode(event))

    async def publish_raw(
        self, topic: str, key: bytes | None, value: bytes | None, headers: Sequence[tuple[str, bytes]] | None = None
    ) -> asyncio.Future[RecordMetadata]:
        """Send bytes as they are (replays, tests, load generation of invalid records)."""
        fut = await self._producer.send(topic, value=value, key=key, headers=list(headers) if headers else None)
        self._pending.add(fut)
        fut.add_done_callback(self._pending.discard)
        return fut

    async def flush(self) -> None:
        """Wait until every event sent so far is acknowledged; raise the first failure."""
        await self._producer.flush()
        if self._pending:
            await asyncio.gather(*list(self._pending))
