"""`streams.aio.run`: a coroutine's result for synchronous callers, never formatted on the way."""

from __future__ import annotations

import pytest

from streams import aio


class Result:
    """A result that counts how often it is formatted."""

    def __init__(self) -> None:
        self.reprs = 0

    def __repr__(self) -> str:
        self.reprs += 1
        return "Result()"


async def produce(result: Result) -> Result:
    return result


def test_the_result_comes_back_unformatted() -> None:
    """asyncio.run formats its main task's result when it gives SIGINT's handler back (verify's
    expected state for a topic of millions of records: seconds and a string as large)."""
    result = Result()
    assert aio.run(produce(result)) is result
    assert result.reprs == 0


def test_an_exception_comes_through() -> None:
    async def fail() -> None:
        raise LookupError("no such topic")

    with pytest.raises(LookupError, match="no such topic"):
        aio.run(fail())
