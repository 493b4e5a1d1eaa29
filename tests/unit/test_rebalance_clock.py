"""`streams.worker.rebalances.RebalanceClock`: how long a rebalance has lasted, and when it is said.
(The clock of a real group held by a frozen member: tests/e2e/test_worker.py.)"""

from __future__ import annotations

import time

import structlog

from streams.worker import rebalances
from streams.worker.rebalances import RebalanceClock


class Group:
    def __init__(self) -> None:
        self.rebalancing = False
        self.recovering = False

    def clock(self, long_s: float) -> RebalanceClock:
        return RebalanceClock(lambda: self.rebalancing, lambda: self.recovering, long_s)


def test_a_rebalance_is_timed_from_its_first_revocation_to_its_end() -> None:
    g = Group()
    clock = g.clock(30)
    assert clock.seconds() == 0.0 and clock.problem() is None
    g.rebalancing = True
    clock.started()
    first = clock.since
    clock.started()  # a revocation of the same rebalance (a re-join): the start stays
    assert clock.since == first
    clock.since = time.monotonic() - 29
    assert 29 <= clock.seconds() < 30 and clock.problem() is None
    clock.since = time.monotonic() - 31
    assert "rebalancing for 31 s (over 30 s), waiting for the group to form" in (clock.problem() or "")
    g.recovering = True
    assert "recovering its tables" in (clock.problem() or "")
    g.rebalancing = g.recovering = False
    assert clock.seconds() == 0.0 and clock.since is None and clock.problem() is None
    g.rebalancing = True  # the next one starts from zero
    clock.started()
    assert clock.seconds() < 1


def test_a_long_rebalance_is_warned_of_once_per_repeat_and_its_end_said() -> None:
    g = Group()
    clock = g.clock(10)
    g.rebalancing = True
    clock.started()
    with structlog.testing.capture_logs() as logs:
        clock.check()  # not long yet
        clock.since = time.monotonic() - 11
        clock.check()
        clock.check()  # the same rebalance, within REPEAT_S: said once
    (line,) = logs
    assert line["log_level"] == "warning" and line["event"] == "the group has been rebalancing for long"
    assert "over 10 s" in line["problem"] and "frozen" in line["fix"]
    with structlog.testing.capture_logs() as logs:
        clock._said_at = time.monotonic() - rebalances.REPEAT_S
        clock.check()  # still going REPEAT_S later: said again
        g.rebalancing = False
        clock.check()
    assert [e["event"] for e in logs] == ["the group has been rebalancing for long", "the group formed again"]
    assert logs[1]["log_level"] == "info" and logs[1]["rebalance_s"] >= 11


def test_a_short_rebalance_ends_without_a_word() -> None:
    g = Group()
    clock = g.clock(10)
    g.rebalancing = True
    clock.started()
    with structlog.testing.capture_logs() as logs:
        clock.check()
        g.rebalancing = False
        clock.check()
    assert logs == []
