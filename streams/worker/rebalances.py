"""How long this worker's group has been re-forming, said when it is too long.

A rebalance stops every partition of every member until the group has formed again and each
member has recovered its tables (records of partitions that do not move are still applied by the
rebalance reader for a session timeout at most). One that never ends stalls the worker with no
error anywhere: nothing is applied, no partition is assigned to be called stalled, and no commit
fails. It happens: a member that does not answer holds the group for its rebalance timeout, and
on Tansu 0.6.0 a leader that leaves while the group re-forms keeps it from ever forming (README,
"Tansu"). `RebalanceClock` measures it for /healthz, the `eventsink_rebalancing_seconds` gauge and
a warning in the log.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from streams import logs

log = logs.get(__name__)

# Seconds between two warnings about the same rebalance.
REPEAT_S = 300.0


class RebalanceClock:
    """Seconds since the rebalance in progress started (0 when none is), from the first
    revocation of that rebalance (Faust's `on_partitions_revoked`, also sent before a worker's
    first join) to the end of its table recovery (Faust's `app.rebalancing` turning false).

    `rebalancing`: whether the group is re-forming now; `recovering`: whether the worker is
    recovering its tables (the rebalance's last step). `long_s`: past it, the rebalance is
    reported (`EVENTSINK_REBALANCE_DEGRADED_S`)."""

    def __init__(self, rebalancing: Callable[[], bool], recovering: Callable[[], bool], long_s: float) -> None:
        self.rebalancing = rebalancing
        self.recovering = recovering
        self.long_s = long_s
        self.since: float | None = None
        self._said_at: float | None = None

    def started(self) -> None:
        """A revocation: the start of a rebalance, unless one is already in progress."""
        if self.since is None:
            self.since = time.monotonic()

    def seconds(self) -> float:
        """How long the rebalance in progress has lasted (0.0 when none is)."""
        if not self.rebalancing():
            if self.since is not None and self._said_at is not None:
                log.info("the group formed again", rebalance_s=round(time.monotonic() - self.since, 1))
            self.since = self._said_at = None
            return 0.0
        if self.since is None:  # a rebalance whose revocation came before this clock existed
            self.since = time.monotonic()
        return time.monotonic() - self.since

    def problem(self) -> str | None:
        """What /healthz says of a rebalance longer than `long_s`, None when there is none."""
        seconds = self.seconds()
        if seconds < self.long_s:
            return None
        step = "recovering its tables" if self.recovering() else "waiting for the group to form"
        return f"rebalancing for {seconds:.0f} s (over {self.long_s:g} s), {step}: nothing is applied meanwhile"

    def check(self) -> None:
        """Called periodically: warn once the rebalance in progress is long, and every REPEAT_S
        while it lasts."""
        problem = self.problem()
        if problem is None:
            return
        now = time.monotonic()
        if self._said_at is not None and now - self._said_at < REPEAT_S:
            return
        self._said_at = now
        log.warning(
            "the group has been rebalancing for long",
            problem=problem,
            fix="a member that does not answer holds a rebalance for its rebalance timeout: look for a worker "
            "of this group that is frozen, swapping or cut off from the broker; tables with a long changelog "
            "take long to recover. On Tansu 0.6.0 a group whose leader left during a rebalance never forms "
            "again (README, Tansu)",
        )
