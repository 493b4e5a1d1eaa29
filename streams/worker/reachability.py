"""Whether a worker reaches PostgreSQL and the broker, said to the people on call.

A worker that cannot reach one of them applies nothing. It keeps trying (the outage may end by
itself), but it says so at error level, with where it tried and what to check, once when it
starts and again every `REPEAT_S` while it lasts; it does not call itself ready until both
answer; and /healthz reports it (`degraded`: a restart would not cure it). The libraries' own
messages for each failed attempt are demoted to warnings (`streams.logs`): this is the one that
says what to do.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from sinks.secrets import scrub
from streams import logs

log = logs.get(__name__)

CHECK_S = 10.0  # between two checks
REPEAT_S = 300.0  # between two errors about the same outage


def describe(exc: BaseException) -> str:
    """`Type: text` on one line, scrubbed, the type once (aiokafka's texts start with it)."""
    name, text = type(exc).__name__, " ".join(scrub(str(exc)).split())
    return text if text.startswith(name) else f"{name}: {text or 'no answer'}"


@dataclass
class Check:
    """One thing the worker must reach: how to probe it, where it is, what to check when it fails."""

    name: str
    probe: Callable[[], Awaitable[None]]
    where: str
    fix: str
    failures_before_error: int = 1  # consecutive failed probes that make an outage
    problem: str | None = None  # the last failure's text while the outage lasts
    failures: int = 0
    said_at: float | None = None


class Reachability:
    def __init__(self, checks: list[Check], timeout_s: float, on_reachable: Callable[[], None]) -> None:
        self.checks = checks
        self.timeout_s = timeout_s
        self.on_reachable = on_reachable
        self.checked = False  # every check has run once

    @property
    def problems(self) -> dict[str, str]:
        """What cannot be reached now, with the last error (for /healthz)."""
        return {c.name: c.problem for c in self.checks if c.problem is not None and self._outage(c)}

    @property
    def reachable(self) -> bool:
        return self.checked and not any(c.problem is not None for c in self.checks)

    async def run(self) -> None:
        while True:
            await self.check()
            await asyncio.sleep(CHECK_S)

    async def check(self) -> None:
        was = self.reachable
        await asyncio.gather(*(self._probe(c) for c in self.checks))
        self.checked = True
        if self.reachable and not was:
            self.on_reachable()

    def _outage(self, check: Check) -> bool:
        return check.failures >= check.failures_before_error

    async def _probe(self, check: Check) -> None:
        try:
            await asyncio.wait_for(check.probe(), self.timeout_s)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            check.problem = describe(exc)[:300]
            check.failures += 1
            now = time.monotonic()
            if self._outage(check) and (check.said_at is None or now - check.said_at >= REPEAT_S):
                check.said_at = now
                log.error(
                    f"the {check.name} cannot be reached: nothing is applied until it answers",
                    where=check.where,
                    error=check.problem,
                    fix=check.fix,
                )
            return
        if check.said_at is not None:
            log.info(f"the {check.name} answers again", where=check.where)
        check.problem, check.failures, check.said_at = None, 0, None
