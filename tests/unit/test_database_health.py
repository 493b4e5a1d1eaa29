"""`sinks.health.DatabaseHealth`: what /healthz reports of a kind's database writes."""

from __future__ import annotations

import time

from sinks.health import DatabaseHealth


def test_failures_until_a_commit() -> None:
    h = DatabaseHealth()
    assert h.failing_since is None and h.failing_for() == 0.0
    h.failed("QueryCanceled: statement timeout", unreachable=False)
    assert h.failing_since is not None and h.unreachable_since is None
    h.failed("PoolTimeout: couldn't get a connection", unreachable=True)
    first = h.failing_since
    h.failed("OperationalError: connection refused", unreachable=True)
    assert h.failing_since == first  # since the first failure, not the last
    assert h.unreachable_for() >= 0.0 and "connection refused" in h.last_error
    h.committed()
    assert (h.failing_since, h.unreachable_since, h.last_error) == (None, None, "")


def test_failures_no_longer_retried_are_stale() -> None:
    h = DatabaseHealth()
    h.failed("x", unreachable=True)
    assert not h.stale(60)
    h.last_failure_at = time.monotonic() - 61
    assert h.stale(60)


def test_a_transaction_that_got_no_answer_counts_from_when_it_began() -> None:
    """A write past the client's bound had no answer for that long: the other writes meanwhile
    waited for its connection (not unreachable themselves), and /healthz counts from its start."""
    h = DatabaseHealth()
    h.failed("PoolBusy: couldn't get a connection", unreachable=False)
    assert h.unreachable_since is None
    began = time.monotonic() - 120
    h.failed("the transaction ran past its 120 s bound", unreachable=True, since=began)
    assert h.unreachable_since == began and h.failing_since == began
    assert h.unreachable_for() >= 120
    h.failed("OperationalError: connection refused", unreachable=True)
    assert h.unreachable_since == began  # a later failure does not move it forward


def test_a_failure_never_counts_from_before_the_last_commit() -> None:
    """Another partition's batch committed while this one waited: not committing since the
    commit, not since the failed attempt began."""
    h = DatabaseHealth()
    began = time.monotonic() - 30
    h.committed()
    h.failed("LockNotAvailable: canceling statement due to lock timeout", unreachable=False, since=began)
    assert h.failing_since is not None and h.failing_since >= h.committed_at > began
    assert h.unreachable_since is None
