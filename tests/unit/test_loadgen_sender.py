"""The load generators' Sender: a record the broker refused with a retriable error is sent again.

The broker is replaced by a recording publisher here because the point is a broker's refusal
after the client's own retries (Tansu answered NotLeaderForPartition for a minute, once, on a
loaded machine), which a real broker cannot be made to give on demand.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest
from aiokafka.errors import NotLeaderForPartitionError, RecordTooLargeError

from streams.dev.loadgen.metric import Counts, Sender


class Broker:
    """Acknowledges every send with the next offset, but refuses the first `refusals` sends of
    the values in `refused` with `error`."""

    def __init__(self, refused: set[bytes], error: type[Exception], refusals: int = 1) -> None:
        self.refused, self.error, self.refusals = refused, error, refusals
        self.log: list[bytes] = []
        self.tries: dict[bytes, int] = {}

    async def publish_raw(self, topic: str, key: bytes | None, value: bytes) -> asyncio.Future:
        done: asyncio.Future = asyncio.get_running_loop().create_future()
        self.tries[value] = self.tries.get(value, 0) + 1
        if value in self.refused and self.tries[value] <= self.refusals:
            done.set_exception(self.error())
        else:
            self.log.append(value)
            done.set_result(SimpleNamespace(partition=0, offset=len(self.log) - 1))
        return done


async def send_all(broker: Broker, values: list[bytes]) -> Counts:
    counts = Counts()
    sender = Sender(broker, "t", counts, None, None)  # type: ignore[arg-type]
    for v in values:
        await sender.send(b"k", v)
    await sender.close()
    return counts


async def test_a_record_refused_with_a_retriable_error_is_sent_again() -> None:
    broker = Broker({b"2"}, NotLeaderForPartitionError)
    counts = await send_all(broker, [b"1", b"2", b"3"])
    assert sorted(broker.log) == [b"1", b"2", b"3"] and broker.tries[b"2"] == 2
    assert counts.sent == 3 and counts.last_offsets == {0: 2}


async def test_a_refusal_that_lasts_or_is_not_retriable_is_raised() -> None:
    with pytest.raises(NotLeaderForPartitionError):
        await send_all(Broker({b"2"}, NotLeaderForPartitionError, refusals=Sender.ATTEMPTS), [b"1", b"2"])
    broker = Broker({b"2"}, RecordTooLargeError)
    with pytest.raises(RecordTooLargeError):
        await send_all(broker, [b"1", b"2"])
    assert broker.tries[b"2"] == 1
