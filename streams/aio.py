"""Running a coroutine to its result from synchronous code (the CLI, the tools, the tests).

`asyncio.run` gives SIGINT's handler back on its way out through `signal.signal`, which looks the
previous handler up in an enum; the failed lookup formats `repr(handler)`, a partial holding the
main task, whose repr holds the repr of the task's result. For a large result (verify's expected
state, a dead-letter topic read whole) that is seconds of CPU and a string as large as the
result, spent for nothing (seen on CPython 3.11). Here the main task returns None; the result
is handed over beside it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run(coro)`'s result, without formatting it on the way out."""
    box: list[T] = []

    async def main() -> None:
        box.append(await coro)

    asyncio.run(main())
    return box[0]
