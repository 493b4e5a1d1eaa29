"""What a sink last saw of the database, for a worker's /healthz: since when its batches fail,
and since when no node that takes writes could be reached (a failover in progress, or every
node down), as opposed to a database that answers but refuses for now (a lock held, a statement
timeout), which waiting cures."""

from __future__ import annotations

import time
from dataclasses import dataclass


@dataclass
class DatabaseHealth:
    # time.monotonic() of the first failure since the last commit, None while batches commit.
    failing_since: float | None = None
    # time.monotonic() of the first "no primary reachable" since the last commit.
    unreachable_since: float | None = None
    last_error: str = ""
    last_failure_at: float = 0.0
    # time.monotonic() of the last commit: a failure never counts from before it.
    committed_at: float = 0.0

    def committed(self) -> None:
        self.clear()
        self.committed_at = time.monotonic()

    def clear(self) -> None:
        self.failing_since = self.unreachable_since = None
        self.last_error = ""

    def stale(self, after: float) -> bool:
        """No failure for `after` seconds though nothing committed since: the batches that failed
        are no longer being retried here (their partitions went to another worker)."""
        return self.failing_since is not None and time.monotonic() - self.last_failure_at > after

    def failed(self, error: str, *, unreachable: bool, since: float | None = None) -> None:
        """A batch failed now; `since` (time.monotonic()): when the attempt that failed began
        (nothing of it committed from then on), counted from the last commit at the earliest."""
        now = time.monotonic()
        at = now if since is None else max(min(since, now), self.committed_at)
        if self.failing_since is None or at < self.failing_since:
            self.failing_since = at
        if unreachable and (self.unreachable_since is None or at < self.unreachable_since):
            self.unreachable_since = at
        self.last_error = error[:300]
        self.last_failure_at = now

    def failing_for(self) -> float:
        return 0.0 if self.failing_since is None else time.monotonic() - self.failing_since

    def unreachable_for(self) -> float:
        return 0.0 if self.unreachable_since is None else time.monotonic() - self.unreachable_since
