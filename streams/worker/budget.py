"""Memory bounded in bytes: what fetched records weigh until they are applied, for a worker.

The Kafka client fetches by bytes, but a worker's buffers (Faust's queues, each partition's batch
being built or retried) count records; 1,000 records of 64 KiB per partition would be gigabytes.
So every fetched record is weighed (`record_bytes`) when it is handed to an agent and given
back when it leaves (applied, dead-lettered, or dropped to come again), and fetching waits while
the worker holds more than the budget (`EVENTSINK_BUFFER_MAX_BYTES`).
"""

from __future__ import annotations

import asyncio
from typing import Any

DEFAULT_BUDGET_BYTES = 64 * 1024 * 1024


def record_bytes(record: Any) -> int:
    """What a fetched record weighs until it is applied: its bytes, and their decoded copy."""
    return 2 * len(record.value or b"") + len(record.key or b"") + 256


class Budget:
    """Bytes of fetched records not yet applied, for the whole worker; fetching waits while they
    are over `limit`. Memory is bounded in bytes, whatever the size of the records."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._room = asyncio.Event()
        self._room.set()

    def take(self, nbytes: int) -> None:
        self.used += nbytes
        if self.used >= self.limit:
            self._room.clear()

    def give(self, nbytes: int) -> None:
        self.used = max(0, self.used - nbytes)
        if self.used < self.limit:
            self._room.set()

    async def room(self) -> None:
        """Until the records in memory weigh less than the limit."""
        await self._room.wait()
