"""Publishing dead letters: delivered (acknowledged by the broker) before the batch commits."""

from __future__ import annotations

import asyncio
from typing import Any

from schemas.deadletter import DeadLetter
from streams.worker import telemetry


class DeadLetterPublisher:
    def __init__(
        self, app: Any, dlq_topic: str, source_topic: str, consumer_group: str, timeout_s: float = 30.0
    ) -> None:
        self.app = app
        self.dlq_topic = dlq_topic
        self.source_topic = source_topic
        self.group = consumer_group
        self.timeout_s = timeout_s

    async def __call__(self, dead: list[DeadLetter]) -> None:
        await asyncio.wait_for(self._send_all(dead), self.timeout_s)
        for d in dead:
            telemetry.DEAD_LETTERS.labels(self.source_topic, d.reason.value).inc()

    async def _send_all(self, dead: list[DeadLetter]) -> None:
        producer = self.app.producer
        pending = []
        for d in dead:
            pending.append(await producer.send(self.dlq_topic, d.key, d.value, None, None, d.dlq_headers(self.group)))
        # Any failure raises here, inside the batch transaction, which then rolls back.
        await asyncio.gather(*pending)
