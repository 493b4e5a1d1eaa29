"""`Reader.close` when aiokafka's consumer lets a fetch task's CancelledError out of `stop()`
(its fetcher awaits the fetch tasks it cancelled; one backing off after a timeout raises): the
tool that closes it must not fail for it, while a cancel of the closing task itself goes on. The
consumer here stands in for aiokafka's only at its `stop()`, which is what is tested; the real
clients are exercised by the e2e tests."""

from __future__ import annotations

import asyncio

import pytest

from streams.tools.reader import Reader


class StopRaisesCancelled:
    def __init__(self) -> None:
        self.stopped = False

    async def stop(self) -> None:
        self.stopped = True
        raise asyncio.CancelledError  # what aiokafka's Fetcher.close lets out


class SlowStop:
    async def stop(self) -> None:
        await asyncio.sleep(3600)


def test_a_fetch_task_cancelled_while_closing_does_not_fail_the_close() -> None:
    reader = Reader(["127.0.0.1:1"])
    consumer = StopRaisesCancelled()
    reader._consumer = consumer  # type: ignore[assignment]
    asyncio.run(reader.close())
    assert consumer.stopped and reader._consumer is None


def test_a_cancel_of_the_closing_task_itself_goes_on() -> None:
    async def main() -> None:
        reader = Reader(["127.0.0.1:1"])
        reader._consumer = SlowStop()  # type: ignore[assignment]
        closing = asyncio.create_task(reader.close())
        await asyncio.sleep(0.01)
        closing.cancel()
        with pytest.raises(asyncio.CancelledError):
            await closing

    asyncio.run(main())
