"""A small async publisher for services: validates, serialises with orjson, keys by tenant.

    async with Publisher("kafka:9092") as pub:
        fut = await pub.publish(ChatEvent(...))      # or MetricEvent(...), AnalysisEvent(...)
        await pub.publish({...}, model=MetricEvent)  # a dict, validated as the workers read it
    # leaving the block flushed: every record is acknowledged by the broker (or it raised)

Every kind goes to its topic from the settings the workers read (EVENTSINK_METRICS_TOPIC,
EVENTSINK_CHAT_TOPIC, EVENTSINK_ANALYSIS_TOPIC, through `streams.settings.topic_names`), unless
`topics=` maps a model to another. An event is validated by the kind's contract as a worker
reads it (a tolerant reader): a top-level field the contract does not know is kept and sent,
and lands in the row's `attributes`; everything else is strict (a `pydantic.ValidationError`
never reaches the topic).

Extra fields travel in a dict only. The models are the contract the workers know, and refuse
what it does not (`ChatEvent(..., extra_chat="x")` raises `Extra inputs are not permitted`); a
dict carries fields the contract does not know yet: `publish({..., "extra_chat": "x"},
model=ChatEvent)`.

What `publish` returns, for every kind: once the record is in the producer's buffer, an
`asyncio.Future[RecordMetadata]` that resolves (topic, partition, offset) when the broker has
the record (acks=all: every in-sync replica), or raises the send's error. Nothing is sent
before the producer's linger (`linger_ms`, 5 ms); `flush()` waits for every record published so
far and raises the first failure; `stop()` (or leaving `async with`) flushes and closes.

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

from schemas.analysis import AnalysisEvent
from schemas.chat import ChatEvent
from schemas.codec import encode, encode_key, wire_fields
from schemas.envelope import ATTRIBUTES
from schemas.metric import MetricEvent
from streams.settings import topic_names

KINDS: dict[str, type[BaseModel]] = {"metric": MetricEvent, "chat": ChatEvent, "analysis": AnalysisEvent}


def default_topics() -> dict[type[BaseModel], str]:
    """Each kind's model and its topic, from the environment as the workers read it."""
    names = topic_names()
    return {model: names[kind] for kind, model in KINDS.items()}


def validate(event: Mapping[str, Any], model: type[BaseModel]) -> BaseModel:
    """`event` as a worker would read it (its `keep` policy): the fields the contract does not
    know are kept in `attributes`, sent back at the top level by `encode`; the rest is strict."""
    wire = wire_fields(model)
    known = {k: v for k, v in event.items() if k in wire}
    unknown = {k: v for k, v in event.items() if k not in wire}
    if unknown:
        known[ATTRIBUTES] = unknown
    return model.model_validate(known)


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
        self.topics = {**default_topics(), **(topics or {})}
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
        """Send what is buffered and close (a failure of those sends is not raised: `flush` first)."""
        await self._producer.stop()

    def topic_for(self, model: type[BaseModel]) -> str:
        """The topic of an event kind; a TypeError naming the kinds known for anything else."""
        try:
            return self.topics[model]
        except (KeyError, TypeError):
            known = ", ".join(f"{m.__name__} (topic {t!r})" for m, t in self.topics.items())
            name = getattr(model, "__name__", repr(model))
            raise TypeError(f"cannot publish {name}: this publisher knows {known}") from None

    async def publish(
        self,
        event: BaseModel | Mapping[str, Any],
        model: type[BaseModel] = MetricEvent,
        topic: str | None = None,
    ) -> asyncio.Future[RecordMetadata]:
        """Validate one event and hand it to the producer (`model` says the kind of a dict; a
        dict, not a model, carries fields the contract does not know: see the module's doc).

        Returns once the record is buffered: the future resolves when the broker has it (see the
        module's doc). Raises `pydantic.ValidationError` for an event the kind's contract refuses,
        TypeError for something that is not an event kind this publisher knows.
        """
        if isinstance(event, BaseModel):
            model = type(event)
        elif not isinstance(event, Mapping):
            raise TypeError(f"cannot publish a {type(event).__name__}: give an event model or a mapping")
        known = self.topic_for(model)  # a TypeError for anything but an event kind it knows
        destination = topic or known
        if not isinstance(event, BaseModel):
            event = validate(event, model)
        key = encode_key(event.tenant_id)  # type: ignore[attr-defined]
        return await self.publish_raw(destination, key, encode(event))

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
