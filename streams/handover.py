"""Faust's hand-over of fetched records to the agents, made cheap for raw-bytes topics.

Per record, Faust's conductor runs the serializer registry even for raw bytes, reads a setting
through its registry to check the producer buffer, and loops over generic channel logic: about
25 µs of a worker's ~80 µs per event (bench/RESULTS.md). eventsink's topics carry bytes that
the pipeline decodes in bulk, so for channels with `RawSchema` the hand-over queues Faust's
`Message` itself (no `Event`, no refcount: events are never acked, Kafka's offsets follow the
ledger), keeping what matters: flow control (rebalances), the producer-buffer throttle, and the
queue-pressure callbacks that pause fetching a partition whose agent falls behind. When none of
those could make it wait, `deliver_nowait` does it without a coroutine, task or lock per record.
Every other channel (Faust's own) keeps Faust's handler.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableSet
from typing import Any

import faust
from faust.transport.conductor import Conductor
from faust.types import TP, Message


class RawSchema(faust.Schema):
    """Key and value stay the record's bytes: no codec, no model."""

    def compile(self, app: Any, **_: Any) -> Callable[..., Awaitable[Any]]:
        event = app.conf.Event  # read once: a settings lookup per record is measurable

        async def decode(message: Message, *, propagate: bool = False) -> Any:
            return event(app, message.key, message.value, message.headers, message)

        return decode


class LeanConductor(Conductor):
    def __init__(self, app: Any, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        # Per partition of a raw-bytes topic: hand a record over without awaiting, or say no.
        self._nowait: dict[TP, Callable[[Message], bool]] = {}

    def deliver_nowait(self, message: Message) -> bool:
        """Hand the record to its agents' queues now if nothing could make that wait.

        False when the callback map is being rebuilt (rebalance), flow is suspended, a queue is
        full, the producer buffer is over its limit, or the topic is not raw bytes: then the
        caller awaits `on_message`, which waits as Faust's does. No coroutine, task or lock per
        record otherwise: Faust's `on_message` takes an asyncio.Lock for every record.
        """
        if self._tp_to_callback_lock.locked():
            return False
        deliver = self._nowait.get(message.tp)
        return deliver is not None and deliver(message)

    def _build_handler(self, tp: TP, channels: MutableSet[Any]) -> Callable[[Message], Awaitable[None]]:
        if not channels or not all(isinstance(c.schema, RawSchema) for c in channels):
            self._nowait.pop(tp, None)
            return super()._build_handler(tp, channels)
        app = self.app
        consumer = app.consumer
        acquire_flow_control = app.flow_control.acquire
        producer_buffer = app.producer.buffer
        pending_produce = producer_buffer.pending.qsize
        max_pending = producer_buffer.max_messages
        on_topic_buffer_full = app.sensors.on_topic_buffer_full

        def on_pressure_high() -> None:
            on_topic_buffer_full(tp)
            consumer.on_buffer_full(tp)

        def on_pressure_drop() -> None:
            consumer.on_buffer_drop(tp)

        flow_is_active = app.flow_control.is_active
        targets = tuple(channels)

        def deliver(message: Message) -> bool:
            if not flow_is_active() or pending_produce() > max_pending:
                return False
            for channel in targets:
                if channel.queue.full():
                    return False
            for channel in targets:
                channel.queue.put_nowait_enhanced(
                    message, on_pressure_high=on_pressure_high, on_pressure_drop=on_pressure_drop
                )
            return True

        self._nowait[tp] = deliver

        async def on_message(message: Message) -> None:
            await acquire_flow_control()
            if pending_produce() > max_pending:
                await producer_buffer.wait_until_ebb()
            for channel in channels:
                queue = channel.queue
                if queue.full():
                    on_topic_buffer_full(tp)
                    await channel.put(message)
                else:
                    queue.put_nowait_enhanced(
                        message, on_pressure_high=on_pressure_high, on_pressure_drop=on_pressure_drop
                    )

        return on_message
